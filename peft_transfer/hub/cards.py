"""Model and dataset cards: the transferred adapter's (lineage, counts, evaluation, lm-eval table, how to load it,
citation), the discriminator's and the synthetic dataset's; `merge_card` keeps the user's text and metadata."""

from __future__ import annotations

from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from ..citation import CITATION
from .common import (
    _START_PREFIX,
    DATASET_KEYS,
    DISCRIMINATOR_KEYS,
    EVALUATION_KEYS,
    LINEAGE_KEYS,
    SECTION_END,
    TAGS,
    _check_keys,
    _extract_section,
    _fmt,
    _hop_summary,
    _is_repo_id,
    _lineage_table,
    _load_snippet,
    _pct,
    _rate,
    _section,
    _type_tag,
)


# ---------------------------------------------------------------------------------------------- cards
def adapter_card(
    lineage: dict[str, Any], evaluation: dict[str, Any] | None = None, *, repo_id: str | None = None,
    lm_eval: dict[str, Any] | None = None,
) -> ModelCard:
    """Model card of a transferred adapter: lineage, synthetic-data counts, evaluation, how to load it, citation.

    Args:
        lineage (`dict`): keys from `LINEAGE_KEYS`; `target_model` is required. `chain` is a list of
            earlier hops (dicts of the same shape) for A -> B -> C transfers.
        evaluation (`dict`, *optional*): accuracies in [0, 1] for `source_adapter`, `target_base`,
            `transferred`, and `num_samples`.
        repo_id (`str`, *optional*): the repo the card goes to, for the loading snippet.
        lm_eval (`dict`, *optional*): lm-evaluation-harness results, `{model: {task: {metric: value}}}` for the
            three models (the evaluation stage's `lm_eval.json`).
    """
    _check_keys(lineage, LINEAGE_KEYS, "lineage", required=("target_model",))
    for i, hop in enumerate(lineage.get("chain") or []):
        _check_keys(hop, LINEAGE_KEYS - {"chain"}, f"lineage['chain'][{i}]")
    if evaluation is not None:
        _check_keys(evaluation, EVALUATION_KEYS, "evaluation")
        for key in ("source_adapter", "target_base", "transferred"):
            value = evaluation.get(key)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"evaluation[{key!r}] = {value!r}: accuracies are fractions in [0, 1].")
    from ..sources import notices, packaged_model

    target = lineage["target_model"]
    peft_type = lineage.get("peft_type")
    packaged_target = packaged_model(target)
    data = ModelCardData(
        library_name="peft",
        pipeline_tag="text-generation",
        tags=TAGS + ([_type_tag(peft_type)] if peft_type else []),
        **({"base_model": target} if _is_repo_id(target) else {}),
        # An adapter of a packaged base is used with that base: its licence is the one the user must follow.
        **({"license": packaged_target.license} if packaged_target else {}),
    )
    models = [lineage.get("source_model"), target] + [h.get(k) for h in lineage.get("chain") or []
                                                     for k in ("source_model", "target_model")]
    model_notices = notices(dict.fromkeys(m for m in models if m))

    lines = [f"# {repo_id.split('/')[-1] if repo_id else 'Transferred PEFT adapter'}", ""]
    task = lineage.get("task_name")
    lines += [
        "A PEFT adapter" + (f" (`{peft_type}`)" if peft_type else "") + f" for `{target}`"
        + (f" on the task `{task}`" if task else "")
        + ", transferred from an adapter trained for another base model with "
        "[Trans-LoRA](https://arxiv.org/abs/2405.17258) (`peft-transfer`): the target was distilled from the "
        "source adapter on synthetic inputs, filtered by a discriminator, without the original training data.",
        "",
        "## Lineage",
        "",
        *_lineage_table(lineage),
    ]
    if lineage.get("chain"):
        lines += ["", "### Earlier transfers (oldest first)", ""]
        for i, hop in enumerate(lineage["chain"], 1):
            lines.append(f"{i}. {_hop_summary(hop)}")
    if evaluation:
        lines += ["", "## Evaluation", ""]
        n = evaluation.get("num_samples")
        lines.append(f"Accuracy on {n} held-out real examples." if n else "Accuracy on held-out real examples.")
        lines += ["", "| model | accuracy |", "|---|---|"]
        rows = [("source base + source adapter", "source_adapter"), ("target base, no adapter", "target_base"),
                ("target base + this adapter (transferred)", "transferred")]  # fmt: skip
        lines += [f"| {name} | {_pct(evaluation[key])} |" for name, key in rows if evaluation.get(key) is not None]
    if lm_eval:
        from ..lm_evaluation import markdown_table

        lines += ["", "## lm-evaluation-harness", "", *markdown_table(lm_eval)]
    if model_notices:
        lines += ["", "## Licence notices of the base models", ""]
        lines += [f"- `{ref}`: {text}" for ref, text in model_notices.items()]
    lines += ["", "## How to load", "", *_load_snippet(target, repo_id or "<this repo id>", lineage)]
    body = _section("\n".join(lines) + "\n\n## Citation\n\n```bibtex\n" + CITATION + "\n```\n")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def discriminator_card(info: dict[str, Any], *, repo_id: str | None = None) -> ModelCard:
    """Model card of a discriminator adapter: base model, task name, training counts (never text), held-out
    `accuracy` / `roc_auc` when given, and a privacy note. `info` keys: `DISCRIMINATOR_KEYS`; `base_model`
    is required."""
    _check_keys(info, DISCRIMINATOR_KEYS, "info", required=("base_model",))
    base, task = info["base_model"], info.get("task_name")
    data = ModelCardData(
        library_name="peft",
        pipeline_tag="text-generation",
        tags=TAGS + ["discriminator"] + ([_type_tag(info["peft_type"])] if info.get("peft_type") else []),
        **({"base_model": base} if _is_repo_id(base) else {}),
    )
    rev = info.get("base_model_revision")
    lines = [
        f"# {repo_id.split('/')[-1] if repo_id else 'Trans-LoRA discriminator'}",
        "",
        f"A [Trans-LoRA](https://arxiv.org/abs/2405.17258) discriminator: a PEFT adapter on `{base}`"
        + (f" (revision `{rev}`)" if rev else "")
        + " that answers whether an input looks like it comes from the task"
        + (f" `{task}`" if task else "")
        + ". `peft-transfer` uses it to filter synthetic inputs when moving an adapter to a new base model: "
        'an input is kept when p("yes") > p("no") after the prompt '
        "`{x}\\nIs the above question from the {task name} dataset?`.",
        "",
        "## Training data (counts only)",
        "",
        "| | count |",
        "|---|---|",
    ]
    lines += [f"| {name} | {info[key]} |" for name, key in
              [("real task inputs (positives, 'yes')", "num_positives"),
               ("synthetic inputs from the base model (negatives, 'no')", "num_negatives")]
              if info.get(key) is not None]  # fmt: skip
    metrics = [(name, info[key]) for name, key in [("accuracy", "accuracy"), ("ROC AUC", "roc_auc")]
               if info.get(key) is not None]  # fmt: skip
    if metrics:
        n = info.get("num_eval_samples")
        title = "## Held-out evaluation" + (f" ({n} samples)" if n else "")
        lines += ["", title, "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics]
    lines += [
        "",
        "## Privacy",
        "",
        "This adapter was trained on private task data. It is pushed as a private repo by default; no "
        "training text (inputs, answers or seed examples) is included in this repo or this card, but the "
        "weights themselves derive from that data: share them as you would share the data.",
    ]
    body = _section("\n".join(lines) + "\n\n## Citation\n\n```bibtex\n" + CITATION + "\n```\n")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def synthetic_dataset_card(info: dict[str, Any], *, repo_id: str | None = None) -> DatasetCard:
    """Dataset card of a synthetic (generated, discriminator-filtered, teacher-labelled) dataset: models and
    counts only. `info` keys: `DATASET_KEYS`."""
    _check_keys(info, DATASET_KEYS, "info")
    data = DatasetCardData(tags=TAGS + ["synthetic"], task_categories=["text-generation"])
    rows = [("task", "task_name"), ("generator", "generator"), ("discriminator", "discriminator"),
            ("teacher (labels)", "teacher"), ("target base model", "target_model"),
            ("seed examples used", "num_seeds"), ("accepted inputs", "num_accepted"),
            ("candidates generated", "num_candidates"), ("rows", "num_rows")]  # fmt: skip
    lines = [
        f"# {repo_id.split('/')[-1] if repo_id else 'Trans-LoRA synthetic dataset'}",
        "",
        "Synthetic task inputs generated from a few seed examples, kept by a discriminator and answered by the "
        "teacher (source base + source adapter), as made by `peft-transfer` "
        "([Trans-LoRA](https://arxiv.org/abs/2405.17258)). The seed examples themselves are not included.",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {name} | {_fmt(info[key])} |" for name, key in rows if info.get(key) is not None]
    if _rate(info) is not None:
        lines.append(f"| acceptance rate | {_rate(info)} |")
    lines += ["", "## Privacy", "", "Generated to resemble private task data; pushed private by default."]
    body = _section("\n".join(lines) + "\n\n## Citation\n\n```bibtex\n" + CITATION + "\n```\n")
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def merge_card(existing: ModelCard | DatasetCard | None, new: ModelCard | DatasetCard) -> ModelCard | DatasetCard:
    """Update `existing` with `new`: our metadata keys win, the user's other keys and tags stay; the marked
    `peft-transfer` section of the text is replaced, everything outside it is kept (a card without the
    section gets ours appended after its text)."""
    if existing is None:
        return new
    metadata = existing.data.to_dict()
    ours = new.data.to_dict()
    tags = list(metadata.get("tags") or [])
    tags += [tag for tag in ours.pop("tags", []) or [] if tag not in tags]
    metadata.update(ours)
    metadata["tags"] = tags
    section = _extract_section(new.text) or new.text.strip() + "\n"
    text = existing.text
    start = text.find(_START_PREFIX)
    end = text.find(SECTION_END, start)
    if start != -1 and end != -1:
        text = text[:start] + section.rstrip("\n") + text[end + len(SECTION_END) :]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section
    data = type(new.data)(**metadata, ignore_metadata_errors=True)
    return type(new)(f"---\n{data.to_yaml()}\n---\n\n{text.lstrip()}", ignore_metadata_errors=True)
