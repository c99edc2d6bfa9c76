"""The benchmark's procedural tasks and pretraining corpus (peft_transfer/worlds/tasks.py, peft_transfer/worlds/corpus.py).

The answers are checked against reference solvers written here from the task's text alone; each solver is
itself pinned by examples worked out by hand.
"""

import random
import re

import pytest

from peft_transfer.worlds.corpus import (
    ANSWER_PREFIX,
    LIST_HEADER,
    block_kind,
    corpus_stats,
    generic_corpus,
    list_block,
    qa_block,
)
from peft_transfer.worlds.tasks import (
    MAX_INPUT_CHARS,
    MAX_TARGET_CHARS,
    TASKS,
    Task,
    list_tasks,
    load_task_files,
    make_task,
    write_task,
)

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


# ---------------------------------------------------------------------------------------------------------------
# reference solvers of the specific formats, written from the text only


def _solve_boolean(x):
    assert x.endswith(" is")
    body = x[: -len(" is")]
    assert set(body.split()) <= {"not", "and", "or", "True", "False", "(", ")"}
    return str(eval(body))  # fully parenthesized, so Python's precedence is the task's


def _solve_arithmetic(x):
    assert re.fullmatch(r"[-+*() \d]+ =", x)
    return str(eval(x[:-2]))


def _solve_sort_letters(x):
    return " ".join(sorted(x.split(": ", 1)[1].split()))


def _solve_sort_numbers(x):
    return " ".join(str(n) for n in sorted(int(t) for t in x.split(": ", 1)[1].split()))


def _solve_count(x):
    s, c = re.fullmatch(r"In (\w+), how many (\w)'s\?", x).groups()
    return str(sum(ch == c for ch in s))


def _solve_dyck(x):
    stack, closing = [], {"(": ")", "[": "]", "{": "}", "<": ">"}
    for tok in x.split(": ", 1)[1].split():
        if tok in closing:
            stack.append(tok)
        else:
            assert closing[stack.pop()] == tok, "the prefix itself must be well nested"
    return " ".join(closing[t] for t in reversed(stack))


def _solve_weekday(x):
    day, n = re.fullmatch(r"Today is (\w+)\. What day is it (\d+) days from now\?", x).groups()
    return DAYS[(DAYS.index(day) + int(n)) % 7]


def _solve_reverse(x):
    return re.fullmatch(r"Spell '(\w+)' backwards\.", x).group(1)[::-1]


def _solve_grid(x):
    moves = re.fullmatch(r"Robot at \(0,0\) moves ([NESW,]+)\. Final spot\?", x).group(1).split(",")
    east = moves.count("E") - moves.count("W")
    north = moves.count("N") - moves.count("S")
    return f"({east},{north})"


def _solve_last_letters(x):
    return "".join(w[-1] for w in x.split(": ", 1)[1].split())


SOLVERS = {
    "boolean_expressions": _solve_boolean,
    "multistep_arithmetic": _solve_arithmetic,
    "sort_letters": _solve_sort_letters,
    "sort_numbers": _solve_sort_numbers,
    "count_letters": _solve_count,
    "dyck_languages": _solve_dyck,
    "weekday_arithmetic": _solve_weekday,
    "reverse_word": _solve_reverse,
    "grid_walk": _solve_grid,
    "last_letters": _solve_last_letters,
}

# Worked out by hand (the comment says how), in each family's specific format.
HAND_CHECKED = {
    "boolean_expressions": [
        ("not ( True and False ) or False is", "True"),  # not False -> True; True or False
        ("( True or False ) and not True is", "False"),  # True and False
    ],
    "multistep_arithmetic": [
        ("((-3 + 7) * (2 - 5)) =", "-12"),  # 4 * -3
        ("((9 - -1) - (4 * 6)) =", "-14"),  # 10 - 24
    ],
    "sort_letters": [
        ("Sort these letters: q d m a x", "a d m q x"),
        ("Sort these letters: z y b c k e", "b c e k y z"),
    ],
    "sort_numbers": [
        ("Sort ascending: 42 70 19 88", "19 42 70 88"),
        ("Sort ascending: 31 13 99 10 56", "10 13 31 56 99"),
    ],
    "count_letters": [
        ("In abacadab, how many a's?", "4"),
        ("In bbbdcccd, how many a's?", "0"),
    ],
    "dyck_languages": [
        ("Complete the brackets: [ ( < > ( )", ") ]"),  # open: [ (  -> close ( then [
        ("Complete the brackets: { < [ ] ( ) < {", "} > > }"),
    ],
    "weekday_arithmetic": [
        ("Today is Tuesday. What day is it 45 days from now?", "Friday"),  # 45 = 6*7 + 3
        ("Today is Sunday. What day is it 365 days from now?", "Monday"),  # 365 = 52*7 + 1
    ],
    "reverse_word": [
        ("Spell 'tomilaka' backwards.", "akalimot"),
        ("Spell 'bude' backwards.", "edub"),
    ],
    "grid_walk": [
        ("Robot at (0,0) moves N,E,E,S,W. Final spot?", "(1,0)"),
        ("Robot at (0,0) moves W,W,S,S,S,N. Final spot?", "(-2,-2)"),
    ],
    "last_letters": [
        ("Take the last letter of each word: river stone apple", "ree"),
        ("Take the last letter of each word: cat dog owl fish", "tglh"),
    ],
}

