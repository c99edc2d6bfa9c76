"""Procedurally generated tasks for the trained-here quality benchmark.

No pretrained LLM can be downloaded here, so the benchmark trains tiny base models from scratch and measures
Trans-LoRA's claims on tasks made up below. Each task family has two faces:

- the **specific** variant *is* the task: one fixed question template, one range of numbers, one typical
  length, one answer format. Its samples fill `Task.train` / `Task.test`. Because the template is fixed, real
  inputs can be told apart from a generator's imitations, which is what the discriminator has to learn.
- **generic** variants teach the same skill in other formats (other phrasings, separators, ranges, answer
  styles). Only these go into the pretraining corpus (`peft_transfer/worlds/corpus.py`), so base models get partial
  skill on the family without ever seeing the specific template or any of its train/test inputs.

`TaskFamily.specific_pattern` is a regex that every specific input matches and no generic input does; the
tests check both halves, which is what keeps the corpus from leaking the task's format.

Every input is one line of at most `MAX_INPUT_CHARS` characters and every target one line of at most
`MAX_TARGET_CHARS`: the models are character-level or small-BPE with a context of at most 256 tokens. Targets
are deterministic functions of the input (no hidden state), so exact match is a fair metric.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..data import load_examples
from .samplers import (
    _BOOLEAN_GENERIC,
    _COUNT_GENERIC,
    _DYCK_GENERIC,
    _GRID_GENERIC,
    _LAST_LETTERS_GENERIC,
    _REVERSE_GENERIC,
    _SORT_LETTERS_GENERIC,
    _SORT_NUMBERS_GENERIC,
    _WEEKDAY_GENERIC,
    MAX_INPUT_CHARS,
    MAX_TARGET_CHARS,
    WEEKDAYS,
    Sample,
    Sampler,
    _arith_chain,
    _arith_group,
    _arith_plain,
    _arith_specific,
    _arith_words,
    _boolean_specific,
    _count_specific,
    _dyck_specific,
    _grid_specific,
    _last_letters_specific,
    _reverse_specific,
    _sort_letters_specific,
    _sort_numbers_specific,
    _weekday_specific,
)

# ---------------------------------------------------------------------------------------------------------------
# the families


@dataclass(frozen=True)
class TaskFamily:
    """One skill: the specific task that defines it and the generic variants the corpus may show.

    Args:
        name (`str`): the task's identifier (`TASKS` key, folder name).
        description (`str`): a short human task name, used in the discriminator prompt
            (`"... from the {description} dataset?"`).
        specific (`Callable[[random.Random], tuple[str, str]]`): draws one `(input, target)` of the task itself.
        generic_formats (`tuple[Callable, ...]`): samplers of the same skill in other formats.
        specific_pattern (`str`): a regex (`re.fullmatch`) that every specific input matches and no generic
            input does.
    """

    name: str
    description: str
    specific: Sampler
    generic_formats: tuple[Sampler, ...]
    specific_pattern: str

    def sample_specific(self, rng: random.Random) -> Sample:
        return _within_limits(self.specific, rng)

    def sample_generic(self, rng: random.Random, fmt: int | None = None) -> Sample:
        """One generic `(input, target)`; `fmt` picks a format (index into `generic_formats`), else random."""
        if fmt is None:
            fmt = rng.randrange(len(self.generic_formats))
        return _within_limits(self.generic_formats[fmt], rng)

    def is_specific(self, text: str) -> bool:
        return re.fullmatch(self.specific_pattern, text) is not None


def _within_limits(sampler: Sampler, rng: random.Random) -> Sample:
    # A few renderings (deep boolean trees) can run long; redraw rather than truncate, which would break the
    # answer's dependence on the input.
    for _ in range(1000):
        x, y = sampler(rng)
        if len(x) <= MAX_INPUT_CHARS and 0 < len(y) <= MAX_TARGET_CHARS and "\n" not in x + y:
            return x, y
    raise RuntimeError(f"sampler {sampler} keeps producing samples outside the length limits")


_W = "(?:" + "|".join(WEEKDAYS) + ")"
TASKS: dict[str, TaskFamily] = {
    f.name: f
    for f in (
        TaskFamily("boolean_expressions", "boolean expressions", _boolean_specific, _BOOLEAN_GENERIC,
                   r"(?:(?:not|\(|\)|True|False|and|or) )+is"),
        TaskFamily("multistep_arithmetic", "multistep arithmetic", _arith_specific,
                   (_arith_plain, _arith_chain, _arith_words, _arith_group),
                   r"\(\(-?\d (?:[-+*]) -?\d\) (?:[-+*]) \(-?\d (?:[-+*]) -?\d\)\) ="),
        TaskFamily("sort_letters", "sort letters", _sort_letters_specific, _SORT_LETTERS_GENERIC,
                   r"Sort these letters: [a-z](?: [a-z]){4,7}"),
        TaskFamily("sort_numbers", "sort numbers", _sort_numbers_specific, _SORT_NUMBERS_GENERIC,
                   r"Sort ascending: \d\d(?: \d\d){3,5}"),
        TaskFamily("count_letters", "count letters", _count_specific, _COUNT_GENERIC,
                   r"In [abcd]{8,16}, how many [abcd]'s\?"),
        TaskFamily("dyck_languages", "dyck languages", _dyck_specific, _DYCK_GENERIC,
                   r"Complete the brackets: [\[\](){}<>](?: [\[\](){}<>])*"),
        TaskFamily("weekday_arithmetic", "weekday arithmetic", _weekday_specific, _WEEKDAY_GENERIC,
                   rf"Today is {_W}\. What day is it \d+ days from now\?"),
        TaskFamily("reverse_word", "reverse word", _reverse_specific, _REVERSE_GENERIC,
                   r"Spell '[a-z]+' backwards\."),
        TaskFamily("grid_walk", "grid walk", _grid_specific, _GRID_GENERIC,
                   r"Robot at \(0,0\) moves [NESW](?:,[NESW])*\. Final spot\?"),
        TaskFamily("last_letters", "last letters", _last_letters_specific, _LAST_LETTERS_GENERIC,
                   r"Take the last letter of each word: [a-z]+(?: [a-z]+)*"),
    )
}


def list_tasks() -> list[str]:
    """The names of the procedural task families, in benchmark order."""
    return list(TASKS)


# ---------------------------------------------------------------------------------------------------------------
# tasks: made here, or read from JSONL files


@dataclass
class Task:
    """A task as the transfer sees it: real train/test data and the few seeds kept for transfer time.

    Args:
        name (`str`): identifier, also the folder name `write_task` uses.
        description (`str`): short human task name for the discriminator prompt.
        train (`list[dict]`): `{"input": str, "target": str}` samples (the paper: 250).
        test (`list[dict]`): held-out samples, disjoint from `train` by input.
        seeds (`list[dict]`): `n_seeds` samples taken from `train` (the only real data at transfer time).
    """

    name: str
    description: str
    train: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    seeds: list[dict] = field(default_factory=list)


def _pick_seeds(train: list[dict], n_seeds: int, rng: random.Random) -> list[dict]:
    if not 0 <= n_seeds <= len(train):
        raise ValueError(f"n_seeds={n_seeds} must be between 0 and the number of train samples ({len(train)})")
    return [dict(train[i]) for i in sorted(rng.sample(range(len(train)), n_seeds))]


def make_task(name: str, *, n_train: int = 250, n_test: int = 500, n_seeds: int = 5, seed: int = 0) -> Task:
    """Draws a procedural task: `n_train` + `n_test` distinct inputs of the family's specific variant.

    Deterministic for a given `(name, seed)` (string seeding of `random.Random` does not depend on
    `PYTHONHASHSEED`). Inputs are unique across both splits, so train and test are disjoint by input.
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got n_train={n_train}, n_test={n_test}")
    family = TASKS[name]
    rng = random.Random(f"{name}:{seed}")
    wanted, seen, samples = n_train + n_test, set(), []
    budget = 50 * wanted + 1000
    for _ in range(budget):
        if len(samples) == wanted:
            break
        x, y = family.sample_specific(rng)
        if x not in seen:
            seen.add(x)
            samples.append({"input": x, "target": y})
    if len(samples) < wanted:
        raise ValueError(f"task {name!r} produced only {len(samples)} distinct inputs of the {wanted} asked for")
    train, test = samples[:n_train], samples[n_train:]
    assert not {s["input"] for s in train} & {s["input"] for s in test}, "train and test share inputs"
    return Task(name, family.description, train, test, _pick_seeds(train, n_seeds, rng))


