"""Stages 3–5: generate candidates from shuffled seeds, filter them with the discriminator, label them with the teacher.

Generate-and-filter repeats in rounds until `num_samples` candidates are accepted or `candidate_budget` prompts are
spent, then stops with an error that gives the acceptance rate — never an endless loop. Each round's results are
appended to a progress file, so an interrupted run continues where it stopped and a failed one keeps what it made.
Under `accelerate launch` every process generates and scores a shard of each round, and all of them hold the
gathered results; only the main process writes.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .data import Deduplicator, generator_prompt, generator_stop_strings, parse_candidate, task_prompt
from .discriminator import score
from .errors import UserError
from .distributed import is_main_process, map_across_processes, state
from .generation import cut_answer, generate
from .metrics import filter_leaks


class SynthesisError(UserError):
    """Generate-and-filter could not collect enough samples. `rows` and `stats` hold what was generated, scored and
    accepted until then (the progress file has the same on disk)."""

    def __init__(self, message: str, rows: list[dict] | None = None, stats: SynthesisStats | None = None):
        super().__init__(message)
        self.rows, self.stats = rows or [], stats


@dataclass
class SynthesisStats:
    candidates: int = 0  # generator prompts spent (the budget counts these)
    unparsable: int = 0  # continuations without a usable item (empty, cut by the token limit, too long)
    duplicates: int = 0
    seed_copies: int = 0
    leaks: int = 0  # near-copies of a seed or held-out real input, dropped by the privacy guard
    scored: int = 0  # candidates that reached the filter
    accepted: int = 0
    rounds: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.scored if self.scored else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate}


def _round_size(cfg, need: int, stats: SynthesisStats, budget: int) -> int:
    rate = stats.acceptance_rate if stats.scored else 0.5
    usable = 1 - (stats.unparsable + stats.duplicates + stats.seed_copies + stats.leaks) / max(stats.candidates, 1)
    want = math.ceil(need / max(rate * max(usable, 0.05), 0.02))
    size = min(max(want, cfg.generation_batch_size), 8 * cfg.generation_batch_size)
    return min(size, budget - stats.candidates)


def synthesize(cfg, generator, generator_tokenizer, seeds: list[str], *, discriminator=None,
               discriminator_tokenizer=None, num_samples: int | None = None, candidate_budget: int | None = None,
               references: list[str] | None = None, progress_path: str | None = None, show_progress: bool = True):
    """Collect `num_samples` accepted synthetic inputs.

    Args:
        cfg (`TransferConfig`): sampling, budget, filter and seed settings.
        generator, generator_tokenizer: the model that writes candidates (default: the target base).
        seeds (`list[str]`): the seed inputs D̄.
        discriminator, discriminator_tokenizer: the filter; without one every parsed candidate is accepted
            (the unfiltered ablation, and how the discriminator's negatives are made).
        num_samples, candidate_budget (`int`, *optional*): override the config's.
        references (`list[str]`, *optional*): real inputs (seeds, held-out data) that no candidate may reproduce
            nearly (`cfg.leak_threshold`); near-copies are dropped before scoring and counted as `leaks`.
        progress_path (`str`, *optional*): JSONL file of every scored candidate so far; read back on resume.

    Returns:
        `(rows, stats)`: one row per scored candidate (`input`, `score`, `passed`, `accepted`, `round`) and the counts.

    Raises:
        `SynthesisError`: the generator's output never parses, or the budget ran out before enough were accepted.
    """
    use_filter = discriminator is not None
    num_samples = num_samples or cfg.num_samples
    budget = candidate_budget or cfg.candidate_budget
    stats, rows = SynthesisStats(), []
    dedup = Deduplicator(seeds)
    if progress_path and os.path.exists(progress_path):
        with open(progress_path) as f:
            saved = [json.loads(line) for line in f if line.strip()]
        for rec in saved:
            if "stats" in rec:
                stats = SynthesisStats(**rec["stats"])
            else:
                rows.append(rec)
                dedup.add(rec["input"])
        rows = [r for r in rows if r["round"] < stats.rounds]  # rows of a round whose stats line is missing are redone
        # The verdicts are re-taken from the stored scores, so a start with another margin reuses the candidates.
        stats.accepted = 0
        for r in rows:
            r["passed"] = r["score"] is None or r["score"] > cfg.filter_margin
            r["accepted"] = r["passed"] and stats.accepted < num_samples
            stats.accepted += r["accepted"]
    stop = generator_stop_strings(seeds, cfg.num_seeds)
    while stats.accepted < num_samples and stats.candidates < budget:
        round_rng = random.Random(cfg.seed * 100_003 + stats.rounds)
        # Every process builds the same prompts; each samples its shard with its own stream.
        torch.manual_seed(cfg.seed * 100_003 + stats.rounds + 7_919 * state().process_index)
        n = _round_size(cfg, num_samples - stats.accepted, stats, budget)
        prompts = [generator_prompt(seeds, round_rng, cfg.num_seeds) for _ in range(n)]
        outputs = map_across_processes(lambda shard: generate(
            generator, generator_tokenizer, shard, batch_size=cfg.generation_batch_size,
            max_new_tokens=cfg.max_candidate_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
            top_p=cfg.top_p, top_k=cfg.top_k, stop_strings=stop,
            desc=f"generate (round {stats.rounds + 1})", show_progress=show_progress and is_main_process(),
        ), prompts)
        stats.candidates += n
        fresh = []
        before = dict(dedup.dropped)
        for text, finished in outputs:
            item = parse_candidate(text, finished=finished, max_chars=cfg.max_candidate_chars)
            if item is None:
                stats.unparsable += 1
            elif dedup.add(item):
                fresh.append(item)
        stats.duplicates += dedup.dropped["duplicate"] - before["duplicate"]
        stats.seed_copies += dedup.dropped["seed_copy"] - before["seed_copy"]
        if references and cfg.leak_threshold is not None and fresh:
            fresh, leaked = filter_leaks(fresh, references, threshold=cfg.leak_threshold)
            stats.leaks += len(leaked)
        if use_filter:
            scores = np.asarray(map_across_processes(lambda shard: score(
                discriminator, discriminator_tokenizer, shard, cfg.task_name, batch_size=cfg.filter_batch_size,
                desc="filter", show_progress=show_progress and is_main_process()).tolist(), fresh), dtype=np.float32)
        else:
            scores = np.full(len(fresh), np.inf, dtype=np.float32)
        new_rows = []
        for item, s in zip(fresh, scores):
            passed = bool(s > cfg.filter_margin)
            ok = passed and stats.accepted < num_samples  # a round may pass more than are still needed
            stats.accepted += ok
            new_rows.append({"input": item, "score": float(s) if np.isfinite(s) else None, "passed": passed,
                             "accepted": ok, "round": stats.rounds})
        stats.scored += len(fresh)
        stats.rounds += 1
        rows.extend(new_rows)
        if progress_path and is_main_process():
            with open(progress_path, "a") as f:
                for r in new_rows:
                    f.write(json.dumps(r) + "\n")
                f.write(json.dumps({"stats": {k: v for k, v in asdict(stats).items()}}) + "\n")
        parsed = stats.candidates - stats.unparsable
        if stats.candidates >= max(2 * cfg.generation_batch_size, 64) and parsed < 0.01 * stats.candidates:
            raise SynthesisError(
                f"The generator's output (almost) never parsed into a candidate: {parsed} of {stats.candidates} "
                f"continuations of the numbered-list prompt gave a usable item {min(len(seeds), cfg.num_seeds) + 1} "
                f"(the others were empty, or cut at max_candidate_tokens={cfg.max_candidate_tokens} before the item "
                "ended). Use a base (not chat-only) model that continues numbered lists as `generator_model`, or "
                "raise `max_candidate_tokens`.", rows, stats
            )
    if stats.accepted < num_samples:
        raise SynthesisError(
            f"Only {stats.accepted} of num_samples={num_samples} candidates were accepted after spending the "
            f"candidate_budget of {budget} ({stats.scored} scored, acceptance rate "
            f"{stats.acceptance_rate:.1%}, {stats.unparsable} unparsable, {stats.duplicates} duplicates, "
            f"{stats.leaks} near-copies of real inputs). Raise "
            "`candidate_budget`, lower `filter_margin` or `num_samples`, or check the discriminator (its held-out "
            "accuracy is in the run's discriminator/metrics.json). What was generated is kept"
            + (f" in {progress_path}, and a new start continues from it." if progress_path else "."), rows, stats
        )
    return rows, stats


def label(cfg, teacher, tokenizer, inputs: list[str], *, show_progress: bool = True) -> list[dict]:
    """The teacher's answers (greedy by default) as prompt/completion rows for distillation.

    The prompt is rendered with the *teacher's* tokenizer here; `completion` is the answer text up to the stop
    string, as the teacher wrote it, so that any student tokenizer can learn it (sequence-level KD).
    """
    prompts = [task_prompt(tokenizer, x, cfg.prompt_template) for x in inputs]
    outputs = map_across_processes(lambda shard: generate(
        teacher, tokenizer, shard, batch_size=cfg.generation_batch_size, max_new_tokens=cfg.label_max_new_tokens,
        do_sample=cfg.label_do_sample, stop_strings=[cfg.answer_stop] if cfg.answer_stop else None,
        desc="label", show_progress=show_progress and is_main_process(),
    ), prompts)
    rows = []
    for x, (text, _) in zip(inputs, outputs):
        completion = cut_answer(text, cfg.answer_stop, strip=False).rstrip()  # as written, leading space kept
        rows.append({"input": x, "completion": completion, "answer": completion.strip()})
    return rows
