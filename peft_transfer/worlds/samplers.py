"""The samplers of the procedural tasks (`tasks`): for each family its specific variant (the task itself) and its
generic variants (the same skill in other formats, which the pretraining corpus may show), and the word lists they
draw from."""

from __future__ import annotations

import random
from typing import Callable

MAX_INPUT_CHARS = 80
MAX_TARGET_CHARS = 20

Sample = tuple[str, str]  # (input, target)
Sampler = Callable[[random.Random], Sample]

# Short common words: real words make the word-level families read like text.
WORDS = (
    "apple river stone cloud tiger house paper glass water light green music table chair bread smile "
    "train horse plant storm money dream heart ocean field night north south grape lemon mouse shirt "
    "candle window garden forest island summer winter spring autumn silver golden yellow purple orange "
    "bottle castle dragon rabbit monkey pencil rocket planet market basket button carpet coffee cookie "
    "doctor farmer flower guitar hammer jacket kitten ladder mirror needle pepper pillow pocket rubber "
    "sister tunnel violin wallet zipper anchor bridge camera desert engine finger hunter jungle kettle "
    "lizard meadow nickel oyster parrot quartz ribbon saddle temple velvet walnut cactus falcon gravel "
    "harbor insect magnet noodle puzzle salmon turtle valley wizard bell cake door fish game hill king lamp "
    "moon nest owl pear queen ring ship tree vase wolf yard zoo arm bag cat dog egg fox hat ink jar key"
).split()

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def pseudo_word(rng: random.Random, min_syllables: int = 2, max_syllables: int = 4) -> str:
    """A pronounceable non-word (`"tomilaka"`): a large input space with no dictionary."""
    n = rng.randint(min_syllables, max_syllables)
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n))


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]


# ---------------------------------------------------------------------------------------------------------------
# boolean expressions: trees of True/False/not/and/or, always fully parenthesized so that the value does not
# depend on operator precedence conventions that differ between the renderings.


def _bool_tree(rng: random.Random, depth: int):
    if depth == 0 or rng.random() < 0.25:
        leaf = rng.random() < 0.5
        return ("not", leaf) if rng.random() < 0.3 else leaf
    node = (rng.choice(("and", "or")), _bool_tree(rng, depth - 1), _bool_tree(rng, depth - 1))
    return ("not", node) if rng.random() < 0.2 else node


def _bool_value(tree) -> bool:
    if isinstance(tree, bool):
        return tree
    if tree[0] == "not":
        return not _bool_value(tree[1])
    a, b = _bool_value(tree[1]), _bool_value(tree[2])
    return (a and b) if tree[0] == "and" else (a or b)


def _bool_render(tree, style: str, top: bool = True) -> str:
    """`style`: "bbh" (`not ( True and False )`), "symbols" (`!(T & F)`), "lower" (`not (true and false)`)."""
    names = {
        "bbh": {True: "True", False: "False", "and": "and", "or": "or", "not": "not "},
        "symbols": {True: "T", False: "F", "and": "&", "or": "|", "not": "!"},
        "lower": {True: "true", False: "false", "and": "and", "or": "or", "not": "not "},
    }[style]
    lp, rp = ("( ", " )") if style == "bbh" else ("(", ")")
    if isinstance(tree, bool):
        return names[tree]
    if tree[0] == "not":
        inner = _bool_render(tree[1], style, top=False)
        if not isinstance(tree[1], bool) and tree[1][0] != "not" and not inner.startswith(lp):
            inner = lp + inner + rp
        return names["not"] + inner
    text = f"{_bool_render(tree[1], style, False)} {names[tree[0]]} {_bool_render(tree[2], style, False)}"
    return text if top else lp + text + rp


def _boolean_specific(rng: random.Random) -> Sample:
    tree = _bool_tree(rng, rng.choice((2, 2, 3)))
    while isinstance(tree, bool) or isinstance(tree[1], bool):  # at least one and/or: the task's typical length
        tree = _bool_tree(rng, rng.choice((2, 2, 3)))
    return f"{_bool_render(tree, 'bbh')} is", str(_bool_value(tree))


