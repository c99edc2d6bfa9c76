"""`DistillationTrainer` on tiny untrained Llama-style models that share one locally trained vocabulary.

Every loss path is checked against the plain full-logits losses of `peft_transfer.distillation.losses` (themselves tested against
float64), then trained for a step: gradients reach only the student's adapter and the teacher stays bit-identical.
"""

import json
import os

import pytest
import torch

from peft_transfer.distillation import DistillationConfig, DistillationTrainer

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
WORDS = ["dcba", "zyx", "hello", "world", "qwerty", "plane", "abc", "train"]


@pytest.fixture(scope="module")
def kd_world(tmp_path_factory):
    """Teacher base + LoRA (random, non-zero) and a smaller student base, one tokenizer; all saved to disk."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from peft_transfer.worlds.tiny_models import FAMILIES, TinyFamily, build_family, build_model, save_family

    root = tmp_path_factory.mktemp("kd")
    teacher_base = build_family("tiny-llama", str(root / "teacher_base"), num_docs=300)
    tokenizer = AutoTokenizer.from_pretrained(teacher_base)
    # A different width than the teacher: token-level KD only needs the vocabulary to match.
    student = build_model(TinyFamily("student", "llama", hidden_size=48, intermediate_size=96), tokenizer, seed=1)
    save_family(student, tokenizer, str(root / "student_base"))
    torch.manual_seed(0)
    teacher = get_peft_model(build_model(FAMILIES["tiny-llama"], tokenizer, seed=0),
                             LoraConfig(**LORA, init_lora_weights=False, lora_dropout=0.5))
    teacher.save_pretrained(root / "teacher_adapter")
    return {"teacher_base": teacher_base, "teacher_adapter": str(root / "teacher_adapter"),
            "student_base": str(root / "student_base"), "tokenizer": tokenizer}


def _dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": f"Sort the letters: {w}\nAnswer:", "completion": " " + "".join(sorted(w))}
                              for w in WORDS])


def _args(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, learning_rate=1e-2,
                    report_to=[], bf16=False, gradient_checkpointing=False, disable_tqdm=True, save_strategy="no",
                    logging_steps=1, kd_chunk_size=5)
    settings.update(overrides)
    return DistillationConfig(**settings)


def _base(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _teacher(world):
    from peft import PeftModel

    return PeftModel.from_pretrained(_base(world["teacher_base"]), world["teacher_adapter"]).eval()


def _trainer(world, tmp_path, *, teacher="peft", model=None, peft_config="lora", lineage=None, **overrides):
    from peft import LoraConfig

    if teacher == "peft":
        teacher = _teacher(world)
    kwargs = {} if isinstance(teacher, str) or teacher is None else {"teacher_processing_class": world["tokenizer"]}
    kwargs["lineage"] = lineage
    return DistillationTrainer(
        model=model if model is not None else _base(world["student_base"]),
        teacher_model=teacher,
        args=_args(tmp_path, **overrides),
        train_dataset=_dataset(),
        processing_class=world["tokenizer"],
        peft_config=LoraConfig(**LORA) if peft_config == "lora" else peft_config,
        **kwargs,
    )


def _batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v.to(trainer.model.device) for k, v in batch.items()}


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _reference(student, teacher, batch, args, num_items_in_batch=None):
    """The same loss from full logits (`mixed_loss`), the last L positions (prompt-learning adapters prepend P)."""
    from peft_transfer.distillation.losses import mixed_loss, sequence_loss

    length = batch["labels"].shape[1]
    student_logits = _logits(student, batch)[:, -length:]
    if args.kd_loss == "sequence":
        return sequence_loss(student_logits, batch["labels"], num_items_in_batch=num_items_in_batch)
    return mixed_loss(student_logits, _logits(teacher, batch)[:, -length:], batch["labels"],
                      sequence_weight=args.sequence_weight, kind=args.kd_loss, beta=args.beta,
                      temperature=args.kd_temperature, num_items_in_batch=num_items_in_batch)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed"


# -- configuration -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, match", [
    (dict(kd_loss="kl"), "kd_loss"), (dict(sequence_weight=1.5), "sequence_weight"), (dict(beta=-0.1), "beta"),
    (dict(kd_temperature=0.0), "kd_temperature"), (dict(kd_chunk_size=0), "kd_chunk_size"),
])
def test_config_rejects_impossible_settings(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **bad)


# -- every loss path -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [
    dict(kd_loss="sequence"),
    dict(kd_loss="forward_kl"),
    dict(kd_loss="reverse_kl", kd_temperature=2.0),
    dict(kd_loss="jsd", beta=0.3),
    dict(kd_loss="jsd", beta=0.7, sequence_weight=0.4, kd_temperature=1.5),  # the weighted mix
], ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_each_loss_matches_full_logits_and_trains_only_the_student_adapter(kd_world, tmp_path, settings):
    teacher = _teacher(kd_world)
    trainer = _trainer(kd_world, tmp_path, teacher=teacher, **settings)
    model, batch = trainer.model, _batch(trainer)
    model.eval()  # the reference runs in eval mode; the student has no dropout, the teacher's is off anyway

    loss = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(loss, _reference(model, teacher, batch, trainer.args), rtol=1e-5, atol=1e-6)
    # Gradient accumulation: `num_items_in_batch` turns the mean into sum / num_items_in_batch.
    loss_7 = trainer.compute_loss(model, dict(batch), num_items_in_batch=7)
    torch.testing.assert_close(loss_7, _reference(model, teacher, batch, trainer.args, num_items_in_batch=7),
                               rtol=1e-5, atol=1e-6)

    # Gradients reach exactly the student's adapter (its B matrices are non-zero at once); nothing else has one.
    model.train()
    trainer.compute_loss(model, dict(batch)).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad if "lora_B" in n)
    assert all(p.grad is None for p in teacher.parameters())
    model.zero_grad(set_to_none=True)

    teacher_before, student_before = _snapshot(teacher), _snapshot(model)
    trainer.train()
    _assert_unchanged(teacher_before, teacher)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, student_before[k])}
    assert changed and all("lora_" in k for k in changed), changed
    history = trainer.state.log_history[0]
    assert torch.isfinite(torch.tensor(history["loss"]))
    if settings["kd_loss"] != "sequence":
        assert "kd/divergence" in history and "kd/cross_entropy" in history


def test_gradient_accumulation_matches_one_big_batch(kd_world, tmp_path):
    """2 micro-batches of 2 with accumulation = 1 batch of 4: the loss is normalised by `num_items_in_batch`."""
    params = []
    for i, (batch_size, steps) in enumerate([(4, 1), (2, 2)]):
        trainer = _trainer(kd_world, tmp_path / str(i), kd_loss="jsd", sequence_weight=0.3, optim="sgd",
                           learning_rate=10.0, per_device_train_batch_size=batch_size,
                           gradient_accumulation_steps=steps, peft_config=_lora(init_lora_weights=False))
        trainer.train()
        params.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
    for name, value in params[0].items():
        torch.testing.assert_close(params[1][name], value, rtol=1e-4, atol=1e-6)


def test_student_lm_head_in_modules_to_save(kd_world, tmp_path):
    """A trained copy of lm_head (`modules_to_save`) is the one the chunked loss reads and trains."""
    teacher = _teacher(kd_world)
    trainer = _trainer(kd_world, tmp_path, teacher=teacher, kd_loss="forward_kl",
                       peft_config=_lora(modules_to_save=["lm_head"]))
    with torch.no_grad():
        trainer.model.get_output_embeddings().weight.mul_(3.0)  # the copy now differs from the frozen original
    batch = _batch(trainer)
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(loss, _reference(trainer.model, teacher, batch, trainer.args), rtol=1e-5, atol=1e-6)
    loss.backward()
    grads = {n for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert any("lm_head.modules_to_save" in n for n in grads), grads


def test_gemma2_style_logit_softcapping_is_applied(kd_world, tmp_path):
    """With hidden states the model's own final-logit soft-capping is bypassed: the trainer must pass it on."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = kd_world["tokenizer"]
    config = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    student = Gemma2ForCausalLM(config)
    with torch.no_grad():
        student.lm_head.weight.mul_(200.0)  # logits of several units, so that the cap at 2 matters
    teacher = _teacher(kd_world)
    trainer = _trainer(kd_world, tmp_path, teacher=teacher, model=student, kd_loss="forward_kl")
    batch = _batch(trainer)
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(loss, _reference(trainer.model, teacher, batch, trainer.args), rtol=1e-5, atol=1e-6)


