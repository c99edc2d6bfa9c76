"""The labels stage: the teacher (source base + θs) answers every accepted input (self-consistency when asked),
and keeps the inputs whose answers it is surest of when asked (`label_selection_ratio`)."""

from __future__ import annotations

import logging
import math
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
    if cfg.label_selection_ratio < 1:
        rows, selected = _surest(run, rows)
        stats.update(selected)
    if is_main_process():
        Dataset.from_list(rows).save_to_disk(out)
        write_json(os.path.join(out, rundir.LABEL_STATS), stats)


def _surest(run, rows: list[dict]) -> tuple[list[dict], dict]:
    """The `label_selection_ratio` share of `rows` whose answers the teacher is surest of (mean log-probability of
    the answer's tokens, teacher-forced through the HF model whatever the generation backend; ties go to the earlier
    input), in their order, each with its `confidence`; and the counts for `label_stats.json`."""
    from ..data import task_prompt
    from ..distributed import map_across_processes
    from ..selection import answer_confidence

    cfg = run.config
    with run.pool.lease(cfg.source_model, run.source_adapter) as teacher:
        pairs = [(task_prompt(teacher.tokenizer, r["input"], cfg.prompt_template), r["completion"]) for r in rows]
        confidence = map_across_processes(lambda shard: answer_confidence(
            teacher.model, teacher.tokenizer, [p for p, _ in shard], [c for _, c in shard],
            batch_size=cfg.filter_batch_size), pairs)
    keep = max(1, math.ceil(cfg.label_selection_ratio * len(rows)))
    chosen = sorted(sorted(range(len(rows)), key=lambda i: -confidence[i])[:keep])
    finite = [c for c in confidence if math.isfinite(c)]
    counts = {"selection_ratio": cfg.label_selection_ratio, "selected": keep, "dropped_unsure": len(rows) - keep,
              "confidence_threshold": min(confidence[i] for i in chosen),
              "mean_confidence": sum(finite) / len(finite) if finite else None}
    return [dict(rows[i], confidence=confidence[i]) for i in chosen], counts


def summary(dirs: rundir.RunDir) -> str:
    from ..labelling import describe_votes

    return describe_votes(read_json(dirs.label_stats))