NAMES = list(TASKS)


@pytest.fixture(scope="module")
def tasks():
    return {name: make_task(name) for name in NAMES}


def test_registry():
    assert list_tasks() == NAMES
    assert len(NAMES) >= 8
    assert set(SOLVERS) == set(NAMES) == set(HAND_CHECKED), "every family needs a reference solver and hand checks"
    for family in TASKS.values():
        assert family.description == family.name.replace("_", " ")  # load_task_files derives it this way
        assert len(family.generic_formats) >= 3


@pytest.mark.parametrize("name", NAMES)
def test_reference_solver_matches_hand_checks(name):
    for x, y in HAND_CHECKED[name]:
        assert SOLVERS[name](x) == y, (x, y)
        assert TASKS[name].is_specific(x), f"hand example {x!r} is not in the specific format"


@pytest.mark.parametrize("name", NAMES)
def test_answers_are_correct(name, tasks):
    task = tasks[name]
    for s in task.train + task.test:
        assert s["target"] == SOLVERS[name](s["input"]), s


@pytest.mark.parametrize("name", NAMES)
def test_sizes_disjoint_seeds(name, tasks):
    task = tasks[name]
    assert isinstance(task, Task) and task.name == name and task.description == TASKS[name].description
    assert (len(task.train), len(task.test), len(task.seeds)) == (250, 500, 5)
    train_inputs = [s["input"] for s in task.train]
    test_inputs = [s["input"] for s in task.test]
    assert len(set(train_inputs)) == len(train_inputs) and len(set(test_inputs)) == len(test_inputs)
    assert not set(train_inputs) & set(test_inputs)
    assert all(s in task.train for s in task.seeds)
    assert len({s["input"] for s in task.seeds}) == 5

    small = make_task(name, n_train=20, n_test=7, n_seeds=15, seed=3)
    assert (len(small.train), len(small.test), len(small.seeds)) == (20, 7, 15)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_seed(name, tasks):
    assert make_task(name) == tasks[name]
    other = make_task(name, seed=1)
    assert other.train != tasks[name].train


@pytest.mark.parametrize("name", NAMES)
def test_single_line_and_short(name, tasks):
    task = tasks[name]
    rng = random.Random(0)
    generic = [TASKS[name].sample_generic(rng) for _ in range(500)]
    for x, y in [(s["input"], s["target"]) for s in task.train + task.test] + generic:
        assert 0 < len(x) <= MAX_INPUT_CHARS and 0 < len(y) <= MAX_TARGET_CHARS, (x, y)
        assert "\n" not in x and "\n" not in y and x == x.strip() and y == y.strip(), (x, y)


@pytest.mark.parametrize("name", NAMES)
def test_specific_format_differs_from_generic(name, tasks):
    family = TASKS[name]
    assert all(family.is_specific(s["input"]) for s in tasks[name].train + tasks[name].test)
    rng = random.Random(1)
    for fmt in range(len(family.generic_formats)):
        for _ in range(300):
            x, _ = family.sample_generic(rng, fmt)
            assert not family.is_specific(x), f"generic format {fmt} produced a specific-looking input {x!r}"
            for other in TASKS.values():
                assert not other.is_specific(x), f"{name} generic input {x!r} looks like {other.name}"
    # Families are also told apart from each other by their specific formats.
    for other in TASKS.values():
        if other.name != name:
            assert not any(other.is_specific(s["input"]) for s in tasks[name].train[:50])


