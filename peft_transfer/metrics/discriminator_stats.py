"""How good the discriminator is: `roc_auc`, `binary_accuracy`, `calibrate_margin`, `discriminator_report`.

Scores are the discriminator's log-odds `log p("yes") - log p("no")`; a candidate is accepted when `score > margin`.
Pure numpy (the tests check `roc_auc` against scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import torch

# Below this ROC AUC a discriminator is "near chance". With the paper's 250 real inputs and as many synthetic
# negatives, the standard error of the AUC of a useless scorer is sqrt((n+m+1) / (12 n m)) ~ 0.026, so 0.6 is
# about four standard errors above 0.5: a discriminator under it cannot be told from a coin on that much
# held-out data, and filtering with it is close to the unfiltered ablation (paper Table 5).
NEAR_CHANCE_AUC = 0.6



def _as_scores(scores, name: str, allow_empty: bool = False) -> np.ndarray:
    """Flattens `scores` (list, numpy array or tensor) to float64, refusing NaN: a NaN log-odds means the
    discriminator produced no usable logits, and silently ranking it would corrupt every metric."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if array.size == 0 and not allow_empty:
        raise ValueError(f"`{name}` is empty: need at least one score.")
    if np.isnan(array).any():
        raise ValueError(f"`{name}` contains NaN scores.")
    return array


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks (what scipy's `rankdata` does)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start of each run of equal values in sorted order; a run covering ranks i+1..j gets (i+1+j)/2.
    is_start = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    starts = np.flatnonzero(is_start)
    ends = np.r_[starts[1:], values.size]
    run_ranks = (starts + 1 + ends) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def roc_auc(positive_scores, negative_scores) -> float:
    """
    Area under the ROC curve of a scorer that should rank real task inputs above synthetic ones.

    Computed from ranks (Mann-Whitney U): the probability that a random positive scores higher than a random
    negative, a tie counting one half. It does not depend on the margin, so it says whether the discriminator
    separates the two at all, whatever threshold is later chosen.

    Args:
        positive_scores (`Sequence[float]` or `np.ndarray` or `torch.Tensor` of shape `(n_positive,)`):
            Scores of inputs that should be accepted (real task inputs).
        negative_scores (`Sequence[float]` or `np.ndarray` or `torch.Tensor` of shape `(n_negative,)`):
            Scores of inputs that should be rejected (synthetic inputs of the source model).

    Returns:
        `float`: the AUC in `[0, 1]`; 0.5 is chance, 1 a perfect separation.
    """
    positives = _as_scores(positive_scores, "positive_scores")
    negatives = _as_scores(negative_scores, "negative_scores")
    ranks = _average_ranks(np.concatenate([positives, negatives]))
    n_pos, n_neg = positives.size, negatives.size
    # U = (sum of the positives' ranks) - (the smallest that sum can be); averaged ranks make ties count 1/2.
    u_statistic = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def binary_accuracy(positive_scores, negative_scores, margin: float = 0.0) -> float:
    """
    Accuracy of the accept rule `score > margin` on positives (should be accepted) and negatives (should not).

    Args:
        positive_scores (`Sequence[float]` or `np.ndarray` of shape `(n_positive,)`):
            Log-odds of inputs that should be accepted.
        negative_scores (`Sequence[float]` or `np.ndarray` of shape `(n_negative,)`):
            Log-odds of inputs that should be rejected.
        margin (`float`, *optional*, defaults to `0.0`):
            Accept threshold on the log-odds; 0 is the paper's rule p("yes") > p("no"). Strict: a score equal to
            the margin is rejected.

    Returns:
        `float`: the fraction of all `n_positive + n_negative` inputs classified correctly.
    """
    positives = _as_scores(positive_scores, "positive_scores")
    negatives = _as_scores(negative_scores, "negative_scores")
    correct = np.count_nonzero(positives > margin) + np.count_nonzero(negatives <= margin)
    return correct / (positives.size + negatives.size)


def calibrate_margin(negative_scores, false_accept_rate: float) -> float:
    """
    The smallest margin at which at most `false_accept_rate` of held-out negatives are accepted.

    Acceptance is `score > margin`, so with `k = floor(false_accept_rate * n)` negatives allowed through, the
    answer is the `(n - k)`-th smallest negative score: at that value the `k` largest are above it (fewer when
    scores tie, since tied scores are accepted or rejected together) and any smaller margin lets one more
    through. The smallest margin is the one that keeps the most real inputs.

    Edge cases:
    - `false_accept_rate=0`: the maximum negative score (every negative is at or below it, hence rejected).
    - `false_accept_rate=1` (or any rate with `k = n`): `-inf`, below the minimum; every input is accepted.
    - Tied scores can make the realised rate lower than asked, never higher.

    Args:
        negative_scores (`Sequence[float]` or `np.ndarray` of shape `(n_negative,)`):
            Log-odds of held-out inputs that should be rejected (synthetic inputs not used to train the
            discriminator; calibrating on its training negatives would understate the rate).
        false_accept_rate (`float`):
            Largest fraction of negatives allowed to pass, in `[0, 1]`.

    Returns:
        `float`: the margin to use with `score > margin`.
    """
    if not 0.0 <= false_accept_rate <= 1.0:
        raise ValueError(f"`false_accept_rate` must be in [0, 1], got {false_accept_rate}.")
    negatives = np.sort(_as_scores(negative_scores, "negative_scores"))
    n = negatives.size
    # The small epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from losing an allowed negative.
    allowed = min(n, int(math.floor(false_accept_rate * n + 1e-9)))
    if allowed == n:
        return float("-inf")
    return float(negatives[n - allowed - 1])


def discriminator_report(positive_scores, negative_scores, margin: float = 0.0) -> dict:
    """
    Everything worth logging about a discriminator on held-out data, as one JSON-friendly dict.

    Args:
        positive_scores (`Sequence[float]` or `np.ndarray` of shape `(n_positive,)`):
            Log-odds of held-out real task inputs.
        negative_scores (`Sequence[float]` or `np.ndarray` of shape `(n_negative,)`):
            Log-odds of held-out synthetic inputs of the source model.
        margin (`float`, *optional*, defaults to `0.0`):
            Accept threshold on the log-odds, as used by the filter.

    Returns:
        `dict` with keys:
        - `accuracy` (`float`): see `binary_accuracy`.
        - `roc_auc` (`float`): see `roc_auc`.
        - `true_accept_rate` (`float`): fraction of positives with `score > margin` (real inputs kept).
        - `false_accept_rate` (`float`): fraction of negatives with `score > margin` (synthetic inputs let in).
        - `n_positive`, `n_negative` (`int`): the counts behind the rates.
        - `margin` (`float`): the margin used.
        - `near_chance` (`bool`): `roc_auc < NEAR_CHANCE_AUC` (0.6); a caller should warn, because filtering
          with such a discriminator is little better than not filtering at all.
    """
    positives = _as_scores(positive_scores, "positive_scores")
    negatives = _as_scores(negative_scores, "negative_scores")
    auc = roc_auc(positives, negatives)
    return {
        "accuracy": float(binary_accuracy(positives, negatives, margin)),
        "roc_auc": auc,
        "true_accept_rate": float(np.mean(positives > margin)),
        "false_accept_rate": float(np.mean(negatives > margin)),
        "n_positive": int(positives.size),
        "n_negative": int(negatives.size),
        "margin": float(margin),
        "near_chance": bool(auc < NEAR_CHANCE_AUC),
    }
