"""The tasks of the real-model world: BIG-bench-style tasks written procedurally, for pretrained LMs.

Real pretrained models (SmolLM2, Gemma-3, Qwen2.5-Coder: `peft_transfer.sources.PACKAGED`) read English, so these
tasks are phrased as BIG-bench / BBH phrases them, each with its own input distribution and quirks (fixed
templates, number ranges, list lengths, answer formats), so that real inputs can be told from a model's imitations.
Targets are deterministic functions of the input: exact match is a fair metric.

Three tasks are new here (`addition`, `word_sorting`, `object_counting`); the others are the specific variants of
the tiny world's families (`peft_transfer.worlds.tasks`), which are BBH-shaped already.

    python benchmarks/real_tasks.py --out runs/real-tasks      # writes <task>/{train,test,seeds}.jsonl
"""

from __future__ import annotations

import argparse
import random
import re

from peft_transfer.worlds.tasks import TASKS, Task, write_task

# Common English nouns (BBH word_sorting draws from a dictionary; these sort unambiguously, all lower case).
NOUNS = (
    "apple anchor arrow bakery banana basket beacon blanket bottle bridge bucket butter cabin camera candle canyon "
    "carpet castle cellar cherry circle closet cobalt copper cotton crater dagger desert dinner doctor dragon "
    "empire engine falcon fabric farmer feather fossil garden garlic ginger glider harbor helmet hollow island "
    "jacket jungle kettle kitten ladder lantern lemon lizard magnet marble meadow mirror monkey needle noodle "
    "orange oyster paddle parrot pepper pillow planet pocket puzzle quarry rabbit ribbon rocket saddle salmon "
    "shadow silver spider summit tablet temple ticket timber tunnel turtle valley velvet violin walnut window "
    "winter wizard yogurt zipper"
).split()

# object_counting (BBH): items in several categories, some given with a count word; the question asks one category.
_CATEGORIES = {
    "fruits": "apple banana peach plum grape nectarine raspberry strawberry blackberry orange".split(),
    "vegetables": "carrot onion potato cabbage celery garlic yam lettuce cauliflower broccoli".split(),
    "animals": "cat dog goat pig cow rabbit snake mouse fish frog".split(),
    "musical instruments": "piano flute violin drum trumpet clarinet accordion trombone".split(),
}
_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
_PLURAL = {"peach": "peaches", "potato": "potatoes", "raspberry": "raspberries", "strawberry": "strawberries",
           "blackberry": "blackberries", "fish": "fish", "mouse": "mice", "cauliflower": "heads of cauliflower",
           "broccoli": "heads of broccoli", "lettuce": "heads of lettuce"}


def _addition(rng: random.Random):
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return f"What is {a} + {b}?", str(a + b)


def _word_sorting(rng: random.Random):
    words = rng.sample(NOUNS, rng.randint(4, 7))
    return f"Sort the following words alphabetically: List: {' '.join(words)}", " ".join(sorted(words))


def _object_counting(rng: random.Random):
    asked = rng.choice(list(_CATEGORIES))
    others = [c for c in _CATEGORIES if c != asked]
    items, total = [], 0
    for category in [asked] * rng.randint(2, 4) + rng.sample(others, rng.randint(1, 2)):
        name = rng.choice([n for n in _CATEGORIES[category] if n not in {i[1] for i in items}])
        count = rng.choice((1, 1, 1, 2, 3))
        items.append((count, name))
        total += count if category == asked else 0
    rng.shuffle(items)
    phrases = [(f"a {n}" if n[0] not in "aeiou" else f"an {n}") if c == 1 else
               f"{_COUNT_WORDS[c]} {_PLURAL.get(n, n + 's')}" for c, n in items]
    listing = ", ".join(phrases[:-1]) + f", and {phrases[-1]}"
    return f"I have {listing}. How many {asked} do I have?", str(total)


# name -> (description for the discriminator prompt, sampler of one (input, target))
REAL_TASKS = {
    "addition": ("three-digit addition", _addition),
    "word_sorting": ("word sorting", _word_sorting),
    "object_counting": ("object counting", _object_counting),
    **{name: (TASKS[name].description, TASKS[name].sample_specific)
       for name in ("boolean_expressions", "multistep_arithmetic", "dyck_languages", "weekday_arithmetic",
                    "last_letters")},
}


# ---------------------------------------------------------------------------------------------------------------
# Solvers: the correct answer of any input written in a task's format (a model's synthetic input included), or
# None for an input the task's format does not cover. They tell a wrong teacher label from an input off the task.

_WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_CLOSE = {"(": ")", "[": "]", "{": "}", "<": ">"}
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, **{w: n for n, w in _COUNT_WORDS.items()}}
_CATEGORY_OF = {**{n: c for c, ns in _CATEGORIES.items() for n in ns},
                **{_PLURAL.get(n, n + "s"): c for c, ns in _CATEGORIES.items() for n in ns}}


