"""Pull models and adapters from the Hugging Face Hub, and push transferred adapters, discriminators and
synthetic datasets back with model cards that record their lineage.

Everything goes through the ordinary `huggingface_hub` client (`snapshot_download`, `create_repo`,
`upload_folder`), so `HF_ENDPOINT`, `HF_TOKEN`, `hf auth login`, offline mode and the cache behave as a
Hugging Face user expects. Notable choices:

- Pushes upload an allow-list (adapter config, safetensors weights, tokenizer files, our README.md) from a
  staging folder of links, never the folder itself: seed files and anything else lying next to the adapter
  are never sent. Pickle weights (`*.bin`, `*.pt`) are neither pushed nor pulled.
- Discriminators and synthetic datasets derive from the private task data: they are pushed private unless
  `private=False` is given, and pushing them into an existing public repo is refused.
- Cards are merged, not overwritten: the user's metadata keys, tags and text outside our marked section
  survive a re-push. Cards carry names, revisions and counts only, never seed or task text.
- The card travels in the same `upload_folder` commit as the weights, so every revision is self-describing.
  (`ModelCard.push_to_hub` is not used: before huggingface_hub 2.2 it validated against huggingface.co
  directly, whatever `HF_ENDPOINT` said.)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    HfApi,
    ModelCard,
    ModelCardData,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "HubError",
    "split_revision",
    "resolve_pretrained",
    "adapter_card",
    "discriminator_card",
    "synthetic_dataset_card",
    "merge_card",
    "push_adapter",
    "push_discriminator",
    "push_synthetic_dataset",
    "push_run",
]

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

CITATION = """@inproceedings{wang2024translora,
  title     = {Trans-LoRA: towards data-free Transferable Parameter Efficient Finetuning},
  author    = {Runqian Wang and Soumya Ghosh and David Cox and Diego Antognini and Aude Oliva and
               Rogerio Feris and Leonid Karlinsky},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024},
  eprint    = {2405.17258},
  archivePrefix = {arXiv},
}"""

LINEAGE_KEYS = {
    "source_model", "source_model_revision", "source_adapter", "source_adapter_revision", "target_model",
    "target_model_revision", "discriminator", "generator", "task_name", "num_seeds", "num_accepted",
    "num_candidates", "acceptance_rate", "loss", "peft_type", "chain",
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


# ---------------------------------------------------------------------------------------------- pulling
def split_revision(ref: str) -> tuple[str, str | None]:
    """Split `"user/repo@rev"` into `("user/repo", "rev")`. An existing local path is returned unchanged,
    even when it contains `@`; a ref without `@` gets revision `None`."""
    if os.path.exists(os.path.expanduser(ref)) or "@" not in ref:
        return ref, None
    repo_id, _, revision = ref.rpartition("@")
    if not repo_id or not revision:
        raise HubError(f"{ref!r}: expected `namespace/name@revision` with a non-empty name and revision.")
    return repo_id, revision


def resolve_pretrained(
    ref: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    repo_type: str = "model",
    allow_patterns: list[str] | str | None = None,
) -> str:
    """Return a local directory for `ref`: an existing local path as is, or a Hub repo id (optionally
    `repo@revision`) downloaded with `snapshot_download` into the Hugging Face cache. A packaged model
    (`packaged:<name>`) or a GGUF checkpoint (a `.gguf` file, `namespace/name:Q4_K_M`) gives its converted
    safetensors folder (`peft_transfer.sources`).

    Args:
        ref (`str`): a local path, `namespace/name` or `namespace/name@revision`.
        revision (`str`, *optional*): branch, tag or commit sha; conflicts with an `@revision` in `ref`.
        token (`str`, *optional*): Hub token; defaults to `HF_TOKEN` / the token saved by `hf auth login`.
        repo_type (`str`, defaults to `"model"`): `"model"` or `"dataset"`.
        allow_patterns (`list[str]`, *optional*): only download matching files. By default every file but
            pickle weights (`*.bin`, `*.pt`, ...) is downloaded: safetensors weights only.

    Raises:
        [`HubError`] (a `ValueError`): no such local path and not a valid repo id; repo not found or not
        accessible; revision not found; the Hub unreachable with nothing cached; only pickle weights.
    """
    from .sources import is_source_ref, resolve_source

    if revision is None and is_source_ref(ref):  # a packaged model or a GGUF checkpoint: a converted folder
        return resolve_source(ref, token=token)
    local = os.path.expanduser(ref)
    if os.path.exists(local):
        if revision is not None:
            logger.warning("Ignoring revision %r for local path %s.", revision, ref)
        return local
    repo_id, ref_revision = split_revision(ref)
    if ref_revision is not None and revision is not None and ref_revision != revision:
        raise HubError(f"{ref!r} names revision {ref_revision!r} but revision={revision!r} was also given: keep one.")
    revision = ref_revision or revision
    try:
        validate_repo_id(repo_id)
        if repo_id.count("/") > 1:
            raise HFValidationError("too many '/'")
    except HFValidationError:
        raise HubError(
            f"{ref!r} is neither an existing local path nor a valid Hub repo id (`namespace/name`, optionally "
            "`@revision`): check the path, or the spelling of the repo id."
        ) from None
    where = f"{repo_type} repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            token=token,
            allow_patterns=allow_patterns,
            ignore_patterns=None if allow_patterns is not None else PICKLE_PATTERNS,
        )
    except RevisionNotFoundError:
        raise HubError(
            f"Revision {revision!r} not found in {repo_type} repo {repo_id!r}: pass an existing branch, tag or "
            "commit sha (see the repo's 'Files and versions' tab)."
        ) from None
    except GatedRepoError:
        raise HubError(
            f"{where} is gated: request access on its Hub page, then pass `hub_token` or run `hf auth login`."
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{where} was not found or is not accessible with the current credentials. Check the repo id and "
            "`repo_type`; private repos need a token: pass `hub_token` or run `hf auth login`."
        ) from None
    except LocalEntryNotFoundError as e:
        raise HubError(
            f"Could not reach the Hub for {where}, and it is not in the local cache ({e.__class__.__name__}). "
            "Check the connection and `HF_ENDPOINT`, or unset `HF_HUB_OFFLINE`."
        ) from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise HubError(f"The Hub refused the token for {where}: pass a valid `hub_token` or run `hf auth login`.")
        raise
    if allow_patterns is None and not any(name.endswith(".safetensors") for name in _walk(folder)):
        remote = HfApi().list_repo_files(repo_id, repo_type=repo_type, revision=revision, token=token)
        if any(_matches(name, PICKLE_PATTERNS) for name in remote):
            raise HubError(
                f"{where} has only pickle weights (*.bin/*.pt), which are not loaded for safety: push a "
                "safetensors version (`save_pretrained(..., safe_serialization=True)`) or pass `allow_patterns`."
            )
    return folder


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
    from .sources import notices, packaged_model

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
        from .lm_evaluation import markdown_table

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


# ---------------------------------------------------------------------------------------------- pushing
def push_adapter(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    lineage: dict[str, Any],
    evaluation: dict[str, Any] | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    lm_eval: dict[str, Any] | None = None,
):
    """Push a transferred adapter folder (allow-listed files only) with its lineage card.

    Returns:
        `huggingface_hub.CommitInfo`: a `str` (the commit url) whose `.oid` is the new commit sha.
    """
    card = adapter_card(lineage, evaluation, repo_id=repo_id, lm_eval=lm_eval)
    return _push(folder, repo_id, card=card, repo_type="model", private=private, token=token, revision=revision,
                 commit_message=commit_message or f"Upload adapter transferred to {lineage['target_model']}",
                 patterns=ADAPTER_FILES, require_private=False)  # fmt: skip


def push_discriminator(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    info: dict[str, Any],
    private: bool = True,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
):
    """Push a discriminator adapter folder; private unless `private=False` (it derives from private data).
    Returns the `CommitInfo` (a `str` url with `.oid`)."""
    card = discriminator_card(info, repo_id=repo_id)
    return _push(folder, repo_id, card=card, repo_type="model", private=private, token=token, revision=revision,
                 commit_message=commit_message or "Upload Trans-LoRA discriminator", patterns=ADAPTER_FILES,
                 require_private=private)  # fmt: skip


def push_synthetic_dataset(
    dataset,
    repo_id: str,
    *,
    info: dict[str, Any],
    private: bool = True,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
):
    """Push a synthetic dataset as parquet files (`data/{split}-00000-of-00001.parquet`) with its card.

    Args:
        dataset: a `datasets.Dataset` / `DatasetDict`, a `save_to_disk` folder, or a folder of `*.parquet`
            files. Only the data is uploaded: other files in the folder (seeds, logs) are never sent.
    Returns the `CommitInfo` (a `str` url with `.oid`).
    """
    with tempfile.TemporaryDirectory(prefix="peft-transfer-dataset-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        num_rows = _write_parquet(dataset, data_dir)
        card = synthetic_dataset_card({"num_rows": num_rows, **info}, repo_id=repo_id)
        return _push(tmp, repo_id, card=card, repo_type="dataset", private=private, token=token, revision=revision,
                     commit_message=commit_message or "Upload synthetic dataset", patterns=["data/*.parquet"],
                     require_private=private)  # fmt: skip


def push_run(cfg, dirs, lineage: dict) -> dict:
    """Push what a run's settings ask for: the adapter, the discriminator (private), the labelled synthetic set.

    Seeds, task files and the run directory's other files are never uploaded. Pushed commits are recorded in
    `push.json`; a repo already pushed from this run is not pushed again unless `overwrite` is set.
    """
    from .rundir import read_json, write_json

    record = {} if cfg.overwrite else read_json(dirs.push_record)
    if cfg.push_to_hub and cfg.hub_model_id not in record:
        evaluation = read_json(dirs.evaluation) or None
        commit = push_adapter(dirs.target_adapter, cfg.hub_model_id, lineage=lineage,
                              evaluation=evaluation, private=cfg.hub_private_repo, token=cfg.hub_token,
                              lm_eval=read_json(dirs("evaluation", "lm_eval.json")) or None)
        record[cfg.hub_model_id] = {"what": "adapter", "commit": str(commit)}
    if cfg.hub_discriminator_id and cfg.hub_discriminator_id not in record:
        metrics = read_json(dirs.discriminator_metrics)
        info = {k: v for k, v in metrics.items() if k in DISCRIMINATOR_KEYS}
        info.update(peft_type="lora", num_eval_samples=metrics.get("n_positive", 0) + metrics.get("n_negative", 0))
        commit = push_discriminator(dirs.discriminator, cfg.hub_discriminator_id, info=info,
                                    private=cfg.hub_discriminator_private, token=cfg.hub_token)
        record[cfg.hub_discriminator_id] = {"what": "discriminator", "commit": str(commit)}
    if cfg.hub_dataset_id and cfg.hub_dataset_id not in record:
        from datasets import load_from_disk

        labels = load_from_disk(dirs.labels).select_columns(["input", "completion"])
        info = {k: lineage[k] for k in ("task_name", "generator", "discriminator", "num_seeds", "num_accepted",
                                        "num_candidates", "acceptance_rate", "target_model")}
        info["teacher"] = f"{lineage['source_model']} + {lineage['source_adapter']}"
        commit = push_synthetic_dataset(labels, cfg.hub_dataset_id, info=info, token=cfg.hub_token)
        record[cfg.hub_dataset_id] = {"what": "synthetic dataset", "commit": str(commit)}
    write_json(dirs.push_record, record)
    return record


def _push(folder, repo_id, *, card, repo_type, private, token, revision, commit_message, patterns, require_private):
    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    selected = [f for f in files if _matches(f, patterns)]
    if repo_type == "model":
        selected = [f for f in selected if "/" not in f]  # top level only: sub-folders hold other adapters
        pickles = [f for f in files if _matches(f, PICKLE_PATTERNS)]
        if "adapter_config.json" not in selected:
            raise ValueError(f"{folder} has no adapter_config.json: pass the folder written by `save_pretrained`.")
        if pickles and not any(f.endswith(".safetensors") for f in selected):
            raise ValueError(f"{folder} holds pickle weights only ({pickles}): save with safe_serialization=True.")
    api = HfApi()
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, token=token, exist_ok=True)
    repo_id = url.repo_id  # a name without namespace gets the token's user
    if require_private and not api.repo_info(repo_id, repo_type=repo_type, token=token).private:
        raise HubError(
            f"{repo_type} repo {repo_id!r} already exists and is public, but this push is private by default "
            "because it derives from private data: make the repo private on the Hub, or pass `private=False`."
        )
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, token=token, exist_ok=True)
    card = merge_card(_load_remote_card(api, repo_id, repo_type, revision, token, type(card)), card)
    with tempfile.TemporaryDirectory(prefix="peft-transfer-push-") as staging:
        # A staging folder of links holding exactly what may be published; upload_folder sees nothing else.
        for name in selected:
            (Path(staging) / name).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(folder / name, Path(staging) / name)
        card.save(Path(staging) / "README.md")
        logger.info("Pushing %d files to %s %s.", len(selected) + 1, repo_type, repo_id)
        return api.upload_folder(
            folder_path=staging,
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            token=token,
            commit_message=commit_message,
        )


def _load_remote_card(api: HfApi, repo_id, repo_type, revision, token, card_class):
    try:
        path = api.hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=revision, token=token)
    except (EntryNotFoundError, RevisionNotFoundError):
        return None
    return card_class.load(path, ignore_metadata_errors=True)


def _write_parquet(dataset, data_dir: Path) -> int:
    """Write `dataset` as one parquet file per split under `data_dir`; return the total number of rows."""
    import datasets

    if isinstance(dataset, (str, os.PathLike)):
        path = Path(dataset)
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            dataset = datasets.load_from_disk(str(path))
        else:
            parquet = sorted(path.glob("*.parquet"))
            if not parquet:
                raise ValueError(f"{path}: expected a `save_to_disk` folder or *.parquet files.")
            for i, file in enumerate(parquet):
                shutil.copyfile(file, data_dir / f"train-{i:05d}-of-{len(parquet):05d}.parquet")
            return sum(datasets.Dataset.from_parquet(str(f)).num_rows for f in parquet)
    splits = dataset if isinstance(dataset, datasets.DatasetDict) else {"train": dataset}
    for split, ds in splits.items():
        ds.to_parquet(str(data_dir / f"{split}-00000-of-00001.parquet"))
    return sum(ds.num_rows for ds in splits.values())


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
        ("distillation loss", lineage.get("loss")),
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