_BOOLEAN_GENERIC: tuple[Sampler, ...] = (
    lambda rng: (lambda t: (f"Evaluate: {_bool_render(t, 'symbols')}", str(_bool_value(t))))(_bool_tree(rng, 2)),
    lambda rng: (lambda t: (f"Is it true that {_bool_render(t, 'lower')}?", "yes" if _bool_value(t) else "no"))(
        _bool_tree(rng, 1)
    ),
    lambda rng: (lambda t: (f"What is the value of {_bool_render(t, 'lower')}?", str(_bool_value(t)).lower()))(
        _bool_tree(rng, 2)
    ),
    lambda rng: (lambda t: (f"{_bool_render(t, 'symbols')} =", "1" if _bool_value(t) else "0"))(_bool_tree(rng, 1)),
)


# ---------------------------------------------------------------------------------------------------------------
# multistep arithmetic


def _arith_specific(rng: random.Random) -> Sample:
    # BBH-like: two parenthesized pairs of one-digit signed numbers joined by an operator.
    a, b, c, d = (rng.randint(-9, 9) for _ in range(4))
    o1, o2, o3 = (rng.choice("+-*") for _ in range(3))
    text = f"(({a} {o1} {b}) {o2} ({c} {o3} {d})) ="
    return text, str(eval(text[:-2]))  # the text is ours, built from ints and +-*: eval is the reference


def _arith_plain(rng: random.Random) -> Sample:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    op = rng.choice("+-*")
    return f"What is {a} {op} {b}?", str(eval(f"{a} {op} {b}"))


def _arith_chain(rng: random.Random) -> Sample:
    a, b, c = rng.randint(1, 12), rng.randint(1, 12), rng.randint(1, 12)
    o1, o2 = rng.choice("+-*"), rng.choice("+-")
    return f"Compute {a} {o1} {b} {o2} {c}.", str(eval(f"{a} {o1} {b} {o2} {c}"))


def _arith_words(rng: random.Random) -> Sample:
    a, b = rng.randint(0, 30), rng.randint(0, 30)
    word, op = rng.choice((("plus", "+"), ("minus", "-"), ("times", "*")))
    return f"{a} {word} {b} equals", str(eval(f"{a} {op} {b}"))


def _arith_group(rng: random.Random) -> Sample:
    a, b, c = rng.randint(-9, 9), rng.randint(-9, 9), rng.randint(-9, 9)
    o1, o2 = rng.choice("+-*"), rng.choice("+-*")
    text = f"{c} {o2} ({a} {o1} {b})" if rng.random() < 0.5 else f"({a} {o1} {b}) {o2} {c}"
    return f"{text} =", str(eval(text))


# ---------------------------------------------------------------------------------------------------------------
# sorting letters and numbers


def _letters(rng: random.Random, lo: int, hi: int) -> list[str]:
    return rng.sample(_LETTERS, rng.randint(lo, hi))


def _sort_letters_specific(rng: random.Random) -> Sample:
    letters = _letters(rng, 5, 8)
    return f"Sort these letters: {' '.join(letters)}", " ".join(sorted(letters))


_SORT_LETTERS_GENERIC: tuple[Sampler, ...] = (
    lambda rng: (lambda ls: (f"sort: {''.join(ls)} ->", "".join(sorted(ls))))(_letters(rng, 2, 8)),
    lambda rng: (lambda ls: (f"Alphabetical order of {', '.join(ls)}:", ", ".join(sorted(ls))))(
        [c.upper() for c in _letters(rng, 2, 6)]
    ),
    lambda rng: (lambda ls: (f"Which letter comes first: {' or '.join(ls)}?", min(ls)))(_letters(rng, 2, 3)),
    lambda rng: (lambda ls: (f"Arrange {', '.join(ls)} in order.", " ".join(sorted(ls))))(_letters(rng, 2, 5)),
)


def _numbers(rng: random.Random, lo: int, hi: int, n_lo: int, n_hi: int) -> list[int]:
    return rng.sample(range(lo, hi + 1), rng.randint(n_lo, n_hi))


def _sort_numbers_specific(rng: random.Random) -> Sample:
    xs = _numbers(rng, 10, 99, 4, 6)
    return f"Sort ascending: {' '.join(map(str, xs))}", " ".join(map(str, sorted(xs)))


