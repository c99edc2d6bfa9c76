"""Metrics for a transfer: how good the discriminator is, how close the synthetic inputs are to the real ones,
how diverse they are, and whether any of them leaks a real input.

Everything here is a pure function of scores, texts or embedding arrays; only `embed_texts` runs a model and
only `plot_projection` draws. The run-time dependencies are numpy, torch and transformers: scikit-learn and
scipy are deliberately not used (the tests check `roc_auc` against scikit-learn instead), matplotlib and
sentence-transformers are imported only by the one function that needs each.

- Discriminator quality: `roc_auc`, `binary_accuracy`, `calibrate_margin`, `discriminator_report`. Scores are
  the discriminator's log-odds `log p("yes") - log p("no")`; a candidate is accepted when `score > margin`.
- Distribution distance (paper Table 9): `embed_texts` then `mmd2`.
- Diversity: `distinct_n`, `self_similarity`.
- Privacy guard: `near_duplicates`, `chance_overlap`, `filter_leaks` (character n-gram overlap with the real inputs).
- Picture (paper Fig. 7): `plot_projection`.
"""


from .discriminator_stats import NEAR_CHANCE_AUC, binary_accuracy, calibrate_margin, discriminator_report, roc_auc
from .distance import distinct_n, median_heuristic_bandwidth, mmd2, self_similarity
from .embedding import embed_texts
from .leaks import (
    LEAK_NGRAM_SIZE,
    LEAK_THRESHOLD,
    NearDuplicate,
    chance_overlap,
    filter_leaks,
    leak_threshold_for,
    near_duplicates,
)
from .projection import pca_2d, plot_projection

__all__ = [
    "NEAR_CHANCE_AUC", "binary_accuracy", "calibrate_margin", "discriminator_report", "roc_auc",
    "distinct_n", "median_heuristic_bandwidth", "mmd2", "self_similarity", "embed_texts",
    "LEAK_NGRAM_SIZE", "LEAK_THRESHOLD", "NearDuplicate", "chance_overlap", "filter_leaks", "leak_threshold_for",
    "near_duplicates", "pca_2d", "plot_projection",
]
