"""Loading bases and adapters the ordinary way, and building the new adapter's `PeftConfig`.

Every model or adapter setting is a local path or a Hub repo id with an optional revision (`user/repo@rev`); both
go through `hub.resolve_pretrained` (`snapshot_download`, with clear errors for a missing repo or revision) and
then `from_pretrained`. Safe defaults: `trust_remote_code` off and safetensors only.
"""

from __future__ import annotations

import logging
import os

import torch

from .distillation.models import OutputLinear, cpu_has_bf16
from .errors import UserError
from .hub import resolve_pretrained, split_revision
from .sources import is_source_ref

logger = logging.getLogger(__name__)


class AdapterMismatchError(UserError):
    """An adapter trained on another base than the one it is applied to."""


def torch_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """The dtype a `dtype` setting means. `"auto"`: bf16 where the hardware computes in it (a CUDA device with bf16,
    or a CPU with AVX512-BF16/AMX), else float32."""
    if name != "auto":
        return getattr(torch, name)
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if kind == "cpu" and cpu_has_bf16() else torch.float32


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:]) if args and not args[0].is_contiguous() else None


def prepare_output_layer(model):
    """Make the output layer fast on CPU (once per model; returns the model).

    - Its input is made contiguous. transformers applies `lm_head` to `hidden_states[:, -k:, :]` (`logits_to_keep`:
      every `generate` prefill, every discriminator score), a strided 3-D tensor. torch (2.13, CPU) cannot fold that
      into one matmul and broadcasts the whole (vocab, hidden) weight per row into a bmm instead: for Gemma's 262k
      vocabulary 0.7 s and 0.3 GB per row in bf16, where the contiguous input takes 2 ms. That copy was most of the
      time and memory of generation here.
    - A plain `nn.Linear` head becomes an `OutputLinear` (`output_linear`: oneDNN in float32 without gradients). A
      head that PEFT or anything else wraps is left as it is.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return model
    if not getattr(head, "_contiguous_input_hook", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._contiguous_input_hook = True
    if type(head) is torch.nn.Linear:
        head.__class__ = OutputLinear
    return model


def default_device() -> torch.device:
    from .distributed import state

    return state().device


def load_tokenizer(ref: str, *, trust_remote_code: bool = False, token: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(ref, token=token), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Batched, left-padded generation needs a pad token; EOS is the usual stand-in and is masked by attention.
        if tokenizer.eos_token is None:
            raise ValueError(
                f"The tokenizer of {ref!r} has neither a pad nor an EOS token: add a pad token to it "
                "(`tokenizer.add_special_tokens({'pad_token': '<pad>'})`) and save it, then start again."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(ref: str, *, dtype: str = "auto", trust_remote_code: bool = False, attn_implementation=None,
              token: str | None = None, device=None):
    """A causal LM from a path or Hub id (safetensors only), on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    kwargs = dict(trust_remote_code=trust_remote_code, use_safetensors=True, dtype=torch_dtype(dtype, device))
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(resolve_pretrained(ref, token=token), **kwargs)
    if is_source_ref(ref):
        # Adapters record `name_or_path` as their base: the portable name, not this machine's cache folder.
        model.config._name_or_path = model.name_or_path = ref
    model.to(device)
    model.eval()
    return prepare_output_layer(model)


