"""Evaluation: accuracy on held-out real data of the run's three models, and the transfer's printed report.

The report compares the three models a user cares about — the source base with its adapter, the target base
alone and the target base with the transferred adapter — on the same held-out examples, with exact match of the
answer (text up to the stop string, whitespace-stripped) by default, or any `metric(prediction, target) -> float`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable

from .data import load_examples, task_prompt
from .distributed import is_main_process, map_across_processes
from .generation import cut_answer, generate
from .rundir import read_json, write_json

logger = logging.getLogger(__name__)


def _raised_leak_threshold(syn: dict) -> str:
    threshold = syn.get("leak_threshold_raised")
    if threshold is None:
        return ""
    if threshold > 1.0:
        return " (verbatim copies only: this task's real inputs overlap one another fully)"
    return f" (threshold {threshold:.2f}: this task's real inputs overlap one another that much)"


def exact_match(prediction: str, target: str) -> float:
    return float(prediction.strip() == target.strip())


def evaluate(model, tokenizer, examples: list[dict], *, prompt_template: str = "{input}\nAnswer:",
             answer_stop: str | None = "\n", max_new_tokens: int = 64, batch_size: int = 64,
             metric: Callable[[str, str], float] = exact_match, desc: str | None = None,
             show_progress: bool = True) -> dict:
    """Greedy answers of `model` on `examples` (`{"input", "target"}`) scored by `metric`.

    Returns:
        `dict` with `accuracy` (mean of the metric), `num_samples` and `predictions`.
    """
    prompts = [task_prompt(tokenizer, e["input"], prompt_template) for e in examples]
    outputs = map_across_processes(lambda shard: generate(
        model, tokenizer, shard, batch_size=batch_size, max_new_tokens=max_new_tokens,
        stop_strings=[answer_stop] if answer_stop else None, desc=desc, show_progress=show_progress and is_main_process(),
    ), prompts)
    predictions = [cut_answer(text, answer_stop) for text, _ in outputs]
    scores = [metric(p, e["target"]) for p, e in zip(predictions, examples)]
    return {
        "accuracy": sum(scores) / len(scores) if scores else 0.0,
        "num_samples": len(scores),
        "predictions": predictions,
    }


def format_report(report: dict) -> str:
    """A plain-text table of the report: accuracies, synthesis counts and time per stage."""
    lines = []
    ev = report.get("evaluation") or {}
    if ev:
        lines.append(f"Accuracy on {ev.get('num_samples', '?')} held-out examples ({report.get('task_name', 'task')})")
        lines.append(f"  {'model':<34}{'accuracy':>10}")
        for key, label in (("source_adapter", "source base + source adapter"), ("target_base", "target base"),
                           ("transferred", "target base + transferred adapter")):
            if key in ev:
                lines.append(f"  {label:<34}{ev[key]:>10.1%}")
    if report.get("lm_eval"):
        from .lm_evaluation import markdown_table

        lines.append("lm-evaluation-harness (evaluation/lm_eval.md has lm-eval's own tables)")
        lines += ["  " + row for row in markdown_table(report["lm_eval"])]
    syn = report.get("synthesis") or {}
    if syn:
        lines.append("Synthesis")
        lines.append(f"  candidates spent {syn.get('candidates', 0)}, scored {syn.get('scored', 0)}, accepted "
                     f"{syn.get('accepted', 0)} (acceptance rate {syn.get('acceptance_rate', 0):.1%}), unparsable "
                     f"{syn.get('unparsable', 0)}, duplicates {syn.get('duplicates', 0)}, seed copies "
                     f"{syn.get('seed_copies', 0)}, near-copies of real inputs dropped {syn.get('leaks', 0)}"
                     + _raised_leak_threshold(syn))
    diag = report.get("diagnostics") or {}
    if diag.get("mmd_unfiltered") is not None:
        accepted = diag.get("mmd_accepted")
        lines.append(f"  MMD² to {diag['num_real']} real inputs: accepted "
                     f"{'n/a' if accepted is None else f'{accepted:.4f}'}, unfiltered {diag['mmd_unfiltered']:.4f}"
                     " (lower is closer)")
    if (report.get("labels") or {}).get("votes", 1) > 1 or "selected" in (report.get("labels") or {}):
        from .labelling import describe_votes

        lines.append(f"Labels: {describe_votes(report['labels'])}")
    disc = report.get("discriminator") or {}
    if "accuracy" in disc:
        lines.append(f"Discriminator held-out accuracy {disc['accuracy']:.1%}, ROC-AUC "
                     f"{disc.get('roc_auc', float('nan')):.3f}" + (" (near chance!)" if disc.get("near_chance") else ""))
    stages = report.get("stages") or {}
    if stages:
        lines.append("Time per stage")
        for name, info in stages.items():
            note = " (resumed: done earlier)" if info.get("skipped") else ""
            rss = f"   peak RSS {info['peak_rss_gb']:.1f} GB" if info.get("peak_rss_gb") is not None else ""
            lines.append(f"  {name:<20}{info.get('seconds', 0):>8.1f} s{rss}{note}")
        lines.append(f"  {'total':<20}{sum(i.get('seconds', 0) for i in stages.values()):>8.1f} s")
    return "\n".join(lines)


# -- the three models of a run ----------------------------------------------------------------------------------

def evaluate_run(run, keys=("source_adapter", "target_base", "transferred")) -> dict:
    """Exact match on the first `max_eval_samples` of `eval_file` for each of `keys` of the run `run` (a
    `Transfer`): `source_adapter` (the
    teacher), `target_base`, `transferred` (needs the target_adapter stage). Returns `{key: evaluate(...)}`;
    the first two are read from and written to `evaluation_cache_dir` when it is set."""
    cfg = run.config
    if cfg.evaluation_backend == "lm_eval":
        return evaluate_run_lm_eval(run, keys)
    examples = load_examples(cfg.eval_file, require_target=True, what="eval_file")[: cfg.max_eval_samples]
    kwargs = dict(prompt_template=cfg.prompt_template, answer_stop=cfg.answer_stop,
                  max_new_tokens=cfg.label_max_new_tokens, batch_size=cfg.generation_batch_size,
                  show_progress=run.show_progress)
    models, results = run._models(), {}
    for key in keys:
        base, adapter = models[key]
        cache = _evaluation_cache_path(run, base, adapter, examples) if key != "transferred" else None
        if cache and os.path.exists(cache):
            results[key] = read_json(cache)
            continue
        with run.pool.lease(base, adapter) as lease:
            results[key] = evaluate(lease.model, lease.tokenizer, examples, desc=f"evaluate {key}", **kwargs)
        if cache and is_main_process():
            write_json(cache, results[key])
    return results

def evaluate_run_lm_eval(run, keys=("source_adapter", "target_base", "transferred"), folder: str | None = None) -> dict:
    """lm-evaluation-harness on each of `keys` (`lm_evaluation`): `{key: {"accuracy" (exact match on eval_file,
    None without one), "num_samples", "predictions", "lm_eval": {task: {metric: value}}, "table"}}`. The local
    task's files go to `folder` (default: a temporary one)."""
    import tempfile

    from . import lm_evaluation as lme

    cfg = run.config
    examples = (load_examples(cfg.eval_file, require_target=True, what="eval_file")[: cfg.max_eval_samples]
                if cfg.eval_file else [])
    models, results = run._models(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            base, adapter = models[key]
            with run.pool.lease(base, adapter) as lease:
                local = None
                if examples:
                    # One task folder per prompt form: a chat model gets the input alone as its user turn.
                    chat = bool(getattr(lease.tokenizer, "chat_template", None))
                    local = lme.write_local_task(
                        os.path.join(folder or tmp, "lm_eval_task" + ("_chat" if chat else "")), examples,
                        chat=chat, prompt_template=cfg.prompt_template, answer_stop=cfg.answer_stop,
                        max_new_tokens=cfg.label_max_new_tokens)
                if run.show_progress and is_main_process():
                    logger.info("  lm-eval %s on %s", key,
                                ", ".join([lme.LOCAL_TASK] * bool(local) + list(cfg.lm_eval_tasks)))
                out = lme.evaluate_model(lease.model, lease.tokenizer, tasks=list(cfg.lm_eval_tasks),
                                         local_task=local, include_path=cfg.lm_eval_include_path,
                                         batch_size=cfg.generation_batch_size, num_fewshot=cfg.lm_eval_num_fewshot,
                                         limit=cfg.lm_eval_limit)
            results[key] = {"accuracy": lme.accuracy(out) if examples else None, "num_samples": len(examples),
                            "predictions": out["predictions"], "lm_eval": out["results"], "table": out["table"]}
    return results

def _evaluation_cache_path(run, base: str, adapter: str | None, examples: list[dict]) -> str | None:
    """Where an evaluation that does not depend on this run is kept, keyed by everything it depends on."""
    cfg = run.config
    if not cfg.evaluation_cache_dir:
        return None
    # The adapter's files, not its path: a retrained adapter in the same folder is another model.
    key = json.dumps([base, cfg.dtype, examples, cfg.prompt_template, cfg.answer_stop, cfg.label_max_new_tokens,
                      adapter, run._adapter_hash(adapter) if adapter else None], sort_keys=True)
    return os.path.join(cfg.evaluation_cache_dir, hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
