"""Task and seed files, the prompt templates of the method, candidate parsing and deduplication.

The two templates follow the paper (Appendix):
- generator: `Here are 10 examples:\\n1. {seed1}\\n...\\n5. {seed5}\\n6.` — the model writes item 6;
- discriminator: `{x}\\nIs the above question from the {task name} dataset?` (inside the chat template when the
  model has one, preceded by "Answer in as few words as possible.").
"""

from __future__ import annotations

import json
import os
import random
import re
import unicodedata

from .errors import UserError


class DataError(UserError):
    """A task, seed or evaluation file that cannot be used as it is."""


def load_examples(path: str, *, require_target: bool = False, what: str = "task file") -> list[dict]:
    """Read a JSONL file of `{"input": ..., "target": ...}` rows (a `.json` list of such rows works too).

    Raises:
        `DataError`: naming the file, the line and the fix when the file is missing, a directory, unreadable, not
        UTF-8, empty or malformed.
    """
    text = _read_text(path, what)
    rows = []
    if path.endswith(".json") and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"The {what} {path!r} is not valid JSON ({e}).") from None
        numbered = list(enumerate(rows, start=1))
    else:
        numbered = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"Line {i} of the {what} {path!r} is not valid JSON ({e.msg}): each line must be an object like "
                    '{"input": "...", "target": "..."}.'
                ) from None
    examples = []
    for i, row in numbered:
        if not isinstance(row, dict) or not isinstance(row.get("input"), str):
            raise DataError(f"Line {i} of the {what} {path!r} has no string 'input' field: use {{\"input\": \"...\"}}.")
        target = row.get("target")
        if isinstance(target, (int, float)) and not isinstance(target, bool):
            target = str(target)  # numbers are common answers in hand-made files
        if require_target and not isinstance(target, str):
            raise DataError(f"Line {i} of the {what} {path!r} has no string 'target' field, which is needed here.")
        examples.append({"input": row["input"], **({"target": target} if target is not None else {})})
    if not examples:
        raise DataError(f"The {what} {path!r} holds no examples.")
    return examples


def _read_text(path: str, what: str) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped), or a `DataError` that says what to fix."""
    if path and os.path.isdir(path):
        raise DataError(f"The {what} {path!r} is a directory: give the path of a JSONL file with one JSON object per line.")
    if not path or not os.path.isfile(path):
        raise DataError(f"The {what} {path!r} does not exist: give the path of a JSONL file with one JSON object per line.")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except PermissionError:
        raise DataError(f"The {what} {path!r} cannot be read (permission denied): check its permissions.") from None
    except OSError as e:
        raise DataError(f"The {what} {path!r} cannot be read ({e.strerror}).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"The {what} {path!r} is not UTF-8 text: byte {raw[e.start]:#04x} at offset {e.start} (line {line}) "
            "cannot be decoded. Save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`, or your editor's "
            "'Save with encoding')."
        ) from None
    return text.removeprefix("\ufeff")  # Windows editors write a BOM, which json.loads refuses


def load_seeds(path: str, num_seeds: int) -> list[str]:
    """The seed inputs D̄ (the first `num_seeds` inputs of the file).

    Raises:
        `DataError`: when the file is missing or malformed, or holds fewer distinct inputs than `num_seeds`.
    """
    inputs = list(dict.fromkeys(e["input"] for e in load_examples(path, what="seed file")))
    if len(inputs) < num_seeds:
        raise DataError(
            f"The seed file {path!r} holds {len(inputs)} distinct inputs but num_seeds={num_seeds}: add seeds to "
            f"the file or lower num_seeds."
        )
    return inputs[:num_seeds]


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def task_prompt(tokenizer, text: str, template: str = "{input}\nAnswer:") -> str:
    """How a task input is put to a model (teacher, student, evaluation): the chat template when there is one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return template.format(input=text)


def generator_prompt(seeds: list[str], rng: random.Random, k: int | None = None) -> str:
    """The numbered-list prompt with the seeds shuffled; the model continues with the next item.

    With `k` smaller than the number of seeds, each prompt shows a random `k` of them (used when the data owner
    makes the discriminator's negatives from a pool of real inputs).
    """
    order = rng.sample(list(seeds), k) if k is not None and k < len(seeds) else list(seeds)
    rng.shuffle(order)
    lines = [f"Here are {2 * len(order)} examples:"] + [f"{i}. {s}" for i, s in enumerate(order, start=1)]
    return "\n".join(lines) + f"\n{len(order) + 1}."


def generator_stop_strings(seeds: list[str], k: int | None = None) -> list[str]:
    """Where the generator's item ends: at the number of the item after it (the prompt shows `k` of the seeds)."""
    shown = len(seeds) if k is None else min(len(seeds), k)
    return [f"\n{shown + 2}."]


_NEXT_ITEM = re.compile(r"\n\s*\d+\s*[.)]")


def parse_candidate(generated: str, *, finished: bool, max_chars: int = 1000) -> str | None:
    """Item N+1 out of the generator's continuation, or `None` when it cannot be used.

    The item ends where the next numbered item starts. A continuation that reached neither a next item nor the
    end of sequence was cut by the token limit: the item may be incomplete, so it is dropped as over-long.
    """
    match = _NEXT_ITEM.search(generated)
    if match:
        item = generated[: match.start()]
    elif finished:
        item = generated
    else:
        return None
    item = item.strip()
    if not item or len(item) > max_chars:
        return None
    return item


def discriminator_prompt(tokenizer, text: str, task_name: str) -> str:
    question = f"{text}\nIs the above question from the {task_name} dataset?"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": "Answer in as few words as possible.\n" + question}],
            tokenize=False,
            add_generation_prompt=True,
        )
    return question


# ---------------------------------------------------------------------------------------------------------------
# Deduplication


def duplicate_key(text: str) -> str:
    """Case- and whitespace-insensitive form used for duplicate checks (Unicode-normalized).

    Punctuation is kept, each mark as a word of its own: in many tasks it is the content (brackets, operators), so
    `( [ {` and `( { [` are two inputs while `( [` and `([` are one.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"([^\w\s])", r" \1 ", text).split())


class Deduplicator:
    """Remembers what was seen; drops exact and normalized duplicates and copies of the seeds."""

    def __init__(self, seeds: list[str] = ()):
        self.seeds = {duplicate_key(s) for s in seeds}
        self.seen: set[str] = set()
        self.dropped = {"duplicate": 0, "seed_copy": 0}

    def add(self, text: str) -> bool:
        key = duplicate_key(text)
        if key in self.seeds:
            self.dropped["seed_copy"] += 1
            return False
        if key in self.seen:
            self.dropped["duplicate"] += 1
            return False
        self.seen.add(key)
        return True