def test_prompt_learning_student_and_teacher(kd_world, tmp_path):
    """Virtual tokens on both sides (prompt tuning student, prefix tuning teacher): the last L positions are kept."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    torch.manual_seed(0)
    teacher = get_peft_model(_base(kd_world["teacher_base"]),
                             PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")).eval()
    with torch.no_grad():
        for p in teacher.prompt_encoder.parameters():
            p.normal_(0, 1.0)  # a prefix that visibly changes the teacher
    trainer = _trainer(kd_world, tmp_path, teacher=teacher, kd_loss="reverse_kl",
                       peft_config=PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))
    batch = _batch(trainer)
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(loss, _reference(trainer.model, teacher, batch, trainer.args), rtol=1e-5, atol=1e-6)
    before = _snapshot(teacher)
    trainer.train()
    _assert_unchanged(before, teacher)


# -- the teacher in its several forms ------------------------------------------------------------------------------


def test_teacher_as_peft_model_merged_model_or_path_gives_one_loss(kd_world, tmp_path):
    losses = []
    for i, teacher in enumerate([_teacher(kd_world), _teacher(kd_world).merge_and_unload(),
                                 kd_world["teacher_base"]]):
        extra = {"teacher_adapter": kd_world["teacher_adapter"]} if isinstance(teacher, str) else {}
        trainer = DistillationTrainer(
            model=_base(kd_world["student_base"]), teacher_model=teacher, args=_args(tmp_path / str(i), kd_loss="jsd"),
            train_dataset=_dataset(), processing_class=kd_world["tokenizer"], peft_config=_lora(), **extra,
        )
        assert not trainer.teacher_model.training
        assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
        trainer.model.eval()
        losses.append(trainer.compute_loss(trainer.model, dict(_batch(trainer))))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses[2], losses[0], rtol=1e-5, atol=1e-6)


def _lora(**kw):
    from peft import LoraConfig

    return LoraConfig(**{**LORA, **kw})


def test_one_base_two_adapters(kd_world, tmp_path):
    """The teacher's adapter on the student's own base: teacher forward in eval mode with its adapter, no grad;
    only the student's adapter is trained and saved, and the reloaded student gives the same outputs."""
    from peft import PeftModel

    shared = PeftModel.from_pretrained(_base(kd_world["teacher_base"]), kd_world["teacher_adapter"],
                                       adapter_name="teacher")
    trainer = DistillationTrainer(
        model=shared, teacher_adapter_name="teacher", args=_args(tmp_path, kd_loss="forward_kl", max_steps=2),
        train_dataset=_dataset(), processing_class=kd_world["tokenizer"], peft_config=_lora(init_lora_weights=False),
    )
    model = trainer.model
    assert model.active_adapter == "default"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)

    # The loss equals the one with a separate teacher (base + the same adapter, eval mode). The model stays in
    # train mode here: the teacher's lora_dropout=0.5 must be off during its forward.
    batch = _batch(trainer)
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    model.eval()
    torch.testing.assert_close(loss, _reference(model, _teacher(kd_world), batch, trainer.args), rtol=1e-5, atol=1e-6)
    model.train()
    assert model.active_adapter == "default" and model.training
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable

    teacher_before = {k: v.clone() for k, v in model.state_dict().items() if ".teacher." in k}
    base_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    trainer.train()
    state = model.state_dict()
    assert teacher_before and all(torch.equal(v, state[k]) for k, v in teacher_before.items())
    assert all(torch.equal(v, state[k]) for k, v in base_before.items())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable

    out = tmp_path / "student"
    model.save_pretrained(out)
    assert not (out / "teacher").exists() and (out / "adapter_model.safetensors").exists()
    model.eval()
    reloaded = PeftModel.from_pretrained(_base(kd_world["teacher_base"]), str(out)).eval()
    torch.testing.assert_close(_logits(reloaded, batch), _logits(model, batch))
    with model.disable_adapter():
        assert not torch.allclose(_logits(model, batch), _logits(reloaded, batch)), "the student must have changed"


