"""Negatives for the discriminator beyond the source's imitations: real inputs perturbed in format.

A discriminator that only ever saw the source base's imitations as negatives learns the source's style, not the
task's format: it lets through a target's inputs that are cut short, too long, or stitched from two templates. These
negatives are made from the real train inputs while they are still there, each by one perturbation of its words:

- `truncated`: the first words only;
- `shortened`: a span of words taken out of the middle;
- `shuffled`: the words in another order;
- `spliced`: the start of one real input and the end of another;
- `doubled`: two real inputs run together.

Text-level and task-agnostic, so they work for any task; a perturbation that happens to give a real input is dropped.
"""

from __future__ import annotations

import random

KINDS = ("truncated", "shortened", "shuffled", "spliced", "doubled")


def _truncated(rng, words, other):
    return words[:rng.randint(1, len(words) - 1)] if len(words) > 1 else None


def _shortened(rng, words, other):
    if len(words) < 3:
        return None
    start = rng.randint(1, len(words) - 2)
    return words[:start] + words[start + rng.randint(1, max(1, (len(words) - start) // 2)):]


def _shuffled(rng, words, other):
    if len(set(words)) < 2:
        return None
    out = words[:]
    while out == words:
        rng.shuffle(out)
    return out


def _spliced(rng, words, other):
    if len(words) < 2 or len(other) < 2:
        return None
    return words[:rng.randint(1, len(words) - 1)] + other[rng.randint(1, len(other) - 1):]


def _doubled(rng, words, other):
    return words + other


_PERTURB = {"truncated": _truncated, "shortened": _shortened, "shuffled": _shuffled, "spliced": _spliced,
            "doubled": _doubled}


def format_negatives(real: list[str], n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """`n` distinct `(kind, text)` negatives made from `real` (the kinds in turn), none of them a real input.

    Fewer come back only when `real` is too small or too uniform to give `n` distinct perturbations.
    """
    if n <= 0 or not real:
        return []
    rng, seen, out = random.Random(f"format-negatives:{seed}"), set(real), []
    for attempt in range(20 * n):
        if len(out) == n:
            break
        kind = KINDS[attempt % len(KINDS)]
        words, other = rng.choice(real).split(), rng.choice(real).split()
        perturbed = _PERTURB[kind](rng, words, other)
        text = " ".join(perturbed) if perturbed else ""
        if text and text not in seen:
            seen.add(text)
            out.append((kind, text))
    return out