def test_some_generic_answers():
    # Generic formats are checked on a few formats whose answer can be read off the text.
    rng = random.Random(2)
    checks = {
        ("sort_letters", 0): lambda x: "".join(sorted(x[len("sort: "): -len(" ->")])),
        ("reverse_word", 0): lambda x: x[len("reverse: "): -len(" ->")][::-1],
        ("reverse_word", 2): lambda x: x[len("Uppercase: "):].upper(),
        ("multistep_arithmetic", 0): lambda x: str(eval(x[len("What is "): -1])),
        ("weekday_arithmetic", 0): lambda x: (lambda d, n: DAYS[(DAYS.index(d) + int(n)) % 7])(
            *re.fullmatch(r"(\w+) \+ (\d+) days =", x).groups()
        ),
        ("boolean_expressions", 0): lambda x: str(
            eval(x[len("Evaluate: "):].replace("!", " not ").replace("&", " and ").replace("|", " or ")
                 .replace("T", "True").replace("F", "False"))
        ),
        ("count_letters", 3): lambda x: str(len(re.fullmatch(r"Length of '(\w+)':", x).group(1))),
    }
    for (name, fmt), solve in checks.items():
        for _ in range(100):
            x, y = TASKS[name].sample_generic(rng, fmt)
            assert y == solve(x), (name, fmt, x, y)


def test_make_task_errors():
    with pytest.raises(KeyError, match="unknown task"):
        make_task("no_such_task")
    with pytest.raises(ValueError, match="n_seeds"):
        make_task("sort_letters", n_train=3, n_test=1, n_seeds=4)
    with pytest.raises(ValueError, match="distinct inputs"):
        make_task("weekday_arithmetic", n_train=3000, n_test=0)  # only 7 * 364 specific inputs exist


# ---------------------------------------------------------------------------------------------------------------
# task files


def test_write_and_load_round_trip(tmp_path, tasks):
    task = tasks["grid_walk"]
    folder = write_task(task, tmp_path / "grid_walk")
    assert sorted(p.name for p in folder.iterdir()) == ["seeds.jsonl", "test.jsonl", "train.jsonl"]
    loaded = load_task_files(folder / "train.jsonl", folder / "test.jsonl", seeds_file=folder / "seeds.jsonl")
    assert loaded == task  # the name comes from the folder, the description from the name

    drawn = load_task_files(folder / "train.jsonl", folder / "test.jsonl", name="mine", n_seeds=3, seed=7)
    assert drawn.name == "mine" and drawn.description == "mine" and drawn.train == task.train
    assert len(drawn.seeds) == 3 and all(s in drawn.train for s in drawn.seeds)
    assert drawn == load_task_files(folder / "train.jsonl", folder / "test.jsonl", name="mine", n_seeds=3, seed=7)


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_accepts_blank_lines_and_numbers(tmp_path):
    train = _write(tmp_path / "train.jsonl", ['{"input": "1+1", "target": 2}', "", '{"input": "a", "target": "b"}'])
    test = _write(tmp_path / "test.jsonl", ['{"input": "2+2", "target": "4", "extra": 1}'])
    task = load_task_files(train, test, n_seeds=2)
    assert task.train == [{"input": "1+1", "target": "2"}, {"input": "a", "target": "b"}]
    assert task.test == [{"input": "2+2", "target": "4"}]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"input": "a", "target": "b"}', '{"input": "c", "target": '], r"Line 2 of .* is not valid JSON"),
        (['{"input": "a", "target": "b"}', "", '{"input": "c"}'], r"Line 3 of .* has no string 'target' field"),
        (['{"target": "b"}'], r"Line 1 of .* has no string 'input' field"),
        (["[1, 2]"], r"Line 1 of .* has no string 'input' field"),
        (['{"input": "a", "target": null}'], r"Line 1 of .* has no string 'target' field"),
        ([], r"holds no examples"),
        (["", "  "], r"holds no examples"),
    ],
)
def test_load_errors(tmp_path, lines, message):
    from peft_transfer.data import DataError

    good = _write(tmp_path / "good.jsonl", ['{"input": "x", "target": "y"}'])
    bad = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=message) as info:
        load_task_files(bad, good, n_seeds=0)
    assert "bad.jsonl" in str(info.value)
    with pytest.raises(DataError, match=message):
        load_task_files(good, bad, n_seeds=0)


def test_load_missing_file_and_overlap(tmp_path):
    good = _write(tmp_path / "train.jsonl", ['{"input": "x", "target": "y"}'])
    with pytest.raises(ValueError, match="nope.jsonl' does not exist"):
        load_task_files(good, tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="n_seeds=5"):
        load_task_files(good, good)  # one train sample cannot give five seeds
    with pytest.warns(UserWarning, match="1 inputs appear in both"):
        load_task_files(good, good, n_seeds=1)