# -- refusals ------------------------------------------------------------------------------------------------------


def test_token_level_needs_a_teacher(kd_world, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        _trainer(kd_world, tmp_path, teacher=None, kd_loss="forward_kl")
    # The sequence loss does not: the teacher's completions are the labels.
    _trainer(kd_world, tmp_path, teacher=None, kd_loss="sequence")


def test_different_vocabularies_are_refused(kd_world, tmp_path):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from peft_transfer.worlds.corpus import generic_corpus
    from peft_transfer.worlds.tiny_models import build_tokenizer

    other = build_tokenizer("metaspace_bpe", 384, generic_corpus(num_docs=100, seed=1, doc_chars=300))
    with pytest.raises(ValueError, match="tokenizers differ.*kd_loss: sequence"):
        DistillationTrainer(model=_base(kd_world["student_base"]), teacher_model=_teacher(kd_world),
                            teacher_processing_class=other, args=_args(tmp_path, kd_loss="forward_kl"),
                            train_dataset=_dataset(), processing_class=kd_world["tokenizer"], peft_config=_lora())

    # The same tokens under other ids (two tokens swapped) compare unrelated entries: refused too.
    spec = json.loads(kd_world["tokenizer"].backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    a, b = "a", "b"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token="<pad>")
    with pytest.raises(ValueError, match="under different ids"):
        DistillationTrainer(model=_base(kd_world["student_base"]), teacher_model=_teacher(kd_world),
                            teacher_processing_class=swapped, args=_args(tmp_path, kd_loss="jsd"),
                            train_dataset=_dataset(), processing_class=kd_world["tokenizer"], peft_config=_lora())


def test_teacher_sharing_the_students_base_object_is_refused(kd_world, tmp_path):
    from peft import PeftModel

    base = _base(kd_world["teacher_base"])
    teacher = PeftModel.from_pretrained(base, kd_world["teacher_adapter"])
    with pytest.raises(ValueError, match="teacher_adapter_name"):
        _trainer(kd_world, tmp_path, teacher=teacher, model=base, kd_loss="forward_kl")
    with pytest.raises(ValueError, match="not both"):
        DistillationTrainer(model=teacher, teacher_model=_teacher(kd_world), teacher_adapter_name="default",
                            args=_args(tmp_path), train_dataset=_dataset())
    with pytest.raises(ValueError, match="is the active one"):
        DistillationTrainer(model=teacher, teacher_adapter_name="default", args=_args(tmp_path, kd_loss="jsd"),
                            train_dataset=_dataset(), processing_class=kd_world["tokenizer"])


# -- model card ----------------------------------------------------------------------------------------------------


def test_model_card_cites_the_paper_and_records_the_lineage(kd_world, tmp_path):
    lineage = {"source_model": "org/source-7b", "source_adapter": "org/source-lora", "num_accepted": 12}
    trainer = _trainer(kd_world, tmp_path, teacher=kd_world["teacher_base"], lineage=lineage)
    trainer.create_model_card(model_name="transferred")
    card = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    for text in ("2405.17258", "trans-lora", "peft-transfer", "## Transfer lineage", "`org/source-lora`",
                 "| num_accepted | 12 |", "| distillation loss | sequence |", "| student PEFT type | LORA |"):
        assert text in card, text

    # Without `lineage`, the pipeline's transfer.json next to the output is read.
    trainer = _trainer(kd_world, tmp_path / "b", teacher=None)
    os.makedirs(trainer.args.output_dir, exist_ok=True)
    with open(os.path.join(trainer.args.output_dir, "transfer.json"), "w") as f:
        json.dump({"target_model": "org/target-13b", "acceptance_rate": 0.25}, f)
    trainer.create_model_card()
    card = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    assert "`org/target-13b`" in card and "| acceptance_rate | 0.25 |" in card


def test_bf16_left_unset_is_off_on_a_cpu_that_does_not_compute_in_it(monkeypatch, tmp_path):
    from peft_transfer.distillation import models

    plain = dict(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert DistillationConfig(**plain).bf16 is False  # emulated bf16 autocast: twenty times slower here
    assert DistillationConfig(**plain, bf16=True).bf16 is True  # asked for: kept
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert DistillationConfig(**plain).bf16 is True  # TRL's default where the CPU computes in bf16
