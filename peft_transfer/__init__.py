"""peft_transfer: move a fine-tuned PEFT adapter from one base LLM to another without its training data.

An implementation of Trans-LoRA (arXiv 2405.17258): synthetic task inputs from the target model, filtered by a
discriminator, labelled by the old base + adapter, distilled into a new adapter on the new base.
"""

import importlib

__version__ = "0.1.0"

# Imported on first use, so that `import peft_transfer.hub` (or the CLI's --help) does not pay for torch and trl.
_EXPORTS = {
    "TransferConfig": ".config",
    "Transfer": ".pipeline",
    "run_transfer": ".pipeline",
    "DistillationConfig": ".distillation.config",
    "DistillationTrainer": ".distillation.trainer",
    "SyntheticFilterCallback": ".callbacks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
