"""The labels stage: the teacher (source base + θs) answers every accepted input (self-consistency when asked)."""

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

    from ..labelling import label

    cfg = run.config
    accepted = load_from_disk(run.dirs.accepted)["input"]
    with generation_lease(run, "labels", cfg.source_model, run.source_adapter) as teacher:
        rows = label(cfg, teacher.model, teacher.tokenizer, list(accepted), show_progress=run.show_progress)
        backend = backend_stats(teacher)
    empty = sum(1 for r in rows if not r["answer"])
    if empty:
        logger.warning("%d of %d teacher answers are empty; they are kept as the teacher's behaviour.", empty, len(rows))
    stats = {"votes": cfg.label_votes, "labelled": len(rows), **backend}
    if cfg.label_votes > 1:
        kept = [r for r in rows if r["agreement"] >= cfg.label_min_agreement]
        stats.update(agreement=sum(r["agreement"] for r in rows) / len(rows), unanimous=sum(
            r["agreement"] == 1.0 for r in rows) / len(rows), dropped=len(rows) - len(kept))
        if not kept:
            raise UserError(f"label_min_agreement={cfg.label_min_agreement} dropped all {len(rows)} inputs (the "
                            f"teacher's mean agreement is {stats['agreement']:.0%}): lower it.")
        rows = kept
    if is_main_process():
        Dataset.from_list(rows).save_to_disk(out)
        write_json(os.path.join(out, rundir.LABEL_STATS), stats)


def summary(dirs: rundir.RunDir) -> str:
    from ..labelling import describe_votes

    return describe_votes(read_json(dirs.label_stats))
