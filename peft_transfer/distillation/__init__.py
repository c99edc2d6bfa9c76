"""Distillation, usable alone: `DistillationConfig` (a `trl.SFTConfig`), `DistillationTrainer` (a `trl.SFTTrainer`
that learns from a teacher's completions, and from its token distributions where the vocabularies agree) and the
losses (`losses`: pure tensor functions). Nothing here imports the transfer pipeline.

The trainer and its config import TRL, so they load on first use: the names below are enough for settings.
"""

LOSS_TYPES = ("sequence", "forward_kl", "reverse_kl", "jsd")
LINEAGE_FILE = "transfer.json"  # the transfer's lineage, written next to a transferred adapter


def __getattr__(name):
    if name == "DistillationConfig":
        from .config import DistillationConfig

        return DistillationConfig
    if name == "DistillationTrainer":
        from .trainer import DistillationTrainer

        return DistillationTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LINEAGE_FILE", "LOSS_TYPES", "DistillationConfig", "DistillationTrainer"]
