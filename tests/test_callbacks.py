"""`SyntheticFilterCallback` inside a plain `transformers.Trainer`.

The models are tiny and untrained (no pretraining: the session's `tiny_world` costs minutes), built from the two
families of `peft_transfer.worlds.tiny_models` with their own tokenizers, so teacher and student differ in vocabulary. An
untrained generator would almost never end an item, so the test generator treats a quarter of its vocabulary
as end-of-sequence: its candidates are short random strings that parse, which is all the callback's mechanics need.
The real `synthesize`, `score`, `label` and `Trainer` run; only the quality of the text is not the point here.
"""

import logging
import random

import pytest
import torch

SEEDS = ["sort the letters: b a c", "sort the letters: z y x", "sort the letters: q w e r", "sort the letters: m n o",
         "sort the letters: k j i"]
SETTINGS = dict(task_name="sort_letters", num_samples=8, candidate_budget=400, generation_batch_size=16,
                filter_batch_size=16, max_candidate_tokens=12, label_max_new_tokens=8, max_length=96, seed=0,
                filter_margin=-1e9,  # a random discriminator: accept what parses (filtering is tested elsewhere)
                label_selection_ratio=1.0)  # every label (the selection has its own test)


@pytest.fixture(scope="module")
def models(untrained):
    return untrained


def make_callback(models, **overrides):
    from peft_transfer import SyntheticFilterCallback

    kwargs = dict(seeds=SEEDS, generator=models["generator"], generator_tokenizer=models["target_tok"],
                  discriminator=models["discriminator"], discriminator_tokenizer=models["source_tok"],
                  teacher=models["teacher"], teacher_tokenizer=models["source_tok"],
                  student_tokenizer=models["target_tok"], **SETTINGS)
    return SyntheticFilterCallback(**{**kwargs, **overrides})


def make_trainer(models, callback, tmp_path, **args):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from peft_transfer.worlds.tiny_models import FAMILIES, build_model

    student = get_peft_model(build_model(FAMILIES["tiny-gemma"], models["target_tok"], seed=1),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), **{
        **dict(num_train_epochs=3, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1,
               report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0), **args})
    return Trainer(model=student, args=args, train_dataset=callback.dataset, data_collator=callback.data_collator)


def test_plain_trainer_trains_on_each_refreshed_set_and_logs_the_metrics(models, tmp_path):
    callback = make_callback(models)
    trainer = make_trainer(models, callback, tmp_path)
    # Record what the model really trained on, batch by batch, with the version of the set it came from.
    seen = []
    collate = trainer.data_collator

    def recording(features):
        batch = collate(features)
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            seen.append((callback.dataset.version, tuple(ids[mask.bool()].tolist())))
        return batch

    trainer.data_collator = recording
    callback.attach(trainer)
    rows_by_version = {}
    original_replace = callback.dataset.replace

    def replace(rows, examples):
        original_replace(rows, examples)
        rows_by_version[callback.dataset.version] = sorted(tuple(r["input_ids"]) for r in rows)

    callback.dataset.replace = replace
    trainer.train()

    assert trainer.state.global_step == 3 * 2  # 8 rows, batch 4, 3 epochs: the schedule kept its length
    assert callback.dataset.version == 3  # filled at train begin, refreshed before epochs 2 and 3
    for version in (1, 2, 3):  # each epoch trained on every row of its own set, once
        assert sorted(ids for v, ids in seen if v == version) == rows_by_version[version]
    inputs = [set(h["inputs"]) for h in callback.history]
    assert inputs[0] != inputs[1] and inputs[1] != inputs[2]
    assert [h["step"] for h in callback.history] == [0, 2, 4]

    logged = [entry for entry in trainer.state.log_history if "synthetic/acceptance_rate" in entry]
    assert [entry["step"] for entry in logged] == [0, 2, 4]
    for entry in logged:
        assert entry["synthetic/candidates"] > 0
        assert 0 < entry["synthetic/acceptance_rate"] <= 1
        assert entry["synthetic/accepted"] + entry["synthetic/reused_rows"] == 8
        assert 0 < entry["synthetic/distinct_1"] <= 1
        for key in ("duplicates_dropped", "leaks_dropped", "unparsable", "changed_rows", "distinct_2"):
            assert f"synthetic/{key}" in entry
    assert logged[-1]["synthetic/candidates_total"] == sum(e["synthetic/candidates"] for e in logged)
    assert logged[1]["synthetic/changed_rows"] > 0
    assert any("loss" in entry for entry in trainer.state.log_history)  # training logged as usual beside it


