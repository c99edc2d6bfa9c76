"""Labelling: the teacher (source base + adapter) answers every accepted input; self-consistency when asked; the
answers it agrees on, or is surest of, kept when asked."""

from __future__ import annotations

import bisect
import math
from collections import Counter

from .data import task_prompt
from .distributed import is_main_process, map_across_processes
from .generation import cut_answer, generate


def label(cfg, teacher, tokenizer, inputs: list[str], *, show_progress: bool = True) -> list[dict]:
    """The teacher's answers (greedy by default) as prompt/completion rows for distillation.

    The prompt is rendered with the *teacher's* tokenizer here; `completion` is the answer text up to the stop
    string, as the teacher wrote it, so that any student tokenizer can learn it (sequence-level KD). With
    `cfg.label_votes` k > 1 the teacher also samples k - 1 answers at `cfg.label_temperature`, the most frequent
    answer (ties: the first one) is the label, and each row says which share of the k votes it won (`agreement`).
    """
    prompts = [task_prompt(tokenizer, x, cfg.prompt_template) for x in inputs]

    def answers(do_sample: bool, temperature: float, k: int, desc: str) -> list[list[str]]:
        outputs = map_across_processes(lambda shard: generate(
            teacher, tokenizer, shard, batch_size=cfg.generation_batch_size, max_new_tokens=cfg.label_max_new_tokens,
            do_sample=do_sample, temperature=temperature,
            stop_strings=[cfg.answer_stop] if cfg.answer_stop else None,
            desc=desc, show_progress=show_progress and is_main_process(),
        ), [p for p in prompts for _ in range(k)])
        texts = [cut_answer(text, cfg.answer_stop, strip=False).rstrip() for text, _ in outputs]  # leading space kept
        return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]

    votes = cfg.label_votes
    first = answers(cfg.label_do_sample, 1.0, 1, "label")
    more = answers(True, cfg.label_temperature, votes - 1, "label votes") if votes > 1 else [[] for _ in prompts]
    rows = []
    for x, completions in zip(inputs, (a + b for a, b in zip(first, more))):
        counts = Counter(c.strip() for c in completions)
        answer = max(counts, key=counts.get)  # the first answer seen among the most frequent: ties go to the first
        row = {"input": x, "completion": next(c for c in completions if c.strip() == answer), "answer": answer}
        if votes > 1:
            row["agreement"] = counts[answer] / votes
        rows.append(row)
    return rows


def keep_agreed(cfg, rows: list[dict]) -> tuple[list[dict], dict]:
    """The rows whose answer won at least `cfg.label_min_agreement` of the teacher's votes, and the counts for
    `label_stats.json` (agreement, unanimous, dropped); every row when the teacher voted once."""
    if cfg.label_votes <= 1 or not rows:
        return rows, {}
    kept = [r for r in rows if r["agreement"] >= cfg.label_min_agreement]
    return kept, {"agreement": sum(r["agreement"] for r in rows) / len(rows),
                  "unanimous": sum(r["agreement"] == 1.0 for r in rows) / len(rows), "dropped": len(rows) - len(kept)}


def surest_count(ratio: float, n: int) -> int:
    """How many of `n` labelled inputs `label_selection_ratio` = `ratio` keeps (at least one)."""
    return max(1, math.ceil(ratio * n))


