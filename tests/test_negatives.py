"""Format negatives for the discriminator: real inputs perturbed, and the held-out ROC-AUC per kind of negative."""

import pytest

from peft_transfer.negatives import KINDS, format_negatives

REAL = [f"Sort the following words alphabetically: List: {w}" for w in (
    "apple lemon zebra", "kettle bridge cotton mirror", "oyster noodle parrot", "tablet ginger island walnut velvet")]


def test_each_kind_is_made_and_none_is_a_real_input():
    negatives = format_negatives(REAL, 40, seed=1)
    assert len(negatives) == 40 and len({t for _, t in negatives}) == 40
    assert {k for k, _ in negatives} == set(KINDS) and not {t for _, t in negatives} & set(REAL)
    by_kind = {k: [t for kk, t in negatives if kk == k] for k in KINDS}
    lengths = {len(r.split()) for r in REAL}
    assert all(len(t.split()) < max(lengths) for t in by_kind["truncated"])
    assert all(len(t.split()) >= 2 * min(lengths) for t in by_kind["doubled"])
    assert all(sorted(t.split()) in [sorted(r.split()) for r in REAL] for t in by_kind["shuffled"])
    assert format_negatives(REAL, 40, seed=1) == negatives  # deterministic


def test_too_little_to_perturb_gives_fewer_not_an_endless_loop():
    assert format_negatives(["x"], 10) == [("doubled", "x x")]
    assert format_negatives([], 5) == [] and format_negatives(REAL, 0) == []


def test_share_is_checked(config_only):
    from peft_transfer.errors import ConfigError

    with pytest.raises(ConfigError, match="discriminator_format_negatives"):
        config_only(discriminator_format_negatives=1.5)


def test_discriminator_reports_held_out_auc_per_kind(make_config, tmp_path):
    from peft_transfer import Transfer
    from peft_transfer.rundir import RunDir, read_json

    cfg = make_config(output_dir=str(tmp_path / "run"), discriminator_format_negatives=0.5)
    Transfer(cfg, show_progress=False).run(stages=("discriminator",))
    metrics = read_json(RunDir(cfg.output_dir).discriminator_metrics)
    counts = metrics["negatives_by_kind"]
    assert counts["imitation"] > 0 and sum(counts[k] for k in KINDS) == round(0.5 * cfg.discriminator_negatives)
    assert set(metrics["roc_auc_by_negative_kind"]) == {"imitation", *KINDS}
    # The overall held-out AUC is the per-kind AUCs weighted by each kind's held-out negatives (a fifth of each).
    held = {k: max(1, n // 5) for k, n in counts.items() if n}
    weighted = sum(held[k] * auc for k, auc in metrics["roc_auc_by_negative_kind"].items()) / sum(held.values())
    assert metrics["n_negative"] == sum(held.values()) and metrics["roc_auc"] == pytest.approx(weighted)
