"""Pushing: the adapter, the discriminator (private) and the labelled synthetic set, each with its card in the
same commit, from a staging folder of allow-listed files; `push_run` pushes what a run's settings ask for."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

from .cards import adapter_card, discriminator_card, merge_card, synthetic_dataset_card
from .common import ADAPTER_FILES, DISCRIMINATOR_KEYS, PICKLE_PATTERNS, HubError, _link_or_copy, _matches

# ---------------------------------------------------------------------------------------------- pushing
logger = logging.getLogger(__name__)


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
    from ..rundir import read_json, write_json

    record = {} if cfg.overwrite else read_json(dirs.push_record)
    if cfg.push_to_hub and cfg.hub_model_id not in record:
        evaluation = read_json(dirs.evaluation) or None
        commit = push_adapter(dirs.target_adapter, cfg.hub_model_id, lineage=lineage,
                              evaluation=evaluation, private=cfg.hub_private_repo, token=cfg.hub_token,
                              lm_eval=read_json(dirs.lm_eval) or None)
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
