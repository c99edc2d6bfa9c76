"""The labels stage: the teacher (source base + θs) answers every accepted input (self-consistency when asked),
and keeps the inputs whose answers it is surest of when asked (`label_selection_ratio`)."""

from __future__ import annotations

import logging
import os

from .. import rundir
from ..distributed import is_main_process
from ..errors import UserError
from ..rundir import read_json, write_json
from .common import backend_stats, generation_lease

logger = logging.getLogger(__name__)


def body(run, out: str) -> None:
    from datasets import Dataset, load_from_disk

    from ..labelling import keep_agreed, keep_surest, label

    cfg = run.config
    accepted = load_from_disk(run.dirs.accepted)["input"]
    with generation_lease(run, "labels", cfg.source_model, run.source_adapter) as teacher:
        rows = label(cfg, teacher.model, teacher.tokenizer, list(accepted), show_progress=run.show_progress)
        backend = backend_stats(teacher)
    empty = sum(1 for r in rows if not r["answer"])
    if empty:
        logger.warning("%d of %d teacher answers are empty; they are kept as the teacher's behaviour.", empty, len(rows))
    stats = {"votes": cfg.label_votes, "labelled": len(rows), **backend}
    kept, agreed = keep_agreed(cfg, rows)
    stats.update(agreed)
    if rows and not kept:
        raise UserError(f"label_min_agreement={cfg.label_min_agreement} dropped all {len(rows)} inputs (the "
                        f"teacher's mean agreement is {stats['agreement']:.0%}): lower it.")
    if cfg.label_selection_ratio < 1:
        # Teacher-forced through the HF model whatever the generation backend.
        with run.pool.lease(cfg.source_model, run.source_adapter) as teacher:
            kept, selected = keep_surest(cfg, teacher.model, teacher.tokenizer, kept)
        stats.update(selected)
    if is_main_process():
        Dataset.from_list(kept).save_to_disk(out)
        write_json(os.path.join(out, rundir.LABEL_STATS), stats)


def summary(dirs: rundir.RunDir) -> str:
    from ..labelling import describe_votes

    return describe_votes(read_json(dirs.label_stats))
