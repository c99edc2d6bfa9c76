"""The labels stage: the teacher (source base + θs) answers every accepted input (self-consistency when asked),
and keeps the inputs whose answers it is surest of when asked (`label_selection_ratio`).

Every answer, before the selection, is kept in `labelled/` with its confidence: a run whose only change is the
selection (`label_selection_ratio`, `label_selection_strata`) starts from it and makes the selection again in
seconds instead of asking the teacher again (the pipeline puts it in place: `Stage.selection`)."""

from __future__ import annotations

import logging
import os
import shutil

from .. import rundir
from ..distributed import is_main_process
from ..errors import UserError
from ..rundir import read_json, write_json
from .common import backend_stats, generation_lease

logger = logging.getLogger(__name__)

# The settings that only choose among the stored answers.
SELECTION = ("label_selection_ratio", "label_selection_strata")


def body(run, out: str) -> None:
    from datasets import Dataset, load_from_disk

    from ..labelling import keep_agreed, keep_surest, label, with_confidence

    cfg = run.config
    stored = os.path.join(out, rundir.LABELLED)
    from_store = os.path.isdir(stored)
    if from_store:  # the teacher's answers of a run made the same way but for the selection
        answers = load_from_disk(os.path.join(stored, "rows")).to_list()
        stats = read_json(os.path.join(stored, "stats.json"))
        if is_main_process():
            logger.info("  %d teacher answers taken from the stored ones; the selection is made again", len(answers))
    else:
        accepted = load_from_disk(run.dirs.accepted)["input"]
        with generation_lease(run, "labels", cfg.source_model, run.source_adapter) as teacher:
            rows = label(cfg, teacher.model, teacher.tokenizer, list(accepted), show_progress=run.show_progress)
            backend = backend_stats(teacher)
        empty = sum(1 for r in rows if not r["answer"])
        if empty:
            logger.warning("%d of %d teacher answers are empty; they are kept as the teacher's behaviour.", empty,
                           len(rows))
        stats = {"votes": cfg.label_votes, "labelled": len(rows), **backend}
        answers, agreed = keep_agreed(cfg, rows)
        stats.update(agreed)
        if rows and not answers:
            raise UserError(f"label_min_agreement={cfg.label_min_agreement} dropped all {len(rows)} inputs (the "
                            f"teacher's mean agreement is {stats['agreement']:.0%}): lower it.")
    measured = cfg.label_selection_ratio < 1 and not all("confidence" in r for r in answers)
    if measured:  # teacher-forced through the HF model whatever the generation backend
        with run.pool.lease(cfg.source_model, run.source_adapter) as teacher:
            answers = with_confidence(cfg, teacher.model, teacher.tokenizer, answers)
    kept, selected = keep_surest(cfg, None, None, answers)
    if is_main_process():
        if measured or not from_store:
            save_answers(out, answers, stats)
        Dataset.from_list(kept).save_to_disk(out)
        write_json(os.path.join(out, rundir.LABEL_STATS), {**stats, **selected})


def save_answers(out: str, rows: list[dict], stats: dict) -> None:
    """Every answer before the selection (`rows`, with their confidence where measured) and the answering's
    `label_stats.json` figures, in `out`/labelled/ (written beside, then put in place of an earlier one)."""
    from datasets import Dataset

    final, tmp = os.path.join(out, rundir.LABELLED), os.path.join(out, rundir.LABELLED + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset.from_list(rows).save_to_disk(os.path.join(tmp, "rows"))
    write_json(os.path.join(tmp, "stats.json"), stats)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def summary(dirs: rundir.RunDir) -> str:
    from ..labelling import describe_votes

    return describe_votes(read_json(dirs.label_stats))
