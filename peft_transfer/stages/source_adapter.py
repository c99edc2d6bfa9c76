"""The source_adapter stage: train θs on the task data (only when no source adapter is given)."""

from __future__ import annotations

import shutil

from .. import rundir
from ..data import load_examples, task_prompt
from ..distributed import is_main_process
from ..modeling import peft_config_from
from .common import train, training_args


def body(run, out: str) -> None:
    from datasets import Dataset

    from ..distillation import DistillationTrainer

    cfg = run.config
    args = training_args(cfg, rundir.RunDir.trainer(out), show_progress=run.show_progress,
                         learning_rate=cfg.source_learning_rate, num_train_epochs=cfg.source_epochs)
    peft_config = peft_config_from(cfg, cfg.source_model, peft_type=cfg.source_peft_type)
    with run.pool.lease(cfg.source_model) as lease:
        rows = [{"prompt": task_prompt(lease.tokenizer, e["input"], cfg.prompt_template), "completion": " " + e["target"]}
                for e in load_examples(cfg.train_file, require_target=True, what="train_file")]
        trainer = DistillationTrainer(model=lease.model, args=args, train_dataset=Dataset.from_list(rows),
                                      processing_class=lease.tokenizer, peft_config=peft_config)
        lease.model = trainer.model
        train(run, out, trainer, "source_adapter")
        if is_main_process():
            trainer.model.save_pretrained(out)
            shutil.rmtree(rundir.RunDir.trainer(out), ignore_errors=True)
        del trainer
