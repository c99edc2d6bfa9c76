"""What the stages share: a training that resumes and reports under its stage's name, the `DistillationConfig`
every training starts from, and the model a generating stage leases (HF or a vLLM server)."""

from __future__ import annotations

import logging
import os

import torch

from .. import rundir
from ..config import TransferConfig
from ..distributed import is_main_process
from ..tracking import prefix_trainer_logs, run_name

logger = logging.getLogger(__name__)


def train(run, out: str, trainer, stage: str) -> None:
    """Train, resuming from the last checkpoint in the stage's folder when a killed run left one; its logs reach the
    trackers under the stage's name (`tracking`).

    The Trainer prints its closing summary (`{'train_runtime': ...}`) through its progress or printer callback; the
    stage's own line says what a user needs, so that dict is dropped (loss logs every `logging_steps` stay).
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    for kind in (ProgressCallback, PrinterCallback):
        if any(type(c) is kind for c in trainer.callback_handler.callbacks):
            trainer.remove_callback(kind)
            trainer.add_callback(_without_summary(kind)())
    prefix_trainer_logs(trainer, stage, run.dirs.tracking)
    folder = rundir.RunDir.trainer(out)
    last = get_last_checkpoint(folder) if os.path.isdir(folder) else None
    if last:
        steps_as_resolved(trainer.args, last)
        if is_main_process():
            logger.info("  resuming training from %s", os.path.relpath(last, run.config.output_dir))
    trainer.train(resume_from_checkpoint=last)


def steps_as_resolved(args, checkpoint: str) -> None:
    """Give `args` the step counts the checkpoint's run resolved its ratios to (`save_steps: 0.1` is stored as 8 in
    `trainer_state.json`), so that a resumed training keeps its cadence and transformers does not warn that the
    arguments differ from the checkpoint's."""
    import json

    from transformers.trainer import TRAINER_STATE_NAME

    with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as f:
        state = json.load(f)
    for name in ("logging_steps", "eval_steps", "save_steps"):
        value, resolved = getattr(args, name, None), state.get(name)
        if value is not None and 0 < value < 1 and resolved:
            setattr(args, name, resolved)


def _without_summary(kind):
    class WithoutSummary(kind):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "train_runtime" not in logs:
                super().on_log(args, state, control, logs=logs, **kwargs)

    return WithoutSummary


def training_args(config: TransferConfig, output_dir: str, *, show_progress: bool = True, **overrides):
    """The `DistillationConfig` every training stage starts from: the paper's optimiser settings (AdamW without
    weight decay, linear schedule without warm-up), the config's batch, length and logging, then the user's
    `training_kwargs`; `overrides` (the stage's own learning rate, epochs and loss) win."""
    from ..distillation import DistillationConfig

    kwargs = dict(
        output_dir=output_dir,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_length=config.max_length,
        gradient_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
        report_to=list(config.report_to),
        run_name=run_name(config),
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=1,  # the last checkpoint is all a resume needs
        seed=config.seed,
        bf16=torch.cuda.is_available() and config.dtype in ("auto", "bfloat16"),
        use_cpu=not torch.cuda.is_available(),  # also what makes CPU-only processes form a gloo group
        disable_tqdm=not show_progress,
    )
    kwargs.update(config.training_kwargs)  # the user's own TrainingArguments fields win over the paper's optimiser
    kwargs.update(overrides)
    return DistillationConfig(**kwargs)


def generation_lease(run, stage_name: str, ref: str, adapter: str | None = None):
    """The model a generating stage writes with: a pooled HF model, or a vLLM server for `ref` (and `adapter`)
    that lives as long as the block (`generation_backend`)."""
    cfg = run.config
    if cfg.generation_backend != "vllm":
        return run.pool.lease(ref, adapter)
    from ..vllm_server import serve

    return serve(ref, adapter, python=cfg.vllm_python, dtype=cfg.dtype, kv_cache_gb=cfg.vllm_kv_cache_gb,
                 token=cfg.hub_token, log_path=run.dirs(f"vllm-{stage_name}.log"))


def backend_stats(lease) -> dict:
    server = getattr(lease.model, "server", None)
    return {} if server is None else {"generation_backend": "vllm",
                                      "vllm_startup_seconds": round(server.startup_seconds or 0.0, 1)}
