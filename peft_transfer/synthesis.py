"""Synthesis: generate candidates from shuffled seeds and filter them with the discriminator, in rounds.

Generate-and-filter repeats in rounds until `num_samples` candidates are accepted or `candidate_budget` prompts are
spent, then stops with an error that gives the acceptance rate — never an endless loop. It stops early, with the
same error, once a quarter of the budget shows that the rest would not bring 80% of `num_samples`. Each round's
results are appended to a progress file, so an interrupted run continues where it stopped and a failed one keeps
what it made.
Under `accelerate launch` every process generates and scores a shard of each round, and all of them hold the
gathered results; only the main process writes.

The progress file is JSONL, one record a line:

    {"progress_key": {...}}                                       first line, when the caller gave a settings key
    {"input": ..., "score": ..., "passed": ..., "accepted": ..., "round": r}    one per scored candidate
    {"leak": ..., "round": r}                                     one per near-copy of a real input (dedup only)
    {"stats": {...}}                                              closes round r: the counts after it

Each round (its rows, leaks and stats line) is one write followed by an fsync, so a crash can tear only the tail
of the file; the next start drops a torn tail and any records after the last stats line (a round cut mid-way) and
redoes that round. Every round draws its prompts and sampling noise from `(seed, round)`, and the duplicate filter
is rebuilt from the stored rows and leaks, so a resumed run ends with the same rows and counts as one that was
never interrupted. The module is a little over 400 lines because the loop and the reading of its progress file are
one job: each decides what the other must record.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from .data import Deduplicator, generator_prompt, generator_stop_strings, parse_candidate
from .discriminator import score
from .distributed import is_main_process, map_across_processes, state
from .errors import UserError
from .generation import PromptCache, generate
from .metrics import filter_leaks, leak_threshold_for

logger = logging.getLogger(__name__)

# Prompt orders of the seeds up to which a synthesis keeps the prompts its generator has read (`PromptCache`, at most
# 1 GiB of keys and values): the paper's 5 seeds have 120.
MAX_CACHED_ORDERS = 1024


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
    passed: int = 0  # scored candidates above the margin; more than `accepted` when a round passes more than needed
    accepted: int = 0  # passed candidates kept (the first `num_samples`)
    near_duplicates: int = 0  # passed, but too like an accepted one in embedding space (`near_duplicate_similarity`)
    rounds: int = 0
    leak_threshold_raised: float | None = None  # the guard's threshold where `leak_threshold_for` raised it

    @property
    def acceptance_rate(self) -> float:
        """The filter's pass rate. Not accepted / scored: that falls whenever more pass than are needed."""
        return self.passed / self.scored if self.scored else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate}


@dataclass
class SynthesisSettings:
    """What `synthesize` and `label` read: the sampling, filter and labelling settings of a `TransferConfig` (the
    same names and defaults), without models or files. `SyntheticFilterCallback` keeps one; the pipeline passes its
    `TransferConfig`, which has every one of these fields. Build one with `from_config`."""

    task_name: str
    prompt_template: str
    num_seeds: int
    num_samples: int
    candidate_budget: int
    generation_batch_size: int
    filter_batch_size: int
    max_candidate_tokens: int
    max_candidate_chars: int | None
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    filter_mode: str
    filter_margin: float
    leak_threshold: float | None
    near_duplicate_similarity: float | None
    label_max_new_tokens: int
    label_do_sample: bool
    label_votes: int
    label_temperature: float
    label_min_agreement: float
    label_selection_ratio: float
    label_selection_strata: int
    answer_stop: str | None
    seed: int
    max_length: int

    @classmethod
    def from_config(cls, config=None, **overrides) -> "SynthesisSettings":
        """The settings of `config` (a `TransferConfig`; its defaults when None) with `overrides`, validated as a
        config's are (`TransferConfig.check_settings`: every field but the models and files a transfer needs)."""
        from dataclasses import MISSING

        from .config import TransferConfig

        if config is not None:
            values = config.to_dict(redact=False)
        else:
            values = {f.name: f.default if f.default is not MISSING else f.default_factory()
                      for f in fields(TransferConfig)}
        unknown = sorted(set(overrides) - set(values))
        if unknown:
            raise TypeError(f"Unknown settings {unknown}: use the names of `TransferConfig`'s fields.")
        values.update(overrides)
        TransferConfig.check_settings(values)
        return cls(**{f.name: values[f.name] for f in fields(cls)})