def load_task_files(
    train_file: str | Path,
    test_file: str | Path,
    *,
    name: str | None = None,
    n_seeds: int = 5,
    seed: int = 0,
    seeds_file: str | Path | None = None,
) -> Task:
    """Reads a task from JSONL files of `{"input": ..., "target": ...}` lines.

    Args:
        train_file, test_file (`str` or `Path`): the two splits.
        name (`str`, *optional*): defaults to the train file's folder name. The description is the name with
            underscores as spaces.
        n_seeds (`int`, *optional*, defaults to 5): seeds drawn from train when no `seeds_file` is given.
        seed (`int`, *optional*, defaults to 0): for drawing the seeds.
        seeds_file (`str` or `Path`, *optional*): fixed seeds (as `write_task` writes them).
    """
    train_path, test_path = Path(train_file), Path(test_file)
    train, test = (load_examples(str(p), require_target=True) for p in (train_path, test_path))
    name = name or train_path.resolve().parent.name
    if seeds_file is not None:
        seeds = load_examples(str(seeds_file), require_target=True)
    else:
        seeds = _pick_seeds(train, n_seeds, random.Random(f"{name}:seeds:{seed}"))
    overlap = {s["input"] for s in train} & {s["input"] for s in test}
    if overlap:
        warnings.warn(f"{len(overlap)} inputs appear in both {train_path} and {test_path}; test scores will be optimistic")
    return Task(name, name.replace("_", " "), train, test, seeds)


def write_task(task: Task, folder: str | Path) -> Path:
    """Writes `train.jsonl`, `test.jsonl` and `seeds.jsonl` into `folder` (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test", "seeds"):
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for s in getattr(task, split):
                f.write(json.dumps({"input": s["input"], "target": s["target"]}, ensure_ascii=False) + "\n")
    return folder