# ---------------------------------------------------------------------------------------------------------------
# corpus


@pytest.fixture(scope="module")
def all_inputs(tasks):
    return {s["input"] for t in tasks.values() for s in t.train + t.test}


@pytest.fixture(scope="module")
def corpus(all_inputs):
    return generic_corpus(num_chars=300_000, seed=0, exclude=all_inputs)


def test_corpus_never_contains_task_inputs(corpus, all_inputs):
    text = "\x00".join(corpus)
    leaked = [x for x in all_inputs if x in text]
    assert not leaked, leaked[:5]
    for line in text.splitlines():
        item = re.sub(r"^\d+\. ", "", line)
        for family in TASKS.values():
            assert not family.is_specific(item), f"{family.name}'s specific format leaked: {line!r}"


def test_corpus_exclude_is_honoured():
    # Specific inputs cannot appear anyway (other formats), so exclude generic inputs that surely would:
    # there are only seven "What day comes after X?" questions.
    after = {f"What day comes after {d}?" for d in DAYS}
    assert any(x in doc for doc in generic_corpus(300, seed=1) for x in after)
    docs = generic_corpus(300, seed=1, exclude=after)
    assert not any(x in doc for doc in docs for x in after)


def test_corpus_blocks_have_the_package_formats(corpus):
    kinds = set()
    for doc in corpus:
        for block in doc.split("\n\n"):
            kind = block_kind(block)
            kinds.add(kind)
            lines = block.split("\n")
            if kind == "qa":
                # prompt f"{input}\nAnswer:" then completion f" {target}"
                assert len(lines) == 2 and lines[1].startswith(ANSWER_PREFIX[1:] + " ") and lines[1][8:].strip()
            elif kind == "list":
                assert lines[0] == LIST_HEADER.format(n=10) and len(lines) == 11
                assert all(re.fullmatch(rf"{i}\. \S.*", line) for i, line in enumerate(lines[1:], start=1))
                assert len(set(line.split(". ", 1)[1] for line in lines[1:])) == 10
            else:
                assert len(lines) == 1 and "Answer:" not in block
    assert kinds == {"qa", "list", "filler"}


def test_corpus_covers_every_family(corpus):
    # The first words of each family's generic formats (fixed text) appear in the Q/A demos.
    text = "\n".join(corpus)
    prefixes = {
        "boolean_expressions": "Evaluate: ", "multistep_arithmetic": " equals\nAnswer:",
        "sort_letters": "Alphabetical order of ", "sort_numbers": "Order from smallest to largest: ",
        "count_letters": "Count the vowels in ", "dyck_languages": "Finish the sequence ",
        "weekday_arithmetic": " days before ", "reverse_word": "Double each letter: ",
        "grid_walk": " from the origin. Where?", "last_letters": "Initials of ",
    }
    assert set(prefixes) == set(NAMES)
    missing = [name for name, p in prefixes.items() if p not in text]
    assert not missing


def test_corpus_sizes_determinism_and_stats(corpus):
    assert sum(len(d) for d in corpus) >= 300_000
    assert len(generic_corpus(17, seed=3)) == 17
    assert generic_corpus(20, seed=3) == generic_corpus(20, seed=3)
    assert generic_corpus(20, seed=3) != generic_corpus(20, seed=4)
    stats = corpus_stats(corpus)
    assert stats["num_docs"] == len(corpus) and stats["num_chars"] == sum(len(d) for d in corpus)
    assert sum(stats["chars_by_kind"].values()) + 2 * (sum(stats["blocks"].values()) - len(corpus)) == stats["num_chars"]
    assert all(stats["blocks"][k] > 0 for k in ("qa", "list", "filler"))
    assert stats["vocab_size"] < 100
    with pytest.raises(ValueError, match="exactly one"):
        generic_corpus()
    with pytest.raises(ValueError, match="exactly one"):
        generic_corpus(3, num_chars=100)


def test_block_helpers():
    rng = random.Random(0)
    block = qa_block(rng, n=3)
    assert block.count("\nAnswer: ") == 3 and block_kind(block) == "qa"
    block = list_block(rng, n=4)
    assert block.startswith("Here are 4 examples:\n1. ") and block.count("\n") == 4 and block_kind(block) == "list"
