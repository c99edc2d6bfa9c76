"""Labelling: the teacher (source base + adapter) answers every accepted input; self-consistency when asked."""

from __future__ import annotations

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


def describe_votes(stats: dict) -> str:
    """The labels stage's `label_stats.json` in words: one answer each, or the votes and what they agreed on."""
    if stats.get("votes", 1) == 1:
        text = f"{stats.get('labelled', 0)} answers"
    else:
        text = (f"{stats['votes']} teacher votes per input: agreement {stats['agreement']:.1%}, unanimous "
                f"{stats['unanimous']:.1%}, dropped {stats['dropped']} of {stats['labelled']}")
    if "selected" in stats:
        text += (f"; the surest {stats['selected']} kept ({stats['selection_ratio']:.0%}, "
                 f"{stats['dropped_unsure']} dropped)")
    return text
