"""The pretraining corpus of the trained-here world: what the tiny base models learn from.

A document is a few blocks separated by a blank line; each block is one of three kinds:

- **qa**: question/answer demonstrations of the *generic* variants of every task family, in the package's
  answer format — `"{input}\\nAnswer:"` followed by `" {target}"` — so a base model gets partial skill on each
  family but never sees a specific task's template (`TaskFamily.specific_pattern`) or any input in `exclude`.
- **list**: `Here are 10 examples:\\n1. {x1}\\n2. {x2}\\n...` — exactly the list format of the generator prompt
  (synthesis), with the items of one list all drawn from one generic format or one miscellaneous
  short-text family, so that a base model learns to continue a numbered list with a plausible new item.
- **filler**: simple procedurally generated sentences, so the models also see ordinary text.

Everything is deterministic for a given `seed`.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterable

from .samplers import WEEKDAYS, WORDS, Sample, pseudo_word
from .tasks import TASKS

ANSWER_PREFIX = "\nAnswer:"  # the prompt is f"{input}{ANSWER_PREFIX}", the completion f" {target}"
LIST_HEADER = "Here are {n} examples:"
BLOCK_SEPARATOR = "\n\n"

# ---------------------------------------------------------------------------------------------------------------
# filler text and miscellaneous short-text families (list items that are not task questions)

_NAMES = "Anna Ben Clara David Emma Felix Grace Henry Ivy Jack Kate Leo Mia Noah Olga Paul Rosa Sam Tina Victor".split()
_SURNAMES = "Brown Smith Lopez Chen Novak Garcia Miller Khan Weber Rossi Silva Young Park Moreau Ito".split()
_ADJECTIVES = "big small red blue old new quiet happy tall dark bright cold warm green soft loud".split()
_VERBS = "sees finds likes paints carries watches follows opens cleans builds".split()
_PLACES = ["the " + p for p in "park river market school hill station garden library".split()]
_MONTHS = "January February March April May June July August September October November December".split()
_COLORS = "red blue green yellow purple orange black white brown pink gray".split()


def _noun_phrase(rng: random.Random) -> str:
    return f"{rng.choice(('the', 'a', 'one', 'my'))} {rng.choice(_ADJECTIVES)} {rng.choice(WORDS)}"


def _sentence(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        text = f"{_noun_phrase(rng)} {rng.choice(_VERBS)} {_noun_phrase(rng)}"
    elif kind == 1:
        text = f"{rng.choice(_NAMES)} walks to {rng.choice(_PLACES)} on {rng.choice(WEEKDAYS)}"
    elif kind == 2:
        text = f"{_noun_phrase(rng)} is {rng.choice(_ADJECTIVES)} and {rng.choice(_ADJECTIVES)}"
    else:
        text = f"there are {rng.randint(2, 12)} {rng.choice(WORDS)}s near {rng.choice(_PLACES)}"
    return text[0].upper() + text[1:] + "."


def _misc_question(rng: random.Random) -> str:
    templates = (
        lambda: f"What color is {_noun_phrase(rng)}?",
        lambda: f"Where does {rng.choice(_NAMES)} keep the {rng.choice(WORDS)}?",
        lambda: f"Why is the {rng.choice(WORDS)} so {rng.choice(_ADJECTIVES)}?",
        lambda: f"Who painted the {rng.choice(_COLORS)} {rng.choice(WORDS)}?",
    )
    return rng.choice(templates)()


# Each makes one list item; items of one list come from one family.
MISC_ITEM_FAMILIES = {
    "name": lambda rng: f"{rng.choice(_NAMES)} {rng.choice(_SURNAMES)}",
    "date": lambda rng: f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(1900, 2030)}",
    "sentence": _sentence,
    "question": _misc_question,
    "thing": lambda rng: f"a {rng.choice(_COLORS)} {rng.choice(WORDS)}",
    "pseudo_word": lambda rng: pseudo_word(rng, 1, 4),
    "sequence": lambda rng: (lambda a, d: ", ".join(str(a + d * i) for i in range(4)))(rng.randint(0, 20), rng.randint(1, 9)),
}


# ---------------------------------------------------------------------------------------------------------------
# blocks


def _generic_sample(rng: random.Random, exclude: set[str], family=None, fmt: int | None = None) -> Sample | None:
    """A generic sample outside `exclude`, or None when the format keeps producing excluded inputs."""
    for _ in range(50):
        fam = family or TASKS[rng.choice(list(TASKS))]
        x, y = fam.sample_generic(rng, fmt)
        # Generic formats never match a specific template (tests check it); `exclude` is the second guard.
        if x not in exclude and not fam.is_specific(x):
            return x, y
    return None


def qa_block(rng: random.Random, exclude: set[str] = frozenset(), n: int | None = None) -> str:
    """`n` (default 1-4) generic Q/A demonstrations, `"{input}\\nAnswer: {target}"`, one blank line apart."""
    demos = []
    for _ in range(n or rng.randint(1, 4)):
        sample = _generic_sample(rng, exclude)  # family and format drawn afresh on every try
        if sample is None:
            raise RuntimeError("`exclude` covers nearly every generic input; cannot build Q/A demonstrations")
        demos.append(sample)
    return BLOCK_SEPARATOR.join(f"{x}{ANSWER_PREFIX} {y}" for x, y in demos)


def _list_items(rng: random.Random, exclude: set[str], n: int) -> list[str] | None:
    """`n` distinct items from one source (one generic format or one misc family); None if it has too few."""
    if rng.random() < 0.6:
        family = TASKS[rng.choice(list(TASKS))]
        fmt = rng.randrange(len(family.generic_formats))
        draw = lambda: (_generic_sample(rng, exclude, family, fmt) or ("",))[0]  # noqa: E731
    else:
        make = MISC_ITEM_FAMILIES[rng.choice(list(MISC_ITEM_FAMILIES))]
        draw = lambda: make(rng)  # noqa: E731
    items: list[str] = []
    for _ in range(10 * n):
        item = draw()
        if item and item not in items and item not in exclude:
            items.append(item)
            if len(items) == n:
                return items
    return None  # e.g. "One step north from (0,0) is" has only four inputs


def list_block(rng: random.Random, exclude: set[str] = frozenset(), n: int = 10) -> str:
    """A numbered list in the generator prompt's format; all items from one source, no item repeated."""
    for _ in range(100):
        items = _list_items(rng, exclude, n)
        if items is not None:
            lines = [LIST_HEADER.format(n=n)] + [f"{i}. {item}" for i, item in enumerate(items, start=1)]
            return "\n".join(lines)
    raise RuntimeError(f"no item source gives {n} distinct items outside `exclude`")