def test_refresh_every_k_steps_changes_the_set_mid_epoch(models, tmp_path):
    callback = make_callback(models)
    trainer = callback.attach(make_trainer(models, callback, tmp_path, num_train_epochs=1))
    callback.refresh_steps = 1
    trainer.train()
    # Step 1 of 2 ends with a refresh; the last step does not (nothing trains on it).
    assert [h["step"] for h in callback.history] == [0, 1]
    assert set(callback.history[0]["inputs"]) != set(callback.history[1]["inputs"])


def test_too_few_accepted_reuses_the_previous_set_without_raising(models, caplog):
    callback = make_callback(models)
    torch.manual_seed(123)
    random.seed(123)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    callback.refresh(0)
    first = list(callback.dataset.examples)
    # The trainer's random streams are untouched by a refresh (synthesis seeds its own).
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state

    callback.refresh(0)
    assert [e["input"] for e in callback.dataset.examples] == [e["input"] for e in first]  # same step, same set

    callback.settings.filter_margin = 1e9  # the discriminator now rejects everything
    callback.settings.candidate_budget = 32
    with caplog.at_level(logging.WARNING, logger="peft_transfer.callbacks"):
        metrics = callback.refresh(7)
    assert "Only 0 of num_samples=8" in caplog.text and "reused from the previous set" in caplog.text
    key = lambda e: (e["input"], e["completion"])  # noqa: E731
    assert sorted(callback.dataset.examples, key=key) == sorted(first, key=key)
    assert metrics["synthetic/accepted"] == 0 and metrics["synthetic/reused_rows"] == 8
    assert metrics["synthetic/candidates"] == 32 and metrics["synthetic/changed_rows"] == 0
    assert len(callback._pending_logs) == 3  # logged through the trainer once one is attached


def test_refresh_keeps_the_labels_the_teacher_is_surest_of_as_the_labels_stage_does(models, monkeypatch):
    # label_selection_ratio 0.5: each refresh accepts num_samples = 8 inputs and trains on the 4 whose answers the
    # teacher is surest of, ranked by the same confidence the labels stage uses; the set's size is fixed at 4.
    from peft_transfer import labelling
    from peft_transfer.selection import answer_confidence

    callback = make_callback(models, label_selection_ratio=0.5)
    assert len(callback.dataset) == 4
    labelled = []
    real_label = labelling.label

    def spy(cfg, teacher, tokenizer, inputs, **kwargs):
        labelled.extend(real_label(cfg, teacher, tokenizer, inputs, **kwargs))
        return labelled[-len(inputs):]

    monkeypatch.setattr("peft_transfer.callbacks.label", spy)
    metrics = callback.refresh(0)
    assert metrics["synthetic/accepted"] == 8 and metrics["synthetic/labels_kept"] == 4
    assert metrics["synthetic/labels_dropped_unsure"] == 4 and metrics["synthetic/reused_rows"] == 0
    prompts = [e["prompt"] for e in callback.dataset.examples]
    assert len(labelled) == 8 and len(prompts) == 4
    from peft_transfer.data import task_prompt

    confidence = answer_confidence(models["teacher"], models["source_tok"],
                                   [task_prompt(models["source_tok"], r["input"], callback.settings.prompt_template)
                                    for r in labelled], [r["completion"] for r in labelled], batch_size=8)
    surest = sorted(range(8), key=lambda i: -confidence[i])[:4]
    assert [e["input"] for e in callback.dataset.examples] == [labelled[i]["input"] for i in sorted(surest)]

    # Answers the teacher's votes do not agree on are dropped first (here every other one); a short set is topped up.
    def voted(cfg, teacher, tokenizer, inputs, **kwargs):
        return [{"input": x, "completion": " a", "answer": "a", "agreement": 1.0 if i % 2 else 1 / 3}
                for i, x in enumerate(inputs)]

    monkeypatch.setattr("peft_transfer.callbacks.label", voted)
    callback = make_callback(models, label_votes=3, label_min_agreement=0.6)
    metrics = callback.refresh(0)
    assert metrics["synthetic/labels_dropped_disagreeing"] == 4 and metrics["synthetic/labels_kept"] == 4
    assert metrics["synthetic/labels_dropped_unsure"] == 0 and metrics["synthetic/reused_rows"] == 4
    assert all(e["agreement"] == 1.0 for e in callback.dataset.examples)