def surest_indices(confidence: list[float], keep: int, *, lengths: list[int] | None = None,
                   strata: int = 1) -> list[int]:
    """The indices (in order) of the `keep` most confident of `confidence` (ties go to the earlier one).

    With `strata` > 1 the inputs are first split by `lengths` into that many groups, shortest first, at the
    quantiles of the lengths (inputs of one length stay in one group: with a single length there is one group, and
    the selection is the one ranking's), and each group keeps its share of `keep` (largest remainder): the kept
    inputs then have the lengths of all of them. Without it, a teacher that is surer of short inputs (a shorter
    answer has fewer tokens to doubt) keeps mostly short ones, and the student never sees the long ones the task also
    has.
    """
    n = len(confidence)
    groups = [list(range(n))]
    if strata > 1 and n:
        if lengths is None or len(lengths) != n:
            raise ValueError("surest_indices needs one length per input to stratify by length.")
        ordered = sorted(lengths)
        groups = [[] for _ in range(strata)]
        for i in range(n):  # in index order within a group; the group from the number of inputs shorter than it
            groups[min(strata - 1, bisect.bisect_left(ordered, lengths[i]) * strata // n)].append(i)
        groups = [group for group in groups if group]
    shares = [keep * len(group) / max(n, 1) for group in groups]
    quotas = [math.floor(share) for share in shares]
    for g in sorted(range(len(groups)), key=lambda g: (quotas[g] - shares[g], g))[:keep - sum(quotas)]:
        quotas[g] += 1
    chosen = []
    for group, quota in zip(groups, quotas):
        chosen += sorted(group, key=lambda i: -confidence[i])[:quota]
    return sorted(chosen)


def with_confidence(cfg, teacher, tokenizer, rows: list[dict]) -> list[dict]:
    """`rows`, each with its `confidence`: the mean log-probability of its answer's tokens under the teacher (an HF
    model), teacher-forced; rows that have one keep it (a stored labelling needs no teacher)."""
    from .selection import answer_confidence

    missing = [i for i, r in enumerate(rows) if "confidence" not in r]
    if not missing:
        return rows
    pairs = [(task_prompt(tokenizer, rows[i]["input"], cfg.prompt_template), rows[i]["completion"]) for i in missing]
    confidence = map_across_processes(lambda shard: answer_confidence(
        teacher, tokenizer, [p for p, _ in shard], [c for _, c in shard], batch_size=cfg.filter_batch_size), pairs)
    rows = list(rows)
    for i, c in zip(missing, confidence):
        rows[i] = dict(rows[i], confidence=c)
    return rows


def keep_surest(cfg, teacher, tokenizer, rows: list[dict]) -> tuple[list[dict], dict]:
    """The `cfg.label_selection_ratio` share of `rows` whose answers the teacher (an HF model) is surest of: the mean
    log-probability of the answer's tokens, teacher-forced (ties go to the earlier input; `with_confidence`), in
    their order, each with its `confidence`; and the counts for `label_stats.json`. Every row, and no counts, at a
    ratio of 1. With `cfg.label_selection_strata` > 1 the share is kept within each group of inputs of like length
    (`surest_indices`)."""
    if cfg.label_selection_ratio >= 1 or not rows:
        return rows, {}
    rows = with_confidence(cfg, teacher, tokenizer, rows)
    confidence = [r["confidence"] for r in rows]
    keep = surest_count(cfg.label_selection_ratio, len(rows))
    strata = cfg.label_selection_strata
    chosen = surest_indices(confidence, keep, lengths=[len(r["input"]) for r in rows], strata=strata)
    finite = [c for c in confidence if math.isfinite(c)]
    counts = {"selection_ratio": cfg.label_selection_ratio, "selected": keep, "dropped_unsure": len(rows) - keep,
              **({"strata": strata} if strata > 1 else {}),
              "confidence_threshold": min(confidence[i] for i in chosen),
              "mean_confidence": sum(finite) / len(finite) if finite else None}
    return [rows[i] for i in chosen], counts


def describe_votes(stats: dict) -> str:
    """The labels stage's `label_stats.json` in words: one answer each, or the votes and what they agreed on."""
    if stats.get("votes", 1) == 1:
        text = f"{stats.get('labelled', 0)} answers"
    else:
        text = (f"{stats['votes']} teacher votes per input: agreement {stats['agreement']:.1%}, unanimous "
                f"{stats['unanimous']:.1%}, dropped {stats['dropped']} of {stats['labelled']}")
    if "selected" in stats:
        text += (f"; the surest {stats['selected']} kept ({stats['selection_ratio']:.0%}, "
                 f"{stats['dropped_unsure']} dropped"
                 + (f", a share in each of {stats['strata']} groups by length" if stats.get("strata") else "") + ")")
    return text
