"""`DistillationConfig`: `trl.SFTConfig` plus the distillation settings (one place for every training field)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from . import LOSS_TYPES as KD_LOSSES
from . import models


@dataclass
class DistillationConfig(SFTConfig):
    r"""
    [`SFTConfig`] plus the distillation settings.

    Parameters:
        kd_loss (`str`, *optional*, defaults to `"sequence"`):
            `"sequence"` (cross-entropy on the teacher's completions, the paper's loss), `"forward_kl"`,
            `"reverse_kl"` or `"jsd"` (on the teacher's next-token distribution; need a shared vocabulary).
        sequence_weight (`float`, *optional*, defaults to `0.0`):
            For token-level losses, the weight of the sequence CE in `w * CE + (1 - w) * divergence`.
        beta (`float`, *optional*, defaults to `0.5`):
            JSD interpolation: 0 is forward KL, 1 is reverse KL (TRL's GKD convention).
        kd_temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of both distributions in token-level KD (no `T²` factor, like TRL).
        kd_chunk_size (`int`, *optional*, defaults to `1024`):
            Completion positions per chunk of token-level KD; bounds the memory of the logits.

    > Differences from [`SFTConfig`]: `bf16` left unset is `False` where training runs on a CPU that does not
    > compute in bf16 (no AVX512-BF16 or AMX), and `True` elsewhere as in TRL. There bf16 autocast is emulated:
    > measured on an AVX2-only CPU (2 cores), a `DistillationTrainer` step of Gemma-3-270M with a LoRA on every
    > linear layer (batch 16 × 22 tokens) took 96 and 101 s under it, 4.4-5.1 s in float32.
    """

    kd_loss: str = field(default="sequence", metadata={"help": f"One of {KD_LOSSES}."})
    sequence_weight: float = field(default=0.0, metadata={"help": "Weight of the sequence CE in token-level KD."})
    beta: float = field(default=0.5, metadata={"help": "JSD interpolation (0: forward KL, 1: reverse KL)."})
    kd_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of token-level KD."})
    kd_chunk_size: int = field(default=1024, metadata={"help": "Positions per chunk of token-level KD."})

    def __post_init__(self):
        if self.kd_loss not in KD_LOSSES:
            raise ValueError(f"kd_loss={self.kd_loss!r} is not one of {KD_LOSSES}.")
        if not 0.0 <= self.sequence_weight <= 1.0:
            raise ValueError(f"sequence_weight must lie in [0, 1] (got {self.sequence_weight}).")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1] (got {self.beta}).")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be positive (got {self.kd_temperature}).")
        if self.kd_chunk_size < 1:
            raise ValueError(f"kd_chunk_size must be at least 1 (got {self.kd_chunk_size}).")
        if self.bf16 is None and not self.fp16 and _trains_on_cpu(self.use_cpu) and not models.cpu_has_bf16():
            self.bf16 = False
        super().__post_init__()


def _trains_on_cpu(use_cpu: bool) -> bool:
    if use_cpu:
        return True
    import torch

    xpu = getattr(torch, "xpu", None)
    return not (torch.cuda.is_available() or (xpu is not None and xpu.is_available())
                or torch.backends.mps.is_available())