def _solve_addition(text):
    m = re.fullmatch(r"What is (\d+) \+ (\d+)\?", text)
    return str(int(m[1]) + int(m[2])) if m else None


def _solve_word_sorting(text):
    m = re.fullmatch(r"Sort the following words alphabetically: List: ([a-z]+(?: [a-z]+)*)", text)
    return " ".join(sorted(m[1].split())) if m else None


def _solve_object_counting(text):
    m = re.fullmatch(r"I have (.+)\. How many (.+) do I have\?", text)
    if not m or m[2] not in _CATEGORIES:
        return None
    total = 0
    for phrase in re.split(r", and |, | and ", m[1]):
        count, _, name = phrase.partition(" ")
        if count not in _NUMBER_WORDS or name not in _CATEGORY_OF:
            return None
        total += _NUMBER_WORDS[count] if _CATEGORY_OF[name] == m[2] else 0
    return str(total)


def _evaluated(expression: str | None, kind: type) -> str | None:
    """`expression`, already checked to hold only the task's words, digits, signs and parentheses, evaluated; None
    when it is not a well-formed expression of that `kind`."""
    if expression is None:
        return None
    try:
        value = eval(expression, {"__builtins__": {}})
    except (SyntaxError, TypeError, NameError, MemoryError):  # NameError: words run together ("notFalse")
        return None
    return str(value) if isinstance(value, kind) else None


def _solve_boolean_expressions(text):
    m = re.fullmatch(r"((?:True|False|not|and|or|\(|\)| )+) is", text)  # only the five words and parentheses
    return _evaluated(m[1] if m else None, bool)


def _solve_multistep_arithmetic(text):
    m = re.fullmatch(r"([-+*() 0-9]+) =", text)  # digits, signs and parentheses only
    if m and "**" in m[1].replace(" ", ""):  # no powers: an input must not make eval run for ever
        return None
    return _evaluated(m[1] if m else None, int)


def _solve_dyck_languages(text):
    m = re.fullmatch(r"Complete the brackets: ([()\[\]{}<>](?: [()\[\]{}<>])*)", text)
    if not m:
        return None
    stack = []
    for b in m[1].split():
        if b in _CLOSE:
            stack.append(b)
        elif not stack or _CLOSE[stack.pop()] != b:
            return None
    return " ".join(_CLOSE[b] for b in reversed(stack)) if stack else None


def _solve_weekday_arithmetic(text):
    m = re.fullmatch(rf"Today is ({'|'.join(_WEEKDAYS)})\. What day is it (\d+) days from now\?", text)
    return _WEEKDAYS[(_WEEKDAYS.index(m[1]) + int(m[2])) % 7] if m else None


def _solve_last_letters(text):
    m = re.fullmatch(r"Take the last letter of each word: ([A-Za-z]+(?: [A-Za-z]+)*)", text)
    return "".join(w[-1] for w in m[1].split()) if m else None


SOLVERS = {name: globals()[f"_solve_{name}"] for name in REAL_TASKS}


def solve(name: str, text: str) -> str | None:
    """The correct answer of `text` as an input of task `name`, or None when `text` is not in the task's format."""
    return SOLVERS[name](text.strip())


def make_real_task(name: str, *, n_train: int = 250, n_test: int = 300, n_seeds: int = 5, seed: int = 0) -> Task:
    """`n_train` + `n_test` distinct samples of a real-world task (disjoint by input), and `n_seeds` seeds from
    train. Deterministic for a given `(name, seed)`."""
    if name not in REAL_TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(REAL_TASKS)}")
    description, sampler = REAL_TASKS[name]
    rng = random.Random(f"real:{name}:{seed}")
    seen, samples = set(), []
    for _ in range(50 * (n_train + n_test) + 1000):
        if len(samples) == n_train + n_test:
            break
        x, y = sampler(rng)
        if x not in seen:
            seen.add(x)
            samples.append({"input": x, "target": y})
    if len(samples) < n_train + n_test:
        raise ValueError(f"task {name!r} produced only {len(samples)} distinct inputs")
    train, test = samples[:n_train], samples[n_train:]
    seeds = [dict(train[i]) for i in sorted(rng.sample(range(n_train), n_seeds))]
    return Task(name, description, train, test, seeds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tasks", nargs="*", default=list(REAL_TASKS))
    parser.add_argument("--n-train", type=int, default=250)
    parser.add_argument("--n-test", type=int, default=300)
    args = parser.parse_args(argv)
    for name in args.tasks:
        folder = write_task(make_real_task(name, n_train=args.n_train, n_test=args.n_test), f"{args.out}/{name}")
        print(folder)


if __name__ == "__main__":
    main()