def test_near_copies_of_a_seed_are_dropped_and_counted(models, monkeypatch):
    from peft_transfer import synthesis

    near_copy = "sort the letters: b a d"  # one character away from the first seed
    fresh = [f"arrange {w} in order" for w in ("cat", "dog", "sun", "sky", "sea", "owl", "fox", "elk", "yak")]
    items = [near_copy, *fresh]
    real_generate = synthesis.generate

    def scripted_generate(model, tokenizer, prompts, **kwargs):
        if not prompts[0].startswith("Here are"):  # the teacher's labels: the real thing
            return real_generate(model, tokenizer, prompts, **kwargs)
        return [(f" {items[i % len(items)]}\n7.", True) for i in range(len(prompts))]

    monkeypatch.setattr(synthesis, "generate", scripted_generate)
    metrics = make_callback(models).refresh(0)
    assert metrics["synthetic/leaks_dropped"] == 1
    assert metrics["synthetic/duplicates_dropped"] == 16 - len(items)
    assert metrics["synthetic/accepted"] == 8 and metrics["synthetic/reused_rows"] == 0


def test_rows_match_what_sft_trainer_trains_on(models, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from peft_transfer.callbacks import tokenize_completion
    from peft_transfer.worlds.tiny_models import FAMILIES, build_model

    tok = models["target_tok"]
    rows = [{"prompt": "sort the letters: b a c\nAnswer:", "completion": " a b c"},
            {"prompt": "x y\nAnswer:", "completion": " 12 3"}]
    trainer = SFTTrainer(model=build_model(FAMILIES["tiny-gemma"], tok), processing_class=tok,
                         train_dataset=Dataset.from_list(rows),
                         args=SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=96,
                                        completion_only_loss=True))
    for row, prepared in zip(rows, trainer.train_dataset):
        ours = tokenize_completion(tok, row["prompt"], row["completion"], max_length=96)
        assert ours["input_ids"] == prepared["input_ids"]
        if "labels" in prepared:  # TRL folds the completion mask into labels while preparing the dataset
            assert ours["labels"] == prepared["labels"]
        else:
            assert [label != -100 for label in ours["labels"]] == [bool(m) for m in prepared["completion_mask"]]
        assert ours["labels"][0] == -100 and ours["labels"][-1] == tok.eos_token_id


def test_misuse_is_refused_before_training(models, tmp_path):
    from transformers import Trainer

    with pytest.raises(ValueError, match="discriminator"):
        make_callback(models, discriminator=None)
    callback = make_callback(models)
    trainer = make_trainer(models, callback, tmp_path)
    with pytest.raises(RuntimeError, match="attach"):
        trainer.add_callback(callback)
        trainer.train()
    other = Trainer(model=trainer.model, args=trainer.args, train_dataset=list(callback.dataset.rows or [{}]),
                    data_collator=callback.data_collator)
    with pytest.raises(ValueError, match="train_dataset=callback.dataset"):
        callback.attach(other)
    plain = Trainer(model=trainer.model, args=trainer.args, train_dataset=callback.dataset,
                    processing_class=models["target_tok"])
    with pytest.raises(ValueError, match="data_collator"):
        callback.attach(plain)
