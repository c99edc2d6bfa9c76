"""The evaluation stage: accuracy on held-out real data, and the transfer's printed report.

The report compares the three models a user cares about — the source base with its adapter, the target base
alone and the target base with the transferred adapter — on the same held-out examples, with exact match of the
answer (text up to the stop string, whitespace-stripped) by default, or any `metric(prediction, target) -> float`.
"""

from __future__ import annotations

from collections.abc import Callable

from .data import task_prompt
from .distributed import is_main_process, map_across_processes
from .generation import cut_answer, generate


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
    if (report.get("labels") or {}).get("votes", 1) > 1:
        from .synthesis import describe_votes

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