def _passes(s: float | None, margin: float) -> bool:
    # Compared as Python floats both when scoring and when re-taking verdicts from the file: numpy would compare a
    # float32 score with the margin rounded to float32, and a resumed run could then disagree at the boundary.
    return s is None or float(s) > margin


class _Verdicts:
    """Which passed candidates are accepted: the first `num_samples` in order, skipping (with
    `near_duplicate_similarity`) those whose embedding's cosine similarity to an already accepted one reaches it.

    A round's passed candidates are embedded as one batch, both when they are scored and when a resumed run re-takes
    the verdicts from the stored rows, so that both see the same numbers."""

    def __init__(self, cfg, num_samples: int, embed):
        self.threshold = getattr(cfg, "near_duplicate_similarity", None)
        if self.threshold is not None and embed is None:
            raise ValueError("near_duplicate_similarity needs an embedding function (`embed=`) in synthesize.")
        self.margin, self.num_samples, self.embed, self.kept = cfg.filter_margin, num_samples, embed, []

    def take(self, round_rows: list[dict], stats: SynthesisStats) -> None:
        """Set `passed`, `accepted` (and `near_duplicate`) of one round's rows in order, counting them in `stats`."""
        for r in round_rows:
            r["passed"] = _passes(r["score"], self.margin)
            r["accepted"] = False
            if self.threshold is not None:  # a column of its own only where the setting is on
                r["near_duplicate"] = False
        passed = [r for r in round_rows if r["passed"]]
        vectors = (self._unit(self.embed([r["input"] for r in passed]))
                   if self.threshold is not None and passed else None)
        for i, r in enumerate(passed):
            stats.passed += 1
            if stats.accepted >= self.num_samples:  # a round may pass more than are still needed
                continue
            if vectors is not None:
                if self.kept and float(np.max(np.stack(self.kept) @ vectors[i])) >= self.threshold:
                    r["near_duplicate"] = True
                    stats.near_duplicates += 1
                    continue
                self.kept.append(vectors[i])
            r["accepted"] = True
            stats.accepted += 1

    @staticmethod
    def _unit(vectors) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float64)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _round_size(cfg, need: int, stats: SynthesisStats, budget: int) -> int:
    rate = stats.acceptance_rate if stats.scored else 0.5
    usable = 1 - (stats.unparsable + stats.duplicates + stats.seed_copies + stats.leaks) / max(stats.candidates, 1)
    want = math.ceil(need / max(rate * max(usable, 0.05), 0.02))
    size = min(max(want, cfg.generation_batch_size), 8 * cfg.generation_batch_size)
    return min(size, budget - stats.candidates)


def _projected(stats: SynthesisStats, budget: int) -> int:
    """The number of candidates the whole budget would accept at the yield (accepted per candidate) so far."""
    return math.floor(stats.accepted / max(stats.candidates, 1) * budget)


def _out_of_reach(stats: SynthesisStats, num_samples: int, budget: int) -> bool:
    """Whether synthesis stops before its budget: a quarter of it (and two rounds) spent, and the yield so far would
    not reach 80% of `num_samples` with all of it. Accepted per candidate only falls as duplicates of earlier
    candidates mount, so the projection errs on the hopeful side; what was generated is kept either way."""
    return (stats.accepted < num_samples and stats.rounds >= 2 and 4 * stats.candidates >= budget
            and _projected(stats, budget) < 0.8 * num_samples)


def _append(path: str, records: list[dict]) -> None:
    # One write of the whole round, then fsync: a crash leaves at most a torn tail, which the next start cuts off.
    payload = "".join(json.dumps(r) + "\n" for r in records).encode()
    with open(path, "ab") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _differences(old, new: dict) -> str:
    if not isinstance(old, dict):
        return "it has no settings key"
    missing = object()
    changed = [k for k in dict.fromkeys([*old, *new]) if old.get(k, missing) != new.get(k, missing)]
    return ", ".join(f"{k}: {_short(old[k]) if k in old else '(unset)'} → {_short(new[k]) if k in new else '(unset)'}"
                     for k in changed)


