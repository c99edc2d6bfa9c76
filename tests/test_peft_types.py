"""Any PEFT type on either side: source adapter of one type, transferred adapter of another.

Each case runs the pipeline's own pieces on tiny untrained bases: the source adapter (built from
`peft_config_from`, given non-trivial weights) is saved and reloaded with `modeling.load_adapter`, labels the inputs
with `labelling.label`, and a `DistillationTrainer` trains the new adapter on the target; that adapter is saved as the
pipeline saves it, reloaded, and must give the same outputs. Cross-family pairs (Llama-style -> Gemma-style, other
vocabulary) use the paper's sequence loss; same-vocabulary pairs use a token-level loss.
"""

import pytest
import torch

INPUTS = ["dcba", "zyx", "hello", "world", "qwerty", "plane", "abc", "train"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from transformers import AutoTokenizer

    from peft_transfer.worlds.tiny_models import FAMILIES, build_family, build_model, save_family

    root = tmp_path_factory.mktemp("peft_types")
    paths = {
        "llama": build_family("tiny-llama", str(root / "llama"), num_docs=300),
        "gemma": build_family("tiny-gemma", str(root / "gemma"), num_docs=300),
    }
    # A second Llama-style base with the first one's tokenizer: the same-vocabulary target of token-level KD.
    tokenizer = AutoTokenizer.from_pretrained(paths["llama"])
    other = build_model(FAMILIES["tiny-llama"], tokenizer, seed=1)
    paths["llama2"] = save_family(other, tokenizer, str(root / "llama2"))
    return paths


def _config(bases, tmp_path, **overrides):
    from peft_transfer import TransferConfig

    settings = dict(source_model=bases["llama"], target_model=bases["gemma"], source_adapter="unused",
                    discriminator_adapter="unused", seed_file="unused", output_dir=str(tmp_path / "run"),
                    num_virtual_tokens=4, label_max_new_tokens=6, generation_batch_size=8, answer_stop=None,
                    dtype="float32")
    settings.update(overrides)
    return TransferConfig(**settings)


def _logits(model, tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        # Prompt-learning adapters prepend virtual tokens to the output: keep the positions of the text.
        return model(**enc).logits[:, -enc["input_ids"].shape[1]:]


def _source_adapter(cfg, out):
    """A source adapter of `cfg.source_peft_type` with visibly non-zero weights, saved and reloaded."""
    from peft import get_peft_model

    from peft_transfer.modeling import load_adapter, load_base, load_tokenizer, peft_config_from

    tokenizer = load_tokenizer(cfg.source_model)
    torch.manual_seed(0)
    model = get_peft_model(load_base(cfg.source_model, dtype="float32"),
                           peft_config_from(cfg, cfg.source_model, peft_type=cfg.source_peft_type))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(out)
    reloaded = load_adapter(load_base(cfg.source_model, dtype="float32"), out, cfg.source_model)
    torch.testing.assert_close(_logits(reloaded, tokenizer, INPUTS), _logits(model, tokenizer, INPUTS))
    with reloaded.disable_adapter():
        plain = _logits(reloaded, tokenizer, INPUTS)
    assert not torch.allclose(plain, _logits(reloaded, tokenizer, INPUTS)), "the source adapter must do something"
    return reloaded, tokenizer


@pytest.mark.parametrize("source_type, target_type, target, kd_loss", [
    ("lora", "dora", "llama2", "forward_kl"),
    ("lora", "prompt_tuning", "gemma", "sequence"),
    ("prompt_tuning", "lora", "gemma", "sequence"),
    ("dora", "lora", "llama2", "jsd"),
    ("ia3", "prefix_tuning", "gemma", "sequence"),
    ("prefix_tuning", "ia3", "llama2", "reverse_kl"),
])
def test_transfer_between_peft_types(bases, tmp_path, source_type, target_type, target, kd_loss):
    from datasets import Dataset
    from peft import PeftModel

    from peft_transfer.data import task_prompt
    from peft_transfer.distillation import DistillationConfig, DistillationTrainer
    from peft_transfer.labelling import label
    from peft_transfer.modeling import load_adapter, load_base, load_tokenizer, peft_config_from

    cfg = _config(bases, tmp_path, source_peft_type=source_type, peft_type=target_type, target_model=bases[target],
                  kd_loss=kd_loss)
    teacher, teacher_tok = _source_adapter(cfg, str(tmp_path / "source_adapter"))
    labels = label(cfg, teacher, teacher_tok, INPUTS, show_progress=False)
    assert all(r["completion"] for r in labels)

    student_tok = load_tokenizer(cfg.target_model)
    rows = [{"prompt": task_prompt(student_tok, r["input"], cfg.prompt_template), "completion": r["completion"]}
            for r in labels]
    peft_config = peft_config_from(cfg, cfg.target_model)
    args = DistillationConfig(
        output_dir=str(tmp_path / "trainer"), kd_loss=kd_loss, sequence_weight=0.5 if kd_loss == "jsd" else 0.0,
        learning_rate=2e-3 if target_type in ("prompt_tuning", "prefix_tuning") else 1e-2,  # paper: 2e-3 for prompts
        per_device_train_batch_size=4, max_steps=2, bf16=False, gradient_checkpointing=False, report_to=[],
        save_strategy="no", disable_tqdm=True, logging_steps=1,
    )
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = DistillationTrainer(
        model=load_base(cfg.target_model, dtype="float32"), teacher_model=teacher if kd_loss != "sequence" else None,
        args=args, train_dataset=Dataset.from_list(rows), processing_class=student_tok, peft_config=peft_config,
        teacher_processing_class=teacher_tok,
    )
    assert isinstance(trainer.model, PeftModel)
    peft_type = trainer.model.active_peft_config.peft_type.value.lower()
    assert peft_type == ("lora" if target_type == "dora" else target_type)
    assert trainer.model.active_peft_config.to_dict().get("use_dora", False) == (target_type == "dora")
    trainer.train()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items()), "the teacher must not change"
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))

    out = str(tmp_path / "target_adapter")
    trainer.model.save_pretrained(out)  # as the pipeline does
    model = trainer.model.eval()
    reloaded = load_adapter(load_base(cfg.target_model, dtype="float32"), out, cfg.target_model)
    texts = [row["prompt"] + row["completion"] for row in rows]
    torch.testing.assert_close(_logits(reloaded, student_tok, texts), _logits(model, student_tok, texts))
    with model.disable_adapter():
        plain = _logits(model, student_tok, texts)
    assert not torch.allclose(plain, _logits(reloaded, student_tok, texts)), "the new adapter must have been trained"