_SORT_NUMBERS_GENERIC: tuple[Sampler, ...] = (
    lambda rng: (lambda xs: (f"Order from smallest to largest: {', '.join(map(str, xs))}", ", ".join(map(str, sorted(xs)))))(
        _numbers(rng, 0, 50, 2, 4)
    ),
    lambda rng: (lambda xs: (f"Sort descending: {' '.join(map(str, xs))}", " ".join(map(str, sorted(xs, reverse=True)))))(
        _numbers(rng, 0, 30, 2, 5)
    ),
    lambda rng: (lambda xs: (f"Largest of {', '.join(map(str, xs))}?", str(max(xs))))(_numbers(rng, 0, 99, 2, 5)),
    lambda rng: (lambda xs: (f"Smallest number: {' '.join(map(str, xs))}", str(min(xs))))(_numbers(rng, 0, 99, 2, 5)),
)


# ---------------------------------------------------------------------------------------------------------------
# counting


def _count_specific(rng: random.Random) -> Sample:
    s = "".join(rng.choice("abcd") for _ in range(rng.randint(8, 16)))
    c = rng.choice("abcd")
    return f"In {s}, how many {c}'s?", str(s.count(c))


_COUNT_GENERIC: tuple[Sampler, ...] = (
    lambda rng: (lambda s, c: (f"How many {c} in '{s}'?", str(s.count(c))))(
        "".join(rng.choice("xyz") for _ in range(rng.randint(2, 9))), rng.choice("xyz")
    ),
    lambda rng: (lambda w: (f"Count the vowels in {w}.", str(sum(ch in _VOWELS for ch in w))))(rng.choice(WORDS)),
    lambda rng: (lambda ws: (f"Number of words in '{' '.join(ws)}':", str(len(ws))))(_words(rng, 1, 6)),
    lambda rng: (lambda w: (f"Length of '{w}':", str(len(w))))(pseudo_word(rng, 1, 4)),
)


# ---------------------------------------------------------------------------------------------------------------
# bracket completion (Dyck languages)

_PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def _dyck_prefix(rng: random.Random, max_len: int, max_depth: int) -> tuple[list[str], list[str]]:
    """A random prefix of a balanced sequence with at least one bracket left open; returns (prefix, closers)."""
    while True:
        seq, stack = [], []
        for _ in range(rng.randint(2, max_len)):
            if stack and (len(stack) >= max_depth or rng.random() < 0.4):
                seq.append(_PAIRS[stack.pop()])
            else:
                stack.append(rng.choice("([{<"))
                seq.append(stack[-1])
        if stack:
            return seq, [_PAIRS[b] for b in reversed(stack)]


def _dyck_specific(rng: random.Random) -> Sample:
    seq, closers = _dyck_prefix(rng, 14, 5)
    return f"Complete the brackets: {' '.join(seq)}", " ".join(closers)


def _dyck_balanced(rng: random.Random) -> Sample:
    seq, closers = _dyck_prefix(rng, 8, 4)
    if rng.random() < 0.5:  # half are balanced, half are left open or cut short
        seq += closers
        return f"Is '{''.join(seq)}' balanced?", "yes"
    return f"Is '{''.join(seq + closers[: rng.randint(0, len(closers) - 1)])}' balanced?", "no"


_DYCK_GENERIC: tuple[Sampler, ...] = (
    lambda rng: (lambda s, c: (f"Close: {''.join(s)}", "".join(c)))(*_dyck_prefix(rng, 8, 4)),
    lambda rng: (lambda s, c: (f"Finish the sequence {''.join(s)}", "".join(c)))(*_dyck_prefix(rng, 10, 4)),
    lambda rng: (lambda s, c: (f"What closes '{''.join(s)}'?", "".join(c)))(*_dyck_prefix(rng, 6, 3)),
    _dyck_balanced,
)


# ---------------------------------------------------------------------------------------------------------------
# weekday arithmetic


def _weekday_specific(rng: random.Random) -> Sample:
    start, n = rng.randrange(7), rng.randint(2, 365)
    return f"Today is {WEEKDAYS[start]}. What day is it {n} days from now?", WEEKDAYS[(start + n) % 7]


_WEEKDAY_GENERIC: tuple[Sampler, ...] = (
    lambda rng: (lambda s, n: (f"{WEEKDAYS[s]} + {n} days =", WEEKDAYS[(s + n) % 7]))(rng.randrange(7), rng.randint(0, 30)),
    lambda rng: (lambda s: (f"What day comes after {WEEKDAYS[s]}?", WEEKDAYS[(s + 1) % 7]))(rng.randrange(7)),
    lambda rng: (lambda s, n: (f"{n} days before {WEEKDAYS[s]} is", WEEKDAYS[(s - n) % 7]))(rng.randrange(7), rng.randint(1, 14)),
    lambda rng: (lambda s, n: (f"If it is {WEEKDAYS[s][:3]} now, in {n} days it is", WEEKDAYS[(s + n) % 7][:3]))(
        rng.randrange(7), rng.randint(1, 20)
    ),
)