def _move_aside(path: str) -> str:
    n = 1
    while os.path.exists(f"{path}.stale-{n}"):
        n += 1
    os.replace(path, f"{path}.stale-{n}")
    return f"{path}.stale-{n}"


def _read_progress(path: str, key: dict | None, write: bool) -> list[dict]:
    """The records of the complete rounds in `path` (header first, if any); `[]` to start afresh.

    A file made under another settings key is moved aside (main process only, as is every change to the file).
    A torn last line and the records of a round without its stats line are cut off, so that appending continues
    from the last complete round.

    Raises:
        `SynthesisError`: a line before the last one is not a JSON record (the file was damaged, not torn).
    """
    with open(path, "rb") as f:
        data = f.read()
    lines = []  # (line number, record or None, offset just past the line, ends with a newline)
    start = 0
    for number, raw in enumerate(data.split(b"\n"), 1):
        end = min(start + len(raw) + 1, len(data))
        if raw.strip():
            try:
                record = json.loads(raw)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError (a multi-byte character cut in two)
                record = None
            lines.append((number, record if isinstance(record, dict) else None, end, end > start + len(raw)))
        start = end
    if lines and lines[-1][1] is None:
        logger.warning("%s: line %d was cut off mid-write (the run was interrupted); it is ignored.",
                       path, lines.pop()[0])
    header = lines[0][1] if lines and lines[0][1] is not None and "progress_key" in lines[0][1] else None
    if key is not None and lines and (header is None or header["progress_key"] != key):
        old = header["progress_key"] if header else None
        if write:
            logger.warning("%s was made with other settings (%s); moved it to %s and synthesizing afresh.",
                           path, _differences(old, key), _move_aside(path))
        return []
    damaged = next((number for number, record, _, _ in lines if record is None), None)
    if damaged is not None:
        raise SynthesisError(
            f"The synthesis progress file {path} is damaged: line {damaged} is not a JSON record. Delete the file "
            "(or start with `overwrite`) to synthesize from scratch."
        )
    last = max((i for i, (_, record, _, _) in enumerate(lines) if "stats" in record), default=0 if header else -1)
    complete = lines[: last + 1]
    if len(lines) > len(complete):
        logger.warning("%s: round %d was interrupted after %d of its records; it is redone.", path,
                       lines[len(complete)][1].get("round", 0), len(lines) - len(complete))
    if write:
        cut = complete[-1][2] if complete else 0
        if cut < len(data) or (complete and not complete[-1][3]):
            with open(path, "r+b") as f:
                f.truncate(cut)
                if complete and not complete[-1][3]:  # a whole last record whose newline was lost
                    f.seek(cut)
                    f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
    return [record for _, record, _, _ in complete]


