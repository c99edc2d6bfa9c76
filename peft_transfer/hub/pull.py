"""Pulling: `resolve_pretrained` turns a local folder, a Hub repo id (`org/name@revision`) or a packaged/GGUF source
into a local folder, safetensors only."""

from __future__ import annotations

import logging
import os

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .common import PICKLE_PATTERNS, HubError, _matches, _walk

# ---------------------------------------------------------------------------------------------- pulling
logger = logging.getLogger(__name__)


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
    from ..sources import is_source_ref, resolve_source

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
