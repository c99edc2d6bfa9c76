"""The target_adapter stage: distil the teacher's labels into a fresh θt on the target base (token-level KD or
token selection run the teacher beside it)."""

from __future__ import annotations

import contextlib
import os
import shutil

import numpy as np

from .. import rundir
from ..config import TransferConfig
from ..data import task_prompt
from ..distillation import LINEAGE_FILE
from ..distributed import is_main_process
from ..modeling import peft_config_from
from ..rundir import write_json
from .common import train, training_args

TOKEN_KD = ("forward_kl", "reverse_kl", "jsd")


def reads_teacher(c: TransferConfig) -> bool:
    """Token-level KD and token selection run the teacher (source base + adapter) in the target_adapter stage."""
    return c.kd_loss in TOKEN_KD or c.token_selection_ratio < 1


def body(run, out: str) -> None:
    from datasets import Dataset, load_from_disk

    from ..distillation import DistillationTrainer

    cfg = run.config
    data = load_from_disk(run.dirs.labels)
    args = training_args(cfg, rundir.RunDir.trainer(out), show_progress=run.show_progress, kd_loss=cfg.kd_loss,
                         sequence_weight=cfg.sequence_weight if cfg.kd_loss != "sequence" else 0.0,
                         beta=cfg.beta, kd_temperature=cfg.kd_temperature)
    token_kd = cfg.kd_loss in TOKEN_KD  # token-level KD runs the teacher during training
    with contextlib.ExitStack() as stack:
        student = stack.enter_context(run.pool.lease(cfg.target_model))
        teacher = stack.enter_context(run.pool.lease(cfg.source_model, run.source_adapter)) \
            if reads_teacher(cfg) else None
        rows = [{"prompt": task_prompt(student.tokenizer, x, cfg.prompt_template), "completion": c}
                for x, c in zip(data["input"], data["completion"])]
        if cfg.token_selection_ratio < 1:
            rows = _selected_rows(cfg, rows, data["input"], student.tokenizer, teacher, out)
        trainer = DistillationTrainer(model=student.model, teacher_model=teacher.model if token_kd else None,
                                      args=args, train_dataset=Dataset.from_list(rows),
                                      processing_class=student.tokenizer,
                                      peft_config=peft_config_from(cfg, cfg.target_model),
                                      teacher_processing_class=teacher.tokenizer if token_kd else None,
                                      lineage=run.lineage())
        student.model = trainer.model
        train(run, out, trainer, "target_adapter")
        if is_main_process():
            trainer.model.save_pretrained(out)
            shutil.rmtree(rundir.RunDir.trainer(out), ignore_errors=True)
            write_json(os.path.join(out, LINEAGE_FILE), run.lineage())
        del trainer


def _selected_rows(cfg, rows: list[dict], inputs: list[str], tokenizer, teacher, out: str) -> list[dict]:
    """The training rows tokenized, with the loss on the completion tokens where the source adapter matters most
    (`selection.py`); how many tokens kept the loss goes to `selection.json`."""
    from ..selection import selected_row, token_excess

    completions = [r["completion"] for r in rows]
    prompts = [task_prompt(teacher.tokenizer, x, cfg.prompt_template) for x in inputs]
    spans = token_excess(teacher.model, teacher.tokenizer, prompts, completions,
                         batch_size=cfg.per_device_train_batch_size)
    selected = [selected_row(tokenizer, r["prompt"], r["completion"], s, cfg.token_selection_ratio)
                for r, s in zip(rows, spans)]
    if is_main_process():
        excess = [x for s in spans for _, _, x in s]
        write_json(os.path.join(out, rundir.SELECTION), {
            "token_selection_ratio": cfg.token_selection_ratio,
            "tokens_with_loss": sum(t != -100 for r in selected for t in r["labels"]),
            "mean_teacher_excess": float(np.mean(excess)) if excess else None})
    return selected