def synthesize(cfg, generator, generator_tokenizer, seeds: list[str], *, discriminator=None,
               discriminator_tokenizer=None, num_samples: int | None = None, candidate_budget: int | None = None,
               references: list[str] | None = None, progress_path: str | None = None,
               progress_key: dict | None = None, fresh: bool = False, show_progress: bool = True, embed=None):
    """Collect `num_samples` accepted synthetic inputs.

    Args:
        cfg (`TransferConfig`): sampling, budget, filter and seed settings.
        generator, generator_tokenizer: the model that writes candidates (default: the target base).
        seeds (`list[str]`): the seed inputs D̄.
        discriminator, discriminator_tokenizer: the filter; without one every parsed candidate is accepted
            (the unfiltered ablation, and how the discriminator's negatives are made).
        num_samples, candidate_budget (`int`, *optional*): override the config's.
        references (`list[str]`, *optional*): real inputs (seeds, held-out data) that no candidate may reproduce
            nearly (`cfg.leak_threshold`, raised by `leak_threshold_for` where real inputs overlap one another that
            much); near-copies are dropped before scoring and counted as `leaks`.
        progress_path (`str`, *optional*): JSONL file of every scored candidate so far; read back on resume (the
            format is in the module's docstring).
        progress_key (`dict`, *optional*): JSON-serialisable settings and input hashes that determine the
            candidates (generator, seeds, sampling, `seed`, references, discriminator...). Written as the file's
            first line; a file with another key (or none) is moved aside to `<progress_path>.stale-<n>` and
            synthesis starts afresh. Leave out `filter_margin`, `num_samples` and `candidate_budget`: a restart
            that changes only those reuses the stored candidates (the verdicts are re-taken from the stored scores,
            and a larger budget or sample count continues with more rounds).
        fresh (`bool`, *optional*, defaults to `False`): delete the progress file and start from nothing
            (`--overwrite`).
        embed (`Callable[[list[str]], array]`, *optional*): embeddings of texts, one row each; needed with
            `cfg.near_duplicate_similarity`, which drops a passed candidate too like an accepted one (cosine).

    Returns:
        `(rows, stats)`: one row per scored candidate (`input`, `score`, `passed`, `accepted`, `round`) and the counts.

    Raises:
        `SynthesisError`: the generator's output never parses, the budget ran out before enough were accepted, or
        the progress file is damaged.
    """
    use_filter = discriminator is not None
    num_samples = num_samples or cfg.num_samples
    budget = candidate_budget or cfg.candidate_budget
    guarded = bool(references) and cfg.leak_threshold is not None
    leak_threshold = leak_threshold_for(references, cfg.leak_threshold) if guarded else None
    raised = leak_threshold if guarded and leak_threshold != cfg.leak_threshold else None
    if raised is not None and progress_key is not None:  # candidates kept under another guard are not reused
        progress_key = {**progress_key, "leak_threshold_for_these_inputs": raised}
    key = json.loads(json.dumps(progress_key)) if progress_key is not None else None  # as it reads back
    write = progress_path is not None and is_main_process()
    records = []
    if progress_path and os.path.exists(progress_path):
        if fresh:
            if write:
                os.remove(progress_path)
        else:
            records = _read_progress(progress_path, key, write)
    header_due = key is not None and not records  # written with the first round, never alone

    stats, rows = SynthesisStats(), []
    dedup = Deduplicator(seeds)
    known = {f.name for f in fields(SynthesisStats)}
    for rec in records:
        if "stats" in rec:
            stats = SynthesisStats(**{k: v for k, v in rec["stats"].items() if k in known})
        elif "input" in rec:
            rows.append(rec)
            dedup.add(rec["input"])
        elif "leak" in rec:  # the original run's dedup saw it too; without it a redone round would differ
            dedup.add(rec["leak"])
    verdicts = _Verdicts(cfg, num_samples, embed)
    if rows:
        # The verdicts are re-taken from the stored scores, round by round, so a start with another margin (or
        # near-duplicate similarity) reuses the candidates; `passed` is recounted too (older files lack it).
        stats.passed = stats.accepted = stats.near_duplicates = 0
        for _, group in itertools.groupby(rows, key=lambda r: r["round"]):
            verdicts.take(list(group), stats)
    if stats.rounds and is_main_process():
        logger.info("synthesis resumed from %s: %d rounds, %d of %d accepted, %d candidates spent", progress_path,
                    stats.rounds, stats.accepted, num_samples, stats.candidates)

    stats.leak_threshold_raised = raised
    stop = generator_stop_strings(seeds, cfg.num_seeds)
    # Every round draws its prompts from the same orders of the seeds (120 for 5 of 5): those read in an earlier
    # round are not read again. Where the orders are too many to repeat, nothing is kept.
    orders = math.perm(len(seeds), min(cfg.num_seeds or len(seeds), len(seeds)))
    prompt_cache = PromptCache() if orders <= MAX_CACHED_ORDERS else None
    while stats.accepted < num_samples and stats.candidates < budget:
        round_rng = random.Random(cfg.seed * 100_003 + stats.rounds)
        # Every process builds the same prompts; each samples its shard with its own stream.
        torch.manual_seed(cfg.seed * 100_003 + stats.rounds + 7_919 * state().process_index)
        n = _round_size(cfg, num_samples - stats.accepted, stats, budget)
        prompts = [generator_prompt(seeds, round_rng, cfg.num_seeds) for _ in range(n)]
        outputs = map_across_processes(lambda shard: generate(
            generator, generator_tokenizer, shard, batch_size=cfg.generation_batch_size,
            max_new_tokens=cfg.max_candidate_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
            top_p=cfg.top_p, top_k=cfg.top_k, stop_strings=stop, prompt_cache=prompt_cache,
            desc=f"generate (round {stats.rounds + 1})", show_progress=show_progress and is_main_process(),
        ), prompts)
        stats.candidates += n
        unseen, leaked = [], []
        before = dict(dedup.dropped)
        for text, finished in outputs:
            item = parse_candidate(text, finished=finished, max_chars=cfg.max_candidate_chars)
            if item is None:
                stats.unparsable += 1
            elif dedup.add(item):
                unseen.append(item)
        stats.duplicates += dedup.dropped["duplicate"] - before["duplicate"]
        stats.seed_copies += dedup.dropped["seed_copy"] - before["seed_copy"]
        if leak_threshold is not None and unseen:
            unseen, leaked = filter_leaks(unseen, references, threshold=leak_threshold)
            stats.leaks += len(leaked)
        if use_filter:
            scores = np.asarray(map_across_processes(lambda shard: score(
                discriminator, discriminator_tokenizer, shard, cfg.task_name, batch_size=cfg.filter_batch_size,
                desc="filter", show_progress=show_progress and is_main_process()).tolist(), unseen), dtype=np.float32)
        else:
            scores = [None] * len(unseen)  # unfiltered: every candidate passes
        # A non-finite score stays one (json writes NaN/-Infinity).
        new_rows = [{"input": item, "score": None if s is None else float(s), "round": stats.rounds}
                    for item, s in zip(unseen, scores)]
        verdicts.take(new_rows, stats)
        stats.scored += len(unseen)
        leak_records = [{"leak": text, "round": stats.rounds} for text in leaked]
        stats.rounds += 1
        rows.extend(new_rows)
        if write:
            header = [{"progress_key": key}] if header_due else []
            _append(progress_path, header + new_rows + leak_records + [{"stats": asdict(stats)}])
            header_due = False
        parsed = stats.candidates - stats.unparsable
        if stats.candidates >= max(2 * cfg.generation_batch_size, 64) and parsed < 0.01 * stats.candidates:
            raise SynthesisError(
                f"The generator's output (almost) never parsed into a candidate: {parsed} of {stats.candidates} "
                f"continuations of the numbered-list prompt gave a usable item {min(len(seeds), cfg.num_seeds) + 1} "
                f"(the others were empty, or cut at max_candidate_tokens={cfg.max_candidate_tokens} before the item "
                "ended). Use a base (not chat-only) model that continues numbered lists as `generator_model`, or "
                "raise `max_candidate_tokens`.", rows, stats
            )
        if _out_of_reach(stats, num_samples, budget):
            break
    if stats.accepted < num_samples:
        spent = (f"after spending the candidate_budget of {budget}" if stats.candidates >= budget else
                 f"from the first {stats.candidates} of the candidate_budget of {budget}, at a rate that would "
                 f"give about {_projected(stats, budget)} by its end, so synthesis stopped there")
        raise SynthesisError(
            f"Only {stats.accepted} of num_samples={num_samples} candidates were accepted {spent} "
            f"({stats.scored} scored, {stats.passed} passed the filter: acceptance "
            f"rate {stats.acceptance_rate:.1%}; {stats.unparsable} unparsable, {stats.duplicates} duplicates, "
            f"{stats.seed_copies} copies of a seed, {stats.leaks} near-copies of real inputs). "
            + ("Most candidates repeated a seed of the prompt: raise `temperature` or `num_seeds`, or use another "
               "`generator_model`; or " if stats.seed_copies > stats.candidates / 2 else "")
            + "Raise `candidate_budget`, lower `filter_margin` or `num_samples`, or check the discriminator (its "
            "held-out accuracy is in the run's discriminator/metrics.json). What was generated is kept"
            + (f" in {progress_path}, and a new start continues from it." if progress_path else "."), rows, stats
        )
    return rows, stats
