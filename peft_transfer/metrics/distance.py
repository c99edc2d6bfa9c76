"""How close the synthetic inputs are to the real ones (paper Table 9: `mmd2`, with the median-heuristic bandwidth)
and how diverse they are (`distinct_n`, `self_similarity`), on embedding arrays or texts."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# Pairs of points used by the median heuristic; the median of ~2M distances is stable to a few per cent, and
# the exact median over 10k points would need 400 MB.
_MEDIAN_HEURISTIC_MAX_POINTS = 2048
# Rows per block when summing kernel matrices, so that memory stays O(block * n) instead of O(n * m).
_KERNEL_BLOCK_ROWS = 1024


def _as_points(points, name: str) -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, dim), got {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return array


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # |a|^2 + |b|^2 - 2ab can round to a tiny negative value for near-identical points: clip it.
    distances = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(distances, 0.0)


def median_heuristic_bandwidth(points) -> float:
    """
    The median pairwise Euclidean distance between distinct points, the usual default RBF bandwidth.

    Args:
        points (`np.ndarray` of shape `(n, dim)`):
            The pooled sample. Above 2048 points a fixed-seed random subset of 2048 is used (deterministic).

    Returns:
        `float`: the bandwidth; when every point is identical (median 0) it is 1.0, so that the kernel is still
        defined (and the MMD is then 0 whatever the bandwidth).
    """
    points = _as_points(points, "points")
    if points.shape[0] > _MEDIAN_HEURISTIC_MAX_POINTS:
        rng = np.random.default_rng(0)
        points = points[rng.choice(points.shape[0], _MEDIAN_HEURISTIC_MAX_POINTS, replace=False)]
    upper = np.triu_indices(points.shape[0], k=1)
    distances = np.sqrt(_squared_distances(points, points)[upper])
    if distances.size == 0:
        return 1.0
    median = float(np.median(distances))
    if median > 0.0:
        return median
    # Over half the pairs coincide (e.g. many duplicate candidates): fall back to the typical non-zero distance.
    nonzero = distances[distances > 0.0]
    return float(np.median(nonzero)) if nonzero.size else 1.0


def _kernel_sum(a: np.ndarray, b: np.ndarray, gamma: float, same: bool) -> float:
    """Sum of exp(-gamma * |a_i - b_j|^2) over all pairs, without the diagonal when `same` (a is b)."""
    total = 0.0
    for start in range(0, a.shape[0], _KERNEL_BLOCK_ROWS):
        block = np.exp(-gamma * _squared_distances(a[start : start + _KERNEL_BLOCK_ROWS], b))
        if same:
            rows = np.arange(block.shape[0])
            block[rows, start + rows] = 0.0
        total += float(block.sum())
    return total


def mmd2(x, y, *, bandwidth: float | None = None, unbiased: bool = True) -> float:
    """
    Squared maximum mean discrepancy between two samples with a Gaussian RBF kernel, in float64.

    `k(a, b) = exp(-|a - b|^2 / (2 * bandwidth^2))`. The unbiased estimate leaves out the `k(x_i, x_i)` terms:

        mmd2 = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
               - 2 sum_{i, j} k(x_i, y_j) / (m n)

    It is 0 in expectation when both samples come from one distribution, so it can be slightly negative; the
    biased estimate (means over all pairs, diagonal included) is never negative but is positive even then.
    Paper Table 9 compares MMD(real, filtered) against MMD(real, unfiltered): compare values computed with the
    same bandwidth (pass it explicitly), since the median heuristic picks a new one per call.

    Args:
        x (`np.ndarray` or `torch.Tensor` of shape `(m, dim)`):
            First sample (e.g. embeddings of real inputs). A 1-D array is read as `m` points of dimension 1.
        y (`np.ndarray` or `torch.Tensor` of shape `(n, dim)`):
            Second sample (e.g. embeddings of synthetic inputs).
        bandwidth (`float`, *optional*):
            Kernel width. Defaults to the median pairwise distance of the pooled sample
            (`median_heuristic_bandwidth`).
        unbiased (`bool`, *optional*, defaults to `True`):
            Whether to leave out the diagonal terms (needs at least 2 points in each sample).

    Returns:
        `float`: the squared MMD.
    """
    x = _as_points(x, "x")
    y = _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")
    m, n = x.shape[0], y.shape[0]
    if min(m, n) < (2 if unbiased else 1):
        raise ValueError(f"Need at least {2 if unbiased else 1} points in each sample, got {m} and {n}.")
    if bandwidth is None:
        bandwidth = median_heuristic_bandwidth(np.concatenate([x, y]))
    if not bandwidth > 0.0:
        raise ValueError(f"`bandwidth` must be positive, got {bandwidth}.")
    gamma = 1.0 / (2.0 * bandwidth * bandwidth)
    if unbiased:
        xx = _kernel_sum(x, x, gamma, same=True) / (m * (m - 1))
        yy = _kernel_sum(y, y, gamma, same=True) / (n * (n - 1))
    else:
        xx = _kernel_sum(x, x, gamma, same=False) / (m * m)
        yy = _kernel_sum(y, y, gamma, same=False) / (n * n)
    xy = _kernel_sum(x, y, gamma, same=False) / (m * n)
    return float(xx + yy - 2.0 * xy)





def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """
    Distinct-n over a set of texts: unique word n-grams divided by all word n-grams.

    Words are the whitespace-separated tokens after lower-casing, so the number is tokenizer-independent and
    comparable across target models. A synthetic set that repeats a few inputs scores low.

    Args:
        texts (`Sequence[str]`):
            The texts, pooled (an n-gram repeated in two texts counts once among the unique ones).
        n (`int`, *optional*, defaults to `2`):
            The n-gram size.

    Returns:
        `float` in `[0, 1]`; 0.0 when no text has `n` words (nothing to count).
    """
    if n < 1:
        raise ValueError(f"`n` must be positive, got {n}.")
    unique: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = text.lower().split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def self_similarity(embeddings) -> float:
    """
    Mean cosine similarity between all pairs of distinct embeddings; higher means a less diverse set.

    Args:
        embeddings (`np.ndarray` or `torch.Tensor` of shape `(n, dim)`), `n >= 2`:
            E.g. `embed_texts` of the accepted inputs.

    Returns:
        `float` in `[-1, 1]`. Zero vectors count as similarity 0 with everything.
    """
    points = _as_points(embeddings, "embeddings")
    n = points.shape[0]
    if n < 2:
        raise ValueError(f"Need at least 2 embeddings, got {n}.")
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    unit = np.divide(points, norms, out=np.zeros_like(points), where=norms > 0)
    # Sum over all pairs = |sum of unit vectors|^2; remove the diagonal (|u_i|^2, 1 or 0) and average.
    summed = unit.sum(0)
    off_diagonal = float(summed @ summed) - float((unit * unit).sum())
    return off_diagonal / (n * (n - 1))
