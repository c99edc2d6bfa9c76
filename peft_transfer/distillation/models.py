"""The model plumbing of `DistillationTrainer`: unwrapping DDP/DeepSpeed and PEFT, freezing the teacher, switching
adapters when one model holds teacher and student, capturing the input of `lm_head`, the output layer's float32 CPU
matmul (`output_linear`), and the checks that refuse what token-level KD would get wrong."""

from __future__ import annotations

import contextlib
import functools

import torch

# Config attributes that rescale logits after `lm_head` (Cohere, Granite, Falcon-H1, ...): the chunked loss reads
# `lm_head` directly and would silently skip them.
_LOGIT_SCALES = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX): there bf16 matmuls run about twice as fast
    as fp32; elsewhere bf16 is emulated and slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _onednn_linear():
    """oneDNN's linear (`mkldnn::_linear_pointwise`, what torch.compile's CPU backend calls), or `None` where this
    torch build has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear()


def output_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` for an output layer (a vocabulary-wide weight): through oneDNN on CPU in float32 when no gradient
    flows through it, else `F.linear` itself.

    torch's CPU float32 matmul (MKL) is slow for this shape, a few rows against a tall weight, and varies from run to
    run: measured on an AVX2 AMD EPYC (2 cores), 64 rows x Gemma-3's (262k, 640) head at 45-73 GFLOP/s against
    oneDNN's 85-105, SmolLM2's (49k, 576) at 52-91 against 93-111, the same within float rounding, no copy of the
    weight (the repository's `benchmarks/scoring_speed.py`). In bf16 torch already calls oneDNN. oneDNN's op has no
    autograd formula: where a gradient is wanted `F.linear` runs.
    """
    if (_ONEDNN_LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))):
        return _ONEDNN_LINEAR(x.contiguous(), weight, bias, "none", [], "")
    return torch.nn.functional.linear(x, weight, bias)


class OutputLinear(torch.nn.Linear):
    """An `nn.Linear` output layer whose forward is `output_linear` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return output_linear(x, self.weight, self.bias)


def unwrapped_peft(model):
    """The model under DDP/DeepSpeed wrappers (a `PeftModel` when it has adapters)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def unwrap(model):
    """The `transformers` model under DDP/DeepSpeed wrappers and PEFT."""
    model = unwrapped_peft(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def final_hidden(model, lm_head, model_inputs) -> torch.Tensor:
    """Run `model`'s own forward and return the input of its `lm_head`, `(B, T, H)` (after the final norm).

    The ordinary forward keeps whatever the model and its adapter do (PEFT's virtual tokens and prefixes included);
    the pre-hook passes only the last position on to `lm_head`, so the full logits are never computed.
    """
    captured = []

    def hook(module, args):
        captured.append(args[0])
        # Contiguous: a strided 3-D input cannot be folded into one matmul, and torch then broadcasts the whole
        # (vocab, hidden) weight per row into a bmm — 12 s per step for Gemma's 262k vocabulary on a CPU.
        return (args[0][..., -1:, :].contiguous(), *args[1:])

    handle = lm_head.register_forward_pre_hook(hook)
    try:
        model(**model_inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"Expected the model to call its lm_head once per forward, got {len(captured)} calls.")
    return captured[0]


@contextlib.contextmanager
def adapter_active(peft_model, adapter_name: str):
    """Run with `adapter_name` active and the model in eval mode (no adapter dropout); restore everything after.

    `PeftModel.set_adapter` also flips `requires_grad` (the active adapter trainable, the others frozen), so the exact
    flags are recorded and put back: the student stays trainable and the teacher frozen whatever PEFT does.
    """
    previous = peft_model.active_adapter
    was_training = peft_model.training
    flags = [(p, p.requires_grad) for p in peft_model.parameters()]
    peft_model.set_adapter(adapter_name)
    peft_model.eval()
    try:
        yield
    finally:
        peft_model.set_adapter(previous)
        peft_model.train(was_training)
        for p, flag in flags:
            p.requires_grad_(flag)


def add_student_adapter(model, teacher_adapter_name: str, peft_config):
    """For one base with two adapters: check the model, add the student's adapter from `peft_config` when given."""
    from peft import PeftModel

    if not isinstance(model, PeftModel) or teacher_adapter_name not in model.peft_config:
        raise ValueError(
            f"`teacher_adapter_name={teacher_adapter_name!r}` names an adapter of the student `PeftModel`: load it "
            f"first, e.g. `PeftModel.from_pretrained(base, teacher_adapter, adapter_name={teacher_adapter_name!r})`."
        )
    if peft_config is not None:
        name = "default" if "default" not in model.peft_config else "student"
        model.add_adapter(name, peft_config)
        model.set_adapter(name)
    if model.active_adapter == teacher_adapter_name:
        raise ValueError(
            f"The teacher's adapter {teacher_adapter_name!r} is the active one: pass `peft_config` for a new student "
            "adapter, or add the student's adapter and `set_adapter` it before building the trainer."
        )


def freeze_adapter(model, adapter_name: str) -> None:
    marker = f".{adapter_name}."
    for name, p in unwrapped_peft(model).named_parameters():
        if marker in name or name.endswith(f".{adapter_name}"):
            p.requires_grad_(False)


def save_only_student_adapters(model, teacher_adapter_name: str) -> None:
    """`save_pretrained` on the shared model writes the student's adapter only, unless `selected_adapters` is given.

    PEFT saves every adapter by default, so the teacher's would end up in a subfolder of every checkpoint and of the
    transferred adapter. The instance's method is wrapped (as TRL patches `forward`), so that `trainer.save_model()`,
    checkpoints and a caller's own `model.save_pretrained(path)` all behave the same.
    """
    peft_model = unwrapped_peft(model)
    original = peft_model.save_pretrained
    students = [name for name in peft_model.peft_config if name != teacher_adapter_name]

    @functools.wraps(original)
    def save_pretrained(save_directory, *args, selected_adapters=None, **kwargs):
        return original(save_directory, *args, selected_adapters=selected_adapters or students, **kwargs)

    peft_model.save_pretrained = save_pretrained


def refuse_shared_parameters(student, teacher) -> None:
    student_params = {id(p) for p in student.parameters()}
    if any(id(p) in student_params for p in teacher.parameters()):
        raise ValueError(
            "The teacher shares parameters with the student (the same base model object): freezing the teacher would "
            "freeze the student, and the student's adapter would change the teacher. Load the base twice, or load the "
            "teacher's adapter onto the student `PeftModel` and pass `teacher_adapter_name`."
        )


def refuse_adapter_on_lm_head(model, who: str) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(model.get_output_embeddings(), BaseTunerLayer):
        raise ValueError(
            f"The {who}'s adapter targets lm_head: token-level KD reads lm_head.weight directly and would ignore it. "
            f"Merge the {who}'s adapter (`merge_and_unload()`) or use kd_loss='sequence'."
        )


def logit_softcap(model) -> float | None:
    config = unwrap(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _LOGIT_SCALES:
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise NotImplementedError(
                f"{type(config).__name__} rescales its logits ({name}={getattr(config, name)}), which token-level KD "
                "does not reproduce yet: use kd_loss='sequence'."
            )
    return getattr(config, "final_logit_softcapping", None)
