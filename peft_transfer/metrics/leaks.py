"""The privacy guard: candidates that nearly reproduce a real input (`near_duplicates`, `filter_leaks`), by
template-aware character n-gram overlap, and the overlap that a task's real inputs already share by chance
(`chance_overlap`, `leak_threshold_for`)."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Character n-grams for the leak guard. 4 keeps a one-character edit (a changed digit) in a 30-character input
# above the 0.8 threshold, while ordinary English shares few 4-grams between unrelated sentences.
LEAK_NGRAM_SIZE = 4
LEAK_THRESHOLD = 0.8



@dataclass(frozen=True)
class NearDuplicate:
    """
    How closely one candidate reproduces the real inputs.

    Args:
        overlap (`float`):
            The largest character n-gram overlap with any reference, in `[0, 1]` (see `near_duplicates`).
        reference_index (`int` or `None`):
            Index of that reference in `references`, `None` when no reference shares an n-gram. An index, never
            the text, so that logging a result cannot itself leak a real input.
        is_duplicate (`bool`):
            Whether `overlap >= threshold`.
    """

    overlap: float
    reference_index: int | None
    is_duplicate: bool


_WHITESPACE = re.compile(r"\s+")


def _overlap_form(text: str) -> str:
    """NFKC, case-folded, whitespace runs collapsed to one space: "Hello  World" and "hello world" are equal."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _char_ngrams(text: str, n: int) -> set[str]:
    text = _overlap_form(text)
    if not text:
        return set()
    # A text shorter than n is its own single "n-gram": it then matches only an identical short text.
    if len(text) <= n:
        return {text}
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def near_duplicates(
    candidates: Sequence[str],
    references: Sequence[str],
    *,
    n: int = LEAK_NGRAM_SIZE,
    threshold: float = LEAK_THRESHOLD,
    chunk_size: int = 512,
    ignore_template: bool = True,
    exclude_self: bool = False,
) -> list[NearDuplicate]:
    """
    For each candidate, how nearly it reproduces one of the references (the real task inputs or the seeds).

    Texts are compared as sets of character n-grams after NFKC, case-folding and whitespace normalization,
    which works for any language and script, and for inputs too short for word n-grams. The overlap of a
    candidate `c` with a reference `r` is

        |ngrams(c) & ngrams(r)| / min(|ngrams(c)|, |ngrams(r)|)

    i.e. the larger of two containments. Dividing by `|ngrams(c)|` alone misses a candidate that copies a real
    input and adds a sentence (the copy is diluted); dividing by `|ngrams(r)|` alone misses a candidate that
    copies most of a long real input's body. Either way a real input is reproduced, so both count. One edited
    character (a changed digit, an inserted word) breaks at most `n` (respectively `n - 1`) n-grams, so such
    near-copies stay above the threshold unless the text is very short; texts of at most `n` characters match
    only verbatim.

    Inputs of one task often share a fixed template ("Sort the following words: ..."), and every new input of
    such a task shares it with every real one. With `ignore_template` (and at least 3 references), n-grams that
    occur in at least half of the references are the template's and are left out of both sides, so the overlap
    measures the part that makes an input *this* input. A candidate made of template n-grams only then matches
    nothing unless it equals a reference after normalization.

    Cost: one inverted index from n-gram to references, then one `bincount` per chunk of candidates; about
    linear in the total number of n-grams plus the postings hit. Measured on one CPU core: 10k candidates x 300
    references of ~130 characters in 0.6 s, of ~340 characters in 1.4 s.

    Args:
        candidates (`Sequence[str]`):
            Synthetic inputs to check.
        references (`Sequence[str]`):
            Real inputs that must not be reproduced.
        n (`int`, *optional*, defaults to `4`):
            Character n-gram size. Smaller n tolerates more edits and short texts but makes unrelated texts
            overlap more.
        threshold (`float`, *optional*, defaults to `0.8`):
            Overlap at or above which a candidate is a near-duplicate.
        chunk_size (`int`, *optional*, defaults to `512`):
            Candidates per vectorized step (memory `chunk_size * len(references)` integers).
        ignore_template (`bool`, *optional*, defaults to `True`):
            Leave out n-grams shared by at least half of the references (the task's template).
        exclude_self (`bool`, *optional*, defaults to `False`):
            The candidates are the references themselves: candidate `i` is compared with every reference but
            reference `i` (how near each real input comes to its nearest *other* real input; see `chance_overlap`).

    Returns:
        `list[NearDuplicate]`, one per candidate, in order. A verbatim copy (after normalization) is always a
        near-duplicate, so a threshold above 1 keeps everything but verbatim copies.
    """
    if n < 1:
        raise ValueError(f"`n` must be positive, got {n}.")
    if threshold < 0.0:
        raise ValueError(f"`threshold` must be at least 0, got {threshold}.")
    candidates = list(candidates)
    if exclude_self and len(candidates) != len(references):
        raise ValueError("`exclude_self` compares the references with themselves: pass the same texts twice.")
    n_refs = len(references)
    if n_refs == 0:
        return [NearDuplicate(0.0, None, False) for _ in candidates]

    reference_grams = [_char_ngrams(reference, n) for reference in references]
    template: set[str] = set()
    if ignore_template and n_refs >= 3:
        frequency = Counter(gram for grams in reference_grams for gram in grams)
        template = {gram for gram, count in frequency.items() if 2 * count >= n_refs}
    exact = {_overlap_form(reference): index for index, reference in enumerate(references)}

    # Inverted index: n-gram -> indices of the references containing it.
    postings_lists: dict[str, list[int]] = {}
    reference_sizes = np.zeros(n_refs, dtype=np.float64)
    for index, grams in enumerate(reference_grams):
        grams = grams - template
        reference_sizes[index] = len(grams)
        for gram in grams:
            postings_lists.setdefault(gram, []).append(index)
    postings = {gram: np.asarray(ids, dtype=np.int64) for gram, ids in postings_lists.items()}
    empty = np.zeros(0, dtype=np.int64)

    results: list[NearDuplicate] = []
    for start in range(0, len(candidates), chunk_size):
        chunk = candidates[start : start + chunk_size]
        hit_refs: list[np.ndarray] = []
        hit_rows: list[np.ndarray] = []
        candidate_sizes = np.zeros(len(chunk), dtype=np.float64)
        for row, candidate in enumerate(chunk):
            grams = _char_ngrams(candidate, n) - template
            candidate_sizes[row] = len(grams)
            hits = [postings.get(gram, empty) for gram in grams]
            refs = np.concatenate(hits) if hits else empty
            hit_refs.append(refs)
            hit_rows.append(np.full(refs.size, row, dtype=np.int64))
        # shared[row, ref] = |ngrams(candidate) & ngrams(reference)|, counted in one pass.
        flat = np.concatenate(hit_rows) * n_refs + np.concatenate(hit_refs)
        shared = np.bincount(flat, minlength=len(chunk) * n_refs).reshape(len(chunk), n_refs)
        denominators = np.minimum(candidate_sizes[:, None], reference_sizes[None, :])
        overlaps = np.divide(shared, denominators, out=np.zeros(shared.shape), where=denominators > 0)
        if exclude_self:
            rows = np.arange(len(chunk))
            overlaps[rows, start + rows] = shared[rows, start + rows] = -1
        best = overlaps.argmax(1)
        for row, candidate in enumerate(chunk):
            overlap = max(float(overlaps[row, best[row]]), 0.0)
            reference_index = int(best[row]) if shared[row, best[row]] > 0 else None
            verbatim = False
            if not exclude_self:  # (with it, a repeated reference already overlaps its twin fully)
                same = exact.get(_overlap_form(candidate))
                if same is not None:  # a verbatim copy, whatever the template
                    overlap, reference_index, verbatim = 1.0, same, True
            results.append(NearDuplicate(overlap, reference_index, verbatim or overlap >= threshold))
    return results