def _same_model(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return True  # nothing recorded: cannot tell, accept
    a, b = split_revision(a)[0], split_revision(b)[0]
    if os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a.rstrip("/").split("/")[-2:] == b.rstrip("/").split("/")[-2:]


def check_adapter_base(adapter_ref: str, model, base_ref: str, *, token: str | None = None,
                       local: str | None = None):
    """Refuse an adapter whose recorded base does not fit the model it is applied to.

    The recorded `base_model_name_or_path` is compared with the base's name. A name that differs (a local copy of
    the base, a mirror) is accepted when the recorded base's config agrees on the architecture; when the recorded
    base cannot be read (offline), a warning is logged and the shapes are left to the load, which refuses a
    mismatch with `AdapterMismatchError` too. `local` is the adapter's folder when the caller has resolved it.
    """
    from peft import PeftConfig
    from transformers import AutoConfig

    peft_config = PeftConfig.from_pretrained(local or resolve_pretrained(adapter_ref, token=token))
    recorded = peft_config.base_model_name_or_path
    if not recorded or _same_model(recorded, base_ref):
        return peft_config
    try:
        # Only the config: the recorded base may be a multi-GB repo that is never loaded here.
        recorded_config = AutoConfig.from_pretrained(
            resolve_pretrained(recorded, token=token, allow_patterns=["config.json"])).to_dict()
    except (OSError, ValueError) as e:
        logger.warning("The adapter %r records the base %r, which cannot be read (%s); its shapes are checked "
                       "against %r when it is loaded.", adapter_ref, recorded, str(e).splitlines()[0], base_ref)
        return peft_config
    current = model.config.to_dict()
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    if any(recorded_config.get(k) != current.get(k) for k in keys):
        raise AdapterMismatchError(
            f"The adapter {adapter_ref!r} was trained on {recorded!r}, not on {base_ref!r}: set `source_model` to the "
            "adapter's base (see base_model_name_or_path in its adapter_config.json), or use an adapter trained "
            "on this base."
        )
    return peft_config


def load_adapter(model, adapter_ref: str, base_ref: str, *, adapter_name: str = "default", token: str | None = None,
                 is_trainable: bool = False):
    """Base + adapter as a `PeftModel` (or a new adapter added to an existing `PeftModel`)."""
    from peft import PeftModel

    local = resolve_pretrained(adapter_ref, token=token)
    check_adapter_base(adapter_ref, model, base_ref, token=token, local=local)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(local, adapter_name=adapter_name, is_trainable=is_trainable)
            return model
        return PeftModel.from_pretrained(model, local, adapter_name=adapter_name, is_trainable=is_trainable,
                                         autocast_adapter_dtype=False)
    except (RuntimeError, ValueError, KeyError) as e:
        if "size mismatch" in str(e) or "Target modules" in str(e):
            raise AdapterMismatchError(
                f"The adapter {adapter_ref!r} does not fit {base_ref!r} ({str(e).splitlines()[0]}): set `source_model` "
                "to the base the adapter was trained on."
            ) from e
        raise


def peft_config_from(config, tokenizer_name_or_path: str | None = None, *, peft_type: str | None = None,
                     task_type: str = "CAUSAL_LM"):
    """A `PeftConfig` from a `TransferConfig`'s adapter settings (`peft_type` overrides the config's)."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit

    peft_type = peft_type or config.peft_type
    # PEFT reads `all-linear` (every linear layer but the output head) only as a string: in a list it would look for
    # a module of that name. Module names stay a list (a string would be matched as a regex on the full name).
    targets = list(config.lora_target_modules)
    targets = targets[0] if [t.lower() for t in targets] == ["all-linear"] else targets

    if peft_type in ("lora", "dora"):
        return LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
            use_dora=peft_type == "dora",
            bias="none",
            task_type=task_type,
        )
    if peft_type == "ia3":
        # (IA)³ scales the input of a feedforward layer and the output of any other: the layers of each block's MLP
        # are the feedforward ones, whether named or from `all-linear` (a regex on the full module name).
        return IA3Config(target_modules=targets, feedforward_modules=r".*(\.mlp\..*|(down|up|gate)_proj)",
                         task_type=task_type)
    if peft_type == "prompt_tuning":
        if config.prompt_tuning_init_text:
            return PromptTuningConfig(
                num_virtual_tokens=config.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=config.prompt_tuning_init_text,
                tokenizer_name_or_path=tokenizer_name_or_path,
                task_type=task_type,
            )
        return PromptTuningConfig(num_virtual_tokens=config.num_virtual_tokens, task_type=task_type)
    if peft_type == "prefix_tuning":
        return PrefixTuningConfig(num_virtual_tokens=config.num_virtual_tokens, task_type=task_type)
    raise ValueError(f"Unknown peft_type {peft_type!r}.")


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def strip_adapters(model):
    """The plain base under a `PeftModel`, as it was before the adapters (injected layers removed), in eval mode."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            model = model.get_base_model()  # prompt learning wraps the base without changing it
        else:
            model = model.unload()  # LoRA, DoRA, IA3: the original modules back, weights untouched
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    if hasattr(model, "_require_grads_hook"):  # set by PEFT training with gradient checkpointing
        model.disable_input_require_grads()
    model.config.use_cache = True
    model.eval()
    return model


class ModelPool:
    """The bases of one run, each loaded once and lent to the stages that use it.

    `with pool.lease(ref, adapter) as lease:` gives `lease.model` (with `adapter` loaded onto it) and
    `lease.tokenizer` for the block. When the pool is enabled the base goes back to it afterwards with its adapters
    stripped (PEFT injects them in place), so the next stage shares it instead of reloading it. A block may replace
    `lease.model` (a trainer's `PeftModel`); that is what gets stripped. A base already lent out (generator and
    discriminator on one base) is loaded afresh for the second block. Disabled, every lease loads its own copy.
    """

    def __init__(self, *, enabled: bool = True, dtype: str = "auto", trust_remote_code: bool = False,
                 attn_implementation: str | None = None, cache_implementation: str | None = None,
                 token: str | None = None):
        self.enabled = enabled
        self.token = token
        self._settings = dict(dtype=dtype, trust_remote_code=trust_remote_code,
                              attn_implementation=attn_implementation)
        self._cache_implementation = cache_implementation
        self._models: dict[str, tuple] = {}
        self._lent: set[str] = set()

    def load(self, ref: str):
        """A fresh (model, tokenizer) pair for `ref`, outside the pool."""
        tokenizer = load_tokenizer(ref, trust_remote_code=self._settings["trust_remote_code"], token=self.token)
        model = load_base(ref, token=self.token, **self._settings)
        if self._cache_implementation:
            model.generation_config.cache_implementation = self._cache_implementation
        return model, tokenizer

    def lease(self, ref: str, adapter: str | None = None):
        import contextlib
        from types import SimpleNamespace

        @contextlib.contextmanager
        def block():
            pooled = self.enabled and ref not in self._lent
            model, tokenizer = self._models.pop(ref) if pooled and ref in self._models else self.load(ref)
            if pooled:
                self._lent.add(ref)
            lease = SimpleNamespace(model=model, tokenizer=tokenizer)
            try:
                if adapter:
                    lease.model = load_adapter(model, adapter, ref, token=self.token)
                yield lease
            finally:
                if pooled:
                    self._lent.discard(ref)
                    self._models[ref] = (strip_adapters(lease.model), tokenizer)
                del lease, model
                free_memory()

        return block()

    def keep_only(self, refs: set[str]) -> None:
        """Drop the pooled bases that are not in `refs` (the later stages do not use them)."""
        for ref in [r for r in self._models if r not in refs]:
            del self._models[ref]
        free_memory()


def reset_peak_rss() -> None:
    """Start a new peak-RSS window for this process (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_gb() -> float | None:
    """This process's peak resident memory since the last `reset_peak_rss`, in GB (None where unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / 1e9, 2)
    except OSError:
        pass
    return None