def filler_block(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))


def block_kind(block: str) -> str:
    """`"list"`, `"qa"` or `"filler"` for one block of a corpus document."""
    if block.startswith("Here are "):
        return "list"
    if ANSWER_PREFIX + " " in block:
        return "qa"
    return "filler"


def generic_corpus(
    num_docs: int | None = None,
    *,
    num_chars: int | None = None,
    seed: int = 0,
    exclude: Iterable[str] = frozenset(),
    doc_chars: int = 600,
    weights: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> list[str]:
    """Pretraining documents for the trained-here base models.

    Args:
        num_docs (`int`, *optional*): how many documents; give this or `num_chars`.
        num_chars (`int`, *optional*): stop once the documents hold at least this many characters.
        seed (`int`, *optional*, defaults to 0): the corpus is a deterministic function of its arguments.
        exclude (`Iterable[str]`, *optional*): inputs that must never appear as a demonstration or list item;
            callers pass every train/test input of every task.
        doc_chars (`int`, *optional*, defaults to 600): blocks are added to a document until it reaches about
            this many characters (a document holds at least one block).
        weights (`tuple[float, float, float]`, *optional*, defaults to `(0.6, 0.2, 0.2)`): how often a block
            is qa, list or filler.
    """
    if (num_docs is None) == (num_chars is None):
        raise ValueError("give exactly one of num_docs or num_chars")
    if (num_docs is not None and num_docs < 0) or (num_chars is not None and num_chars < 0):
        raise ValueError("num_docs and num_chars must be >= 0")
    exclude = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
    rng = random.Random(f"generic_corpus:{seed}")
    makers = (lambda: qa_block(rng, exclude), lambda: list_block(rng, exclude), lambda: filler_block(rng))
    docs: list[str] = []
    total = 0
    while (len(docs) < num_docs) if num_docs is not None else (total < num_chars):
        blocks: list[str] = []
        size = 0
        while size < doc_chars:
            block = rng.choices(makers, weights=weights)[0]()
            blocks.append(block)
            size += len(block) + len(BLOCK_SEPARATOR)
        doc = BLOCK_SEPARATOR.join(blocks)
        docs.append(doc)
        total += len(doc)
    return docs


def corpus_stats(docs: list[str]) -> dict:
    """Sizes and composition of a corpus: documents, characters, blocks and characters per block kind."""
    blocks: Counter = Counter()
    chars: Counter = Counter()
    for doc in docs:
        # A qa block holds demos one blank line apart: count them as separate blocks of the same kind.
        for block in doc.split(BLOCK_SEPARATOR):
            kind = block_kind(block)
            blocks[kind] += 1
            chars[kind] += len(block)
    num_chars = sum(len(d) for d in docs)
    return {
        "num_docs": len(docs),
        "num_chars": num_chars,
        "mean_doc_chars": num_chars / len(docs) if docs else 0.0,
        "vocab_size": len(set("".join(docs))),
        "blocks": dict(blocks),
        "chars_by_kind": dict(chars),
    }
