"""Checks made before the first stage, so that a mistake costs seconds, not hours of generation.

Each reads only what is cheap: files, tokenizers, model configs (a Hub base is downloaded here rather than after
synthesis, which would need it anyway), adapter configs. Every failure is a `UserError` that names the problem and
the fix; nothing in the run directory is touched.
"""

from __future__ import annotations

import os
import random
import tempfile

from .data import generator_prompt, load_examples
from .errors import PreflightError


def check_output_dir(path: str) -> None:
    """`output_dir` exists (or can be made) and takes files."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise PreflightError(f"The output_dir {path!r} cannot be written to ({reason}): give a folder you can write "
                             "to with `--output_dir`.") from None


def check_reuse_source(path: str, output_dir: str) -> None:
    """`reuse_stages_from` is another run directory with at least one finished stage."""
    from .rundir import RunDir
    from .stages import STAGE_NAMES

    if os.path.abspath(path) == os.path.abspath(output_dir):
        raise PreflightError(f"reuse_stages_from={path!r} is the output_dir itself: a run there already reuses what "
                             "it made with the same settings. Leave reuse_stages_from unset.")
    if not os.path.isdir(path):
        raise PreflightError(f"reuse_stages_from={path!r} is not a folder: give the output_dir of an earlier run.")
    if not any(RunDir(path).finished(name) for name in STAGE_NAMES):
        raise PreflightError(f"reuse_stages_from={path!r} holds no finished stage ({', '.join(STAGE_NAMES)}): give "
                             "the output_dir of an earlier run.")


def check(run, todo) -> None:
    """Everything about the stages in `todo` that can be known before they start (see the module docstring)."""
    cfg = run.config
    names = {s.name for s in todo}
    if cfg.reuse_stages_from:
        check_reuse_source(cfg.reuse_stages_from, cfg.output_dir)
    from .tracking import check_integrations

    check_integrations(cfg.report_to)
    run.seeds  # noqa: B018 — reads and checks the seed file (DataError)
    if names & {"source_adapter", "discriminator"}:
        load_examples(cfg.train_file, require_target="source_adapter" in names, what="train_file")
    if cfg.eval_file:
        load_examples(cfg.eval_file, require_target=True, what="eval_file")
    if cfg.source_adapter and names & {"labels", "target_adapter", "evaluation"}:
        _check_adapter(cfg.source_adapter, cfg.source_model, "source_adapter", "source_model", cfg.hub_token)
    if cfg.discriminator_adapter and "synthesis" in names and cfg.filter_mode == "discriminator":
        _check_adapter(cfg.discriminator_adapter, cfg.discriminator_base, "discriminator_adapter",
                       "discriminator_model", cfg.hub_token)
    if "synthesis" in names:
        _check_prompt_fits(cfg, cfg.generator, run.seeds, "seeds", "generator")
    if "discriminator" in names:  # its negatives come from numbered-list prompts of real inputs, on the source base
        real = list(dict.fromkeys(e["input"] for e in load_examples(cfg.train_file, what="train_file")))
        _check_prompt_fits(cfg, cfg.source_model, real, "train_file inputs", "source_model")
    if "target_adapter" in names and cfg.kd_loss != "sequence":
        _check_shared_vocabulary(cfg)
    if cfg.generation_backend == "vllm" and names & {"synthesis", "labels"}:
        _check_vllm(cfg, names)
    if cfg.evaluation_backend == "lm_eval" and "evaluation" in names:
        from .lm_evaluation import check_tasks

        check_tasks(cfg.lm_eval_tasks, cfg.lm_eval_include_path)


def _check_vllm(cfg, names) -> None:
    from .distributed import state
    from .vllm_server import find_python, lora_rank

    if state().num_processes > 1:
        raise PreflightError("generation_backend: vllm runs in one process (its server batches the requests): "
                             "launch without `accelerate launch`/torchrun, or use `generation_backend: hf`.")
    if cfg.trust_remote_code:
        raise PreflightError("generation_backend: vllm does not run remote code: use `generation_backend: hf`.")
    uses_adapter = "labels" in names or cfg.generate_with_source_adapter
    if uses_adapter and not cfg.source_adapter and cfg.source_peft_type != "lora":
        raise PreflightError(f"generation_backend: vllm serves LoRA adapters only, and source_peft_type is "
                             f"{cfg.source_peft_type!r}: use `generation_backend: hf`.")
    if uses_adapter and cfg.source_adapter:
        from .hub import resolve_pretrained

        lora_rank(resolve_pretrained(cfg.source_adapter, token=cfg.hub_token))
    find_python(cfg.vllm_python)


def _check_adapter(ref: str, base: str, setting: str, base_setting: str, token) -> None:
    from types import SimpleNamespace

    from .hub import resolve_pretrained
    from .modeling import check_adapter_base

    looks_local = ref.startswith(("/", ".", "~")) or ref.count("/") > 1  # a Hub id is `namespace/name`
    if looks_local and not os.path.exists(os.path.expanduser(ref)):
        raise PreflightError(f"The {setting} {ref!r} does not exist: give the folder of a saved PEFT adapter "
                             "(with adapter_config.json) or a Hub repo id.")
    local = resolve_pretrained(ref, token=token)
    if not os.path.isfile(os.path.join(local, "adapter_config.json")):
        raise PreflightError(f"The {setting} {ref!r} holds no adapter_config.json: give the folder a PEFT adapter "
                             "was saved to (`model.save_pretrained(...)`).")
    config = _model_config(base, token)
    # The same comparison the load makes, on the base's config alone (no weights loaded)...
    check_adapter_base(ref, SimpleNamespace(config=config), base, token=token, local=local)
    # ...and the adapter's weight shapes against the base's modules, built on the meta device (no memory): this
    # also catches an adapter whose recorded base is missing or unreadable.
    _check_adapter_shapes(local, config, ref, base, setting, base_setting)


def _check_adapter_shapes(local: str, config, ref: str, base: str, setting: str, base_setting: str) -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from .modeling import AdapterMismatchError

    weights = os.path.join(local, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        return
    try:
        with torch.device("meta"):
            modules = dict(AutoModelForCausalLM.from_config(config).named_modules())
    except Exception:  # noqa: BLE001 — an architecture that cannot be built here is left to the load
        return
    hidden = getattr(config, "hidden_size", None) or getattr(getattr(config, "text_config", None), "hidden_size", None)
    with safe_open(weights, "pt") as f:
        for key in f.keys():
            shape = f.get_slice(key).get_shape()
            problem = None
            if ".lora_A." in key or ".lora_B." in key:
                name = key.split(".lora_")[0].removeprefix("base_model.model.")
                module = modules.get(name)
                if module is None:
                    problem = f"it adapts {name!r}, which {base!r} does not have"
                elif ".lora_A." in key and getattr(module, "in_features", shape[-1]) != shape[-1]:
                    problem = f"{name} takes {module.in_features} features in {base!r}, {shape[-1]} in the adapter"
                elif ".lora_B." in key and getattr(module, "out_features", shape[0]) != shape[0]:
                    problem = f"{name} gives {module.out_features} features in {base!r}, {shape[0]} in the adapter"
            elif key.endswith("prompt_embeddings") and hidden and shape[-1] != hidden:
                problem = f"its virtual tokens have {shape[-1]} dimensions, the base's embeddings {hidden}"
            if problem:
                raise AdapterMismatchError(
                    f"The {setting} {ref!r} does not fit the {base_setting} {base!r}: {problem}. Set "
                    f"`{base_setting}` to the base the adapter was trained on, or give an adapter trained on this base."
                )


def _model_config(ref: str, token):
    from transformers import AutoConfig

    from .hub import resolve_pretrained

    return AutoConfig.from_pretrained(resolve_pretrained(ref, token=token))


def _context_length(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None) or getattr(getattr(config, "text_config", None), name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_prompt_fits(cfg, model_ref: str, inputs: list[str], what: str, setting: str) -> None:
    """The longest numbered-list prompt (the `num_seeds` longest inputs) plus the new tokens fits the context."""
    from .modeling import load_tokenizer

    context = _context_length(_model_config(model_ref, cfg.hub_token))
    if context is None:
        return
    tokenizer = load_tokenizer(model_ref, trust_remote_code=cfg.trust_remote_code, token=cfg.hub_token)
    lengths = {x: len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in inputs}
    longest = sorted(inputs, key=lengths.get, reverse=True)[: cfg.num_seeds]
    prompt = generator_prompt(longest, random.Random(0), cfg.num_seeds)
    need = len(tokenizer(prompt)["input_ids"]) + cfg.max_candidate_tokens
    if need > context:
        worst = longest[0]
        raise PreflightError(
            f"The generation prompt does not fit the {setting}'s context of {context} tokens: with the "
            f"{min(cfg.num_seeds, len(inputs))} longest {what} it takes {need - cfg.max_candidate_tokens} tokens, "
            f"plus max_candidate_tokens={cfg.max_candidate_tokens}. The longest is {lengths[worst]} tokens "
            f"({worst[:60]!r}...). Shorten or drop the longest {what}, lower num_seeds, or lower max_candidate_tokens."
        )


def _check_shared_vocabulary(cfg) -> None:
    from .distillation.losses import assert_same_vocabulary
    from .modeling import load_tokenizer

    teacher = load_tokenizer(cfg.source_model, trust_remote_code=cfg.trust_remote_code, token=cfg.hub_token)
    student = load_tokenizer(cfg.target_model, trust_remote_code=cfg.trust_remote_code, token=cfg.hub_token)
    try:
        assert_same_vocabulary(teacher, student)
    except ValueError as e:
        raise PreflightError(f"kd_loss={cfg.kd_loss!r} with source_model {cfg.source_model!r} and target_model "
                             f"{cfg.target_model!r}: {e}") from None
