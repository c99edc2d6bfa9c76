"""What pulling, cards and pushing share: the file allow-lists, the card section markers, the keys a card
accepts, `HubError`, and small helpers."""

from __future__ import annotations

import os
import shutil
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..errors import UserError

# Weights that unpickle arbitrary code on load: never pulled by default, never pushed.
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]
# What an adapter / discriminator push may upload (top-level files only).
ADAPTER_FILES = [
    "adapter_config.json",
    "*.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
]
TAGS = ["peft", "trans-lora", "peft-transfer"]
SECTION_START = "<!-- peft-transfer:start (this section is rewritten on every push; edit outside it) -->"
SECTION_END = "<!-- peft-transfer:end -->"
_START_PREFIX = "<!-- peft-transfer:start"

LINEAGE_KEYS = {
    "source_model", "source_model_revision", "source_adapter", "source_adapter_revision", "target_model",
    "target_model_revision", "discriminator", "generator", "task_name", "num_seeds", "num_accepted",
    "num_candidates", "acceptance_rate", "kd_loss", "loss", "peft_type", "chain",  # "loss": older lineages
}  # fmt: skip
EVALUATION_KEYS = {"source_adapter", "target_base", "transferred", "num_samples"}
DISCRIMINATOR_KEYS = {
    "base_model", "base_model_revision", "task_name", "num_positives", "num_negatives", "accuracy", "roc_auc",
    "num_eval_samples", "peft_type",
}  # fmt: skip
DATASET_KEYS = {
    "task_name", "generator", "discriminator", "teacher", "num_seeds", "num_accepted", "num_candidates",
    "acceptance_rate", "num_rows", "target_model",
}  # fmt: skip


class HubError(UserError):
    """A Hub reference could not be resolved or pushed; the message names the problem and the fix."""



# ---------------------------------------------------------------------------------------------- helpers
def _check_keys(mapping: dict, allowed: set[str], name: str, required: tuple[str, ...] = ()) -> None:
    if not isinstance(mapping, dict):
        raise TypeError(f"{name} must be a dict, got {type(mapping).__name__}.")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ValueError(f"Unknown {name} keys {unknown}; expected some of {sorted(allowed)}.")
    missing = [key for key in required if not mapping.get(key)]
    if missing:
        raise ValueError(f"{name} needs {missing}.")


def _is_repo_id(ref: str) -> bool:
    """A Hub id (not a local path): only those may go into `base_model` metadata."""
    if os.path.exists(os.path.expanduser(ref)) or ref.count("/") > 1:
        return False
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


def _type_tag(peft_type: str) -> str:
    return str(peft_type).lower().replace("_", "-")


def _pct(x: float) -> str:
    return f"{100 * float(x):.1f}%"


def _fmt(x) -> str:
    return f"{x:,}" if isinstance(x, int) else str(x)


def _ref(name: str | None, revision: str | None) -> str:
    if not name:
        return "—"
    return f"`{name}`" + (f" @ `{revision}`" if revision else "")


def _lineage_table(lineage: dict) -> list[str]:
    rows = [
        ("source base model", _ref(lineage.get("source_model"), lineage.get("source_model_revision"))),
        ("source adapter", _ref(lineage.get("source_adapter"), lineage.get("source_adapter_revision"))),
        ("target base model", _ref(lineage["target_model"], lineage.get("target_model_revision"))),
        ("discriminator", _ref(lineage.get("discriminator"), None)),
        ("generator", _ref(lineage.get("generator"), None)),
        ("task", _ref(lineage.get("task_name"), None)),
        ("seed examples", lineage.get("num_seeds")),
        ("accepted / candidates", _accepted(lineage)),
        ("acceptance rate", _rate(lineage)),
        ("distillation loss", lineage.get("kd_loss", lineage.get("loss"))),  # "loss" in older lineages
        ("PEFT type", lineage.get("peft_type")),
    ]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v not in (None, "—")]


def _accepted(lineage: dict) -> str | None:
    accepted, candidates = lineage.get("num_accepted"), lineage.get("num_candidates")
    if accepted is None and candidates is None:
        return None
    return f"{_fmt(accepted) if accepted is not None else '?'} / {_fmt(candidates) if candidates is not None else '?'}"


def _rate(lineage: dict) -> str | None:
    rate = lineage.get("acceptance_rate")
    if rate is None and lineage.get("num_accepted") is not None and lineage.get("num_candidates"):
        rate = lineage["num_accepted"] / lineage["num_candidates"]
    return None if rate is None else _pct(rate)


def _hop_summary(hop: dict) -> str:
    text = (f"{_ref(hop.get('source_model'), hop.get('source_model_revision'))} + adapter "
            f"{_ref(hop.get('source_adapter'), hop.get('source_adapter_revision'))} → "
            f"{_ref(hop.get('target_model'), hop.get('target_model_revision'))}")  # fmt: skip
    extras = [f"discriminator {_ref(hop['discriminator'], None)}" if hop.get("discriminator") else None,
              f"accepted / candidates {_accepted(hop)}" if _accepted(hop) else None,
              f"acceptance rate {_rate(hop)}" if _rate(hop) else None]  # fmt: skip
    extras = [e for e in extras if e]
    return text + (f" ({', '.join(extras)})" if extras else "")


def _load_snippet(target: str, repo_id: str, lineage: dict) -> list[str]:
    rev = lineage.get("target_model_revision")
    base_args = f'"{target}"' + (f', revision="{rev}"' if rev else "")
    return [
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({base_args})",
        f'model = PeftModel.from_pretrained(base, "{repo_id}")',
        f"tokenizer = AutoTokenizer.from_pretrained({base_args})",
        "```",
    ]


def _section(text: str) -> str:
    return f"{SECTION_START}\n{text.rstrip()}\n{SECTION_END}\n"


def _extract_section(text: str) -> str | None:
    start = text.find(_START_PREFIX)
    end = text.find(SECTION_END, start)
    if start == -1 or end == -1:
        return None
    return text[start : end + len(SECTION_END)] + "\n"


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch(name, pattern) for pattern in patterns)


def _walk(folder: str):
    for _, _, names in os.walk(folder):
        yield from names


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # no symlinks (some Windows setups): copy instead
        shutil.copyfile(src, dst)