@pytest.mark.parametrize("targets", [None, "all-linear", ["all-linear"], ["q_proj", "v_proj"], ["v_proj"]])
def test_lora_target_modules_names_modules_or_every_linear_layer(config_only, untrained, targets):
    """`all-linear` (the default, a recipe's string or a one-entry list) reaches PEFT as its shorthand: every linear
    layer of the blocks gets LoRA, the output head none; module names stay names (one name is not read as a regex)."""
    import copy

    from peft import get_peft_model

    from peft_transfer.modeling import peft_config_from

    cfg = config_only() if targets is None else config_only(lora_target_modules=targets)
    model = get_peft_model(copy.deepcopy(untrained["teacher"]), peft_config_from(cfg))
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    linear = {name.rsplit(".", 1)[-1] for name, module in untrained["teacher"].named_modules()
              if isinstance(module, torch.nn.Linear) and name != "lm_head"}
    assert adapted == (linear if targets is None or "all-linear" in targets else set(targets))
    assert {"q_proj", "v_proj", "down_proj"} <= linear


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj", "down_proj"]])
def test_ia3_scales_the_input_of_mlp_layers_and_the_output_of_the_others(config_only, untrained, targets):
    """(IA)³ on `all-linear` or on named modules: the MLP's linear layers are its feedforward ones (their input is
    scaled, a vector as wide as the layer's input), the attention projections are not."""
    import copy

    from peft import get_peft_model

    from peft_transfer.modeling import peft_config_from

    cfg = config_only(peft_type="ia3", lora_target_modules=targets)
    model = get_peft_model(copy.deepcopy(untrained["teacher"]), peft_config_from(cfg))
    layers = {name: module for name, module in model.named_modules() if hasattr(module, "ia3_l")}
    assert layers
    feedforward = {name.rsplit(".", 1)[-1] for name, module in layers.items() if module.is_feedforward}
    other = {name.rsplit(".", 1)[-1] for name, module in layers.items() if not module.is_feedforward}
    if targets == "all-linear":
        assert feedforward == {"gate_proj", "up_proj", "down_proj"} and {"q_proj", "v_proj", "o_proj"} <= other
    else:
        assert feedforward == {"down_proj"} and other == {"q_proj", "v_proj"}
    for module in layers.values():
        width = module.in_features if module.is_feedforward else module.out_features
        assert module.ia3_l["default"].numel() == width
