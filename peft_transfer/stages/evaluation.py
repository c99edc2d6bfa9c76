"""The evaluation stage: source+θs, target base and target+θt on held-out data (exact match, or lm-eval)."""

from __future__ import annotations

import os

from .. import rundir
from ..distributed import is_main_process
from ..rundir import read_json, write_json


def body(run, out: str) -> None:
    lm_eval = run.config.evaluation_backend == "lm_eval"
    if lm_eval and not is_main_process():  # lm-eval evaluates a loaded model in one process
        return
    results = run.evaluate_lm_eval(folder=out) if lm_eval else run.evaluate()
    summary = {k: v["accuracy"] for k, v in results.items() if v["accuracy"] is not None}
    if summary:
        summary["num_samples"] = next(iter(results.values()))["num_samples"]
    if is_main_process():
        if summary:
            write_json(os.path.join(out, rundir.EVALUATION), summary)
            write_json(os.path.join(out, rundir.PREDICTIONS), {k: v["predictions"] for k, v in results.items()})
        if lm_eval:
            write_json(os.path.join(out, rundir.LM_EVAL), {k: v["lm_eval"] for k, v in results.items()})
            with open(os.path.join(out, rundir.LM_EVAL_TABLE), "w", encoding="utf-8") as f:
                f.write("".join(f"## {k}\n\n{v['table']}\n" for k, v in results.items()))


def summary(dirs: rundir.RunDir) -> str:
    summary = ", ".join(f"{k} {v:.1%}" for k, v in read_json(dirs.evaluation).items() if k != "num_samples")
    if os.path.exists(dirs.lm_eval):
        summary += (", " if summary else "") + "lm-eval tables in evaluation/lm_eval.md"
    return summary