def chance_overlap(references: Sequence[str], quantile: float = 0.5, *, n: int = LEAK_NGRAM_SIZE) -> float:
    """
    How near real inputs come to one another by chance: the `quantile` (by default the median) of each reference's
    overlap with its nearest other reference (`near_duplicates(..., exclude_self=True)`).

    Args:
        references (`Sequence[str]`): the real inputs (at least 2; fewer give 0.0).
        quantile (`float`, *optional*, defaults to `0.5`): which quantile of the nearest-other overlaps.
        n (`int`, *optional*, defaults to `4`): character n-gram size.

    Returns:
        `float` in [0, 1].
    """
    references = list(references)
    if len(references) < 2:
        return 0.0
    nearest = [m.overlap for m in near_duplicates(references, references, n=n, exclude_self=True)]
    return float(np.quantile(nearest, quantile))


def leak_threshold_for(references: Sequence[str], floor: float = LEAK_THRESHOLD) -> float:
    """
    The leak guard's threshold for one task: `floor` (the `leak_threshold` setting), or just above the real
    inputs' `chance_overlap` when the typical real input already overlaps another one at least that much.

    A task whose inputs are short strings over a small alphabet (boolean expressions, Dyck words) has real inputs
    that overlap one another fully, so any new input in its format would look like a near-copy of some real one.
    A candidate no nearer to a real input than real inputs are to each other reproduces none of them. For diverse
    text this returns `floor`; where real inputs overlap fully it lies above 1, and only verbatim copies (always
    near-duplicates) are dropped.
    """
    chance = chance_overlap(references)
    return floor if chance < floor else float(np.nextafter(chance, np.inf))


def filter_leaks(
    candidates: Sequence[str],
    references: Sequence[str],
    threshold: float = LEAK_THRESHOLD,
    *,
    n: int = LEAK_NGRAM_SIZE,
) -> tuple[list[str], list[str]]:
    """
    Splits candidates into those that may be kept and near-duplicates of a reference (see `near_duplicates`).

    Args:
        candidates (`Sequence[str]`): Synthetic inputs.
        references (`Sequence[str]`): Real inputs that must not be reproduced.
        threshold (`float`, *optional*, defaults to `0.8`): Overlap at or above which a candidate is dropped.
        n (`int`, *optional*, defaults to `4`): Character n-gram size.

    Returns:
        `tuple[list[str], list[str]]`: `(kept, dropped)`, each in the candidates' order.
    """
    matches = near_duplicates(candidates, references, n=n, threshold=threshold)
    kept = [text for text, match in zip(candidates, matches) if not match.is_duplicate]
    dropped = [text for text, match in zip(candidates, matches) if match.is_duplicate]
    return kept, dropped