# ---------------------------------------------------------------------------------------------------------------
# string transformations


def _reverse_specific(rng: random.Random) -> Sample:
    w = pseudo_word(rng, 2, 4)
    return f"Spell '{w}' backwards.", w[::-1]


_REVERSE_GENERIC: tuple[Sampler, ...] = (
    lambda rng: (lambda w: (f"reverse: {w} ->", w[::-1]))(rng.choice(WORDS) if rng.random() < 0.5 else pseudo_word(rng, 1, 3)),
    lambda rng: (lambda w: (f"Write {w} in reverse:", w[::-1]))(pseudo_word(rng, 1, 4)),
    lambda rng: (lambda w: (f"Uppercase: {w}", w.upper()))(rng.choice(WORDS)),
    lambda rng: (lambda w: (f"Double each letter: {w}", "".join(ch * 2 for ch in w)))(pseudo_word(rng, 1, 3)),
    lambda rng: (lambda w: (f"Capitalize {w}.", w.capitalize()))(rng.choice(WORDS)),
)


# ---------------------------------------------------------------------------------------------------------------
# grid walk

_STEPS = {"N": (0, 1), "S": (0, -1), "E": (1, 0), "W": (-1, 0), "U": (0, 1), "D": (0, -1), "R": (1, 0), "L": (-1, 0)}


def _walk(start: tuple[int, int], moves: list[str]) -> str:
    x, y = start
    for m in moves:
        x, y = x + _STEPS[m][0], y + _STEPS[m][1]
    return f"({x},{y})"


def _grid_specific(rng: random.Random) -> Sample:
    moves = [rng.choice("NESW") for _ in range(rng.randint(4, 10))]
    return f"Robot at (0,0) moves {','.join(moves)}. Final spot?", _walk((0, 0), moves)


def _grid_words(rng: random.Random) -> Sample:
    dx, dy = rng.randint(0, 5), rng.randint(0, 5)
    h, v = rng.choice((("right", 1), ("left", -1))), rng.choice((("up", 1), ("down", -1)))
    return f"Walk {v[0]} {dy}, {h[0]} {dx} from the origin. Where?", f"({h[1] * dx},{v[1] * dy})"


_GRID_GENERIC: tuple[Sampler, ...] = (
    lambda rng: (lambda s, ms: (f"Start ({s[0]},{s[1]}), go {' '.join(ms)}. End:", _walk(s, ms)))(
        (rng.randint(-3, 3), rng.randint(-3, 3)), [rng.choice("UDLR") for _ in range(rng.randint(1, 5))]
    ),
    lambda rng: (lambda ms: (f"After moves {' '.join(ms)} from (0,0), position:", _walk((0, 0), ms)))(
        [rng.choice("UDLR") for _ in range(rng.randint(1, 6))]
    ),
    lambda rng: (lambda m: (f"One step {({'N': 'north', 'S': 'south', 'E': 'east', 'W': 'west'})[m]} from (0,0) is", _walk((0, 0), [m])))(
        rng.choice("NESW")
    ),
    _grid_words,
)


# ---------------------------------------------------------------------------------------------------------------
# letter concatenation


def _last_letters_specific(rng: random.Random) -> Sample:
    ws = _words(rng, 3, 5)
    return f"Take the last letter of each word: {' '.join(ws)}", "".join(w[-1] for w in ws)


_LAST_LETTERS_GENERIC: tuple[Sampler, ...] = (
    lambda rng: (lambda ws: (f"First letters of: {' '.join(ws)}", "".join(w[0] for w in ws)))(_words(rng, 2, 5)),
    lambda rng: (lambda w: (f"Last letter of '{w}'?", w[-1]))(rng.choice(WORDS)),
    lambda rng: (lambda ws: (f"Initials of {' '.join(ws)}:", "".join(w[0] for w in ws).upper()))(
        [w.capitalize() for w in _words(rng, 2, 3)]
    ),
    lambda rng: (lambda ws: (f"Join the final letters of {', '.join(ws)}.", "".join(w[-1] for w in ws)))(_words(rng, 2, 3)),
)
