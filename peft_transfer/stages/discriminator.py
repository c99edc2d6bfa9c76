"""The discriminator stage: the yes/no adapter trained on real inputs against source-generated ones (and, when
asked, real inputs perturbed in format); held-out scores and ROC-AUC per negative kind."""

from __future__ import annotations

import logging
import os
import random
import shutil

import numpy as np

from .. import rundir
from ..data import load_examples
from ..distributed import is_main_process
from ..modeling import peft_config_from
from ..rundir import read_json, write_json
from .common import train, training_args

logger = logging.getLogger(__name__)


def body(run, out: str) -> None:
    from ..discriminator import score, train_discriminator
    from ..metrics import discriminator_report, roc_auc
    from ..synthesis import synthesize

    cfg = run.config
    real = list(dict.fromkeys(e["input"] for e in load_examples(cfg.train_file, what="train_file")))
    random.Random(cfg.seed).shuffle(real)
    # Negatives: what the source base makes of the stage-3 prompt, seeded with random real inputs, and (a setting)
    # real train inputs perturbed in format.
    n_neg = cfg.discriminator_negatives or len(real)
    n_format = round(cfg.discriminator_format_negatives * n_neg)
    n_pos_held = max(1, len(real) // 5)  # a fifth of both sides is held out, to measure on data it has not seen
    held_pos, train_pos = real[:n_pos_held], real[n_pos_held:]
    kinds: dict[str, list[str]] = {"imitation": []}
    if n_neg > n_format:
        with run.pool.lease(cfg.source_model) as lease:
            rows, _ = synthesize(cfg, lease.model, lease.tokenizer, real, num_samples=n_neg - n_format,
                                 candidate_budget=max(cfg.candidate_budget, 4 * n_neg), show_progress=run.show_progress)
        real_set = set(real)
        kinds["imitation"] = [r["input"] for r in rows if r["accepted"] and r["input"] not in real_set]
    from ..negatives import format_negatives

    for kind, text in format_negatives(train_pos, n_format, seed=cfg.seed):  # from the train side only
        kinds.setdefault(kind, []).append(text)
    held_by_kind, train_neg = {}, []
    for kind, texts in kinds.items():
        if texts:
            n_held = max(1, len(texts) // 5)
            held_by_kind[kind] = texts[:n_held]
            train_neg += texts[n_held:]
    held_neg = [x for texts in held_by_kind.values() for x in texts]
    peft_config = peft_config_from(cfg, cfg.discriminator_base, peft_type="lora")
    args = training_args(cfg, rundir.RunDir.trainer(out), show_progress=run.show_progress,
                         learning_rate=cfg.discriminator_learning_rate, num_train_epochs=cfg.discriminator_epochs,
                         max_length=None)
    with run.pool.lease(cfg.discriminator_base) as lease:
        lease.model = model = train_discriminator(lease.model, lease.tokenizer, train_pos, train_neg,
                                                  task_name=cfg.task_name, args=args, peft_config=peft_config,
                                                  train=lambda trainer: train(run, out, trainer, "discriminator"))
        pos_scores = score(model, lease.tokenizer, held_pos, cfg.task_name, batch_size=cfg.filter_batch_size)
        neg_scores = score(model, lease.tokenizer, held_neg, cfg.task_name, batch_size=cfg.filter_batch_size)
        if is_main_process():
            model.save_pretrained(out)
        del model
    metrics = discriminator_report(pos_scores, neg_scores, margin=cfg.filter_margin)
    if len(held_by_kind) > 1:  # the held-out ROC-AUC against each kind of negative
        by_kind = np.split(neg_scores, np.cumsum([len(v) for v in held_by_kind.values()])[:-1])
        metrics["roc_auc_by_negative_kind"] = {k: roc_auc(pos_scores, v) for k, v in zip(held_by_kind, by_kind)}
    metrics.update(num_positives=len(train_pos), num_negatives=len(train_neg), task_name=cfg.task_name,
                   negatives_by_kind={k: len(v) for k, v in kinds.items()},
                   base_model=cfg.discriminator_base,
                   held_out_negative_scores=[round(float(x), 4) for x in neg_scores],  # numbers only, no text
                   held_out_positive_scores=[round(float(x), 4) for x in pos_scores])
    if metrics.get("near_chance"):
        logger.warning("The discriminator is near chance on held-out data (ROC-AUC %.3f): the filter will barely "
                       "help. Train it longer or on more data.", metrics["roc_auc"])
    if is_main_process():
        shutil.rmtree(rundir.RunDir.trainer(out), ignore_errors=True)
        write_json(os.path.join(out, rundir.METRICS), metrics)


def summary(dirs: rundir.RunDir) -> str:
    return f"held-out ROC-AUC {read_json(dirs.discriminator_metrics).get('roc_auc', float('nan')):.3f}"
