"""The pieces of the stages on their own: prompts, parsing, batched generation and scoring, config, recipes."""

import glob
import json
import os
import random

import pytest
import torch

from peft_transfer.data import (
    DataError,
    Deduplicator,
    discriminator_prompt,
    generator_prompt,
    load_examples,
    parse_candidate,
)

# -- data ---------------------------------------------------------------------------------------------------------


def test_generator_prompt_is_the_papers_numbered_list():
    seeds = ["a", "b", "c", "d", "e"]
    prompt = generator_prompt(seeds, random.Random(0))
    lines = prompt.split("\n")
    assert lines[0] == "Here are 10 examples:"
    assert [line[:3] for line in lines[1:6]] == ["1. ", "2. ", "3. ", "4. ", "5. "]
    assert sorted(line[3:] for line in lines[1:6]) == seeds
    assert lines[6] == "6."
    # Seeds are shuffled per prompt.
    orders = {generator_prompt(seeds, random.Random(i)) for i in range(20)}
    assert len(orders) > 5
    # With a pool larger than k, k of them are shown.
    assert generator_prompt(list("abcdefgh"), random.Random(0), k=5).count("\n") == 6


@pytest.mark.parametrize(
    "text, finished, expected",
    [
        (" Sort these letters: b a\n7. Sort these letters: x", False, "Sort these letters: b a"),
        (" Sort these letters: b a\n 7) next", False, "Sort these letters: b a"),
        (" Sort these letters: b a", True, "Sort these letters: b a"),
        (" Sort these letters: b a", False, None),  # cut by the token limit: may be incomplete
        ("   \n7. x", False, None),  # empty item
        (" " + "x" * 50 + "\n7.", False, None),  # over-long
    ],
)
def test_parse_candidate(text, finished, expected):
    assert parse_candidate(text, finished=finished, max_chars=40) == expected


def test_deduplicator_drops_exact_normalized_and_seed_copies():
    dedup = Deduplicator(seeds=["Sort these letters: a b"])
    assert dedup.add("Sort these letters: c d")
    assert not dedup.add("sort these  letters :C D")  # normalized duplicate: case and spaces
    assert not dedup.add("Sort these letters: a b")  # seed copy
    assert dedup.dropped == {"duplicate": 1, "seed_copy": 1}


def test_deduplicator_keeps_inputs_that_differ_in_punctuation():
    # In bracket and arithmetic tasks the marks are the input: none of these is a copy of another.
    dedup = Deduplicator(seeds=["Complete the brackets: ( { } <"])
    assert dedup.add("Complete the brackets: ( < } {")
    assert dedup.add("Complete the brackets: [ [")
    assert dedup.add("((-8 + 8) + (4 * -4)) =")
    assert dedup.add("((8 - 8) * (4 + 4)) =")
    assert not dedup.add("Complete the brackets: ({}<")  # the seed, spaced differently
    assert dedup.dropped == {"duplicate": 0, "seed_copy": 1}


def test_discriminator_prompt_plain_and_chat(tiny_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_world["source_model"])
    assert discriminator_prompt(tok, "x = 1", "toy") == "x = 1\nIs the above question from the toy dataset?"
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    chat = discriminator_prompt(tok, "x = 1", "toy")
    assert chat.startswith("<user>Answer in as few words as possible.\nx = 1\nIs the above question from the toy")
    assert chat.endswith("<assistant>")


def test_load_examples_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no examples"):
        load_examples(str(empty))
    no_target = tmp_path / "t.jsonl"
    no_target.write_text(json.dumps({"input": "q"}) + "\n")
    assert load_examples(str(no_target)) == [{"input": "q"}]
    with pytest.raises(DataError, match="no string 'target' field"):
        load_examples(str(no_target), require_target=True)


# -- batched generation and scoring equal their one-at-a-time versions ---------------------------------------------


@pytest.fixture(scope="module")
def llama(tiny_world):
    from peft_transfer.modeling import load_base, load_tokenizer

    # float32: the checks below compare batched with unbatched forwards, which bf16 rounding would blur.
    return load_base(tiny_world["source_model"], device="cpu", dtype="float32"), load_tokenizer(tiny_world["source_model"])


def test_batched_greedy_generation_equals_one_at_a_time(llama):
    from peft_transfer.generation import generate

    model, tok = llama
    prompts = ["Sort these letters: d c a\nAnswer:", "Here are 10 examples:\n1. What is 3 + 4?\n2.", "Hi"]
    batched = generate(model, tok, prompts, batch_size=8, max_new_tokens=12, show_progress=False)
    single = [generate(model, tok, [p], batch_size=1, max_new_tokens=12, show_progress=False)[0] for p in prompts]
    assert batched == single


def test_static_cache_generation_equals_dynamic(llama):
    from peft_transfer.generation import generate

    model, tok = llama
    prompts = ["Sort these letters: d c a\nAnswer:", "Here are 10 examples:\n1. What is 3 + 4?\n2."]
    dynamic = generate(model, tok, prompts, max_new_tokens=10, show_progress=False)
    model.generation_config.cache_implementation = "static"
    try:
        static = generate(model, tok, prompts, max_new_tokens=10, show_progress=False)
    finally:
        model.generation_config.cache_implementation = None
    assert static == dynamic


def test_stop_strings_end_rows(llama):
    from peft_transfer.generation import generate

    model, tok = llama
    (text, ended), = generate(model, tok, ["Here are 10 examples:\n1. a b\n2. c d\n3."], max_new_tokens=40,
                              do_sample=True, stop_strings=["\n"], show_progress=False)
    assert ended == ("\n" in text or text != "")


def test_discriminator_scores_are_the_yes_no_logit_difference(llama):
    from peft_transfer.discriminator import encode_question, score

    model, tok = llama
    texts = ["Sort these letters: b a", "What is 12 + 5?", "A much longer input that needs padding " * 3]
    batched = score(model, tok, texts, "sort letters", batch_size=8, show_progress=False)
    for text, s in zip(texts, batched):
        q = encode_question(tok, text, "sort letters")
        with torch.no_grad():
            logits = model(torch.tensor([q.prefix_ids])).logits[0, -1]
        expected = (torch.log_softmax(logits, -1)[q.yes_id] - torch.log_softmax(logits, -1)[q.no_id]).item()
        assert s == pytest.approx(expected, abs=1e-4)


def test_encode_question_finds_the_first_differing_token(llama):
    from peft_transfer.discriminator import encode_question

    _, tok = llama
    q = encode_question(tok, "x", "t")
    assert q.yes_ids[: len(q.prefix_ids)] == q.prefix_ids == q.no_ids[: len(q.prefix_ids)]
    assert q.yes_id != q.no_id
    assert tok.decode(q.yes_ids[len(q.prefix_ids) :]).strip() == "yes"
    assert tok.decode(q.no_ids[len(q.prefix_ids) :]).strip() == "no"


# -- config and recipes -------------------------------------------------------------------------------------------


def test_config_rejects_impossible_settings(tiny_world):
    from peft_transfer import TransferConfig

    with pytest.raises(ValueError, match="peft_type='lorax'"):
        TransferConfig(**tiny_world, peft_type="lorax")
    with pytest.raises(ValueError, match="candidate_budget .* smaller than num_samples"):
        TransferConfig(**tiny_world, num_samples=100, candidate_budget=10)
    with pytest.raises(ValueError, match="target_model is required"):
        TransferConfig(source_model="x", train_file="t.jsonl")
    with pytest.raises(ValueError, match="Give `source_adapter`, or `train_file`"):
        TransferConfig(source_model="x", target_model="y", seed_file="s.jsonl", discriminator_adapter="d")
    assert TransferConfig(**tiny_world).to_dict()["hub_token"] is None
    assert TransferConfig(**tiny_world, hub_token="hf_secret").to_dict()["hub_token"] == "***"


def test_default_distillation_takes_the_papers_steps_over_the_surer_half_of_eight_times_the_inputs(tiny_world):
    # The paper: 250 accepted inputs, 20 epochs, every label. The default: 2,000 accepted inputs, the 1,000 whose
    # answers the teacher is surest of distilled at the same number of optimizer steps, and a candidate budget that
    # asks the filter for the same pass rate as the paper-era default (5,000 for 250).
    from peft_transfer import TransferConfig

    config = TransferConfig(**tiny_world)
    assert config.num_samples == 2000 and config.label_selection_ratio == 0.5
    assert config.num_samples * config.label_selection_ratio * config.num_train_epochs == 250 * 20
    assert config.candidate_budget / config.num_samples == 5000 / 250


def test_yaml_and_flags_parse_the_trl_way(tmp_path):
    from peft_transfer.cli import parse_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("source_model: s\ntarget_model: t\ntrain_file: x.jsonl\nnum_samples: 40\n"
                      "lora_target_modules: [q_proj]\n")
    config = parse_config(["--config", str(recipe), "--candidate_budget", "900"])
    assert (config.num_samples, config.candidate_budget, config.lora_target_modules) == (40, 900, ["q_proj"])
    recipe.write_text("source_model: s\ntarget_model: t\ntrain_file: x.jsonl\nnum_sample: 40\n")
    with pytest.raises(ValueError, match="num_sample"):
        parse_config(["--config", str(recipe)])


def test_training_fields_by_their_own_names_reach_every_training(tmp_path):
    """Any `DistillationConfig` / `TrainingArguments` field the run does not set itself is a flag or recipe key by its
    own name; it lands in `training_kwargs`, reaches the trainers' arguments and is part of their fingerprints."""
    from peft_transfer.cli import parse_config
    from peft_transfer.errors import ConfigError
    from peft_transfer.stages import stage, training_args

    base = ["--source_model", "s", "--target_model", "t", "--train_file", "x.jsonl"]
    config = parse_config([*base, "--lr_scheduler_type", "cosine", "--max_grad_norm", "0.5", "--learning_rate", "1e-3",
                           "--no_dataloader_pin_memory"])
    assert config.training_kwargs == {"lr_scheduler_type": "cosine", "max_grad_norm": 0.5,
                                      "dataloader_pin_memory": False}
    assert config.learning_rate == 1e-3  # a field of TransferConfig's own, not a training kwarg
    target = training_args(config, str(tmp_path / "t"), learning_rate=config.learning_rate)
    source = training_args(config, str(tmp_path / "s"), learning_rate=config.source_learning_rate)
    for args in (target, source):
        assert (args.lr_scheduler_type.value, args.max_grad_norm, args.dataloader_pin_memory) == ("cosine", 0.5, False)
    assert (target.learning_rate, source.learning_rate) == (1e-3, config.source_learning_rate)
    untouched = training_args(parse_config(base), str(tmp_path / "u"))
    assert (untouched.lr_scheduler_type.value, untouched.max_grad_norm) == ("linear", 1.0)
    for name in ("source_adapter", "discriminator", "target_adapter"):
        assert "training_kwargs" in stage(name).settings(config)
        assert "training_kwargs" not in stage(name).settings(parse_config(base))  # old fingerprints stay valid
    assert "training_kwargs" not in stage("synthesis").settings(config)

    recipe = tmp_path / "r.yaml"
    recipe.write_text("source_model: s\ntarget_model: t\ntrain_file: x.jsonl\noptim: adafactor\n"
                      "training_kwargs: {weight_decay: 0.1}\n")
    assert parse_config(["--config", str(recipe)]).training_kwargs == {"optim": "adafactor", "weight_decay": 0.1}
    from peft_transfer import TransferConfig

    assert TransferConfig.from_yaml(str(recipe)).training_kwargs == {"optim": "adafactor", "weight_decay": 0.1}

    refused = {("--save_strategy", "no"): "checkpoints are the run's: set `save_steps`",
               ("--eval_steps", "5"): "the evaluation stage evaluates the adapters",
               ("--loss_type", "jsd"): "the distillation loss is `kd_loss`",
               ("--lr_schedular_type", "cosine"): "did you mean '--lr_scheduler_type'"}
    for flag, message in refused.items():
        with pytest.raises(ConfigError, match=message):
            parse_config([*base, *flag])
    for kwargs, message in (({"learning_rate": 1.0}, "a setting of its own: set `learning_rate`"),
                            ({"save_total_limit": 2}, "cannot be set"), ({"optimm": "sgd"}, "did you mean 'optim'")):
        with pytest.raises(ConfigError, match=message):
            TransferConfig(source_model="s", target_model="t", train_file="x.jsonl", training_kwargs=kwargs)


RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(RECIPES, "*.yaml"))), ids=os.path.basename)
def test_every_recipe_parses_strictly(path):
    import yaml

    from peft_transfer import TransferConfig

    text = open(path).read()
    assert text.startswith("#") and "launch" in text.split("\n", 1)[0] + text.split("\n", 2)[1], \
        "a recipe opens with a comment that gives its launch command"
    data = yaml.safe_load(text)
    TransferConfig.from_yaml(path)  # unknown keys and impossible settings raise
    assert data


def test_demo_recipes_match_the_embedded_demos():
    from peft_transfer import TransferConfig
    from peft_transfer.demos import REAL_DEMO_SETTINGS, TINY_DEMO_SETTINGS

    # The recipes name their files relative to the repository root.
    root = os.path.dirname(RECIPES)
    for recipe, embedded, keys in (
            ("demo.yaml", REAL_DEMO_SETTINGS, ("source_adapter", "discriminator_adapter", "seed_file", "eval_file")),
            ("demo-tiny.yaml", TINY_DEMO_SETTINGS,
             ("source_model", "target_model", "train_file", "eval_file", "seed_file"))):
        config = TransferConfig.from_yaml(os.path.join(RECIPES, recipe))
        for key in keys:
            setattr(config, key, os.path.join(root, getattr(config, key)))
        assert config == TransferConfig(**embedded), recipe
        assert all(os.path.exists(getattr(config, key)) for key in keys), recipe


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(RECIPES, "accelerate", "*.yaml"))), ids=os.path.basename)
def test_every_accelerate_config_parses(path):
    from accelerate.commands.config.config_args import ClusterConfig

    text = open(path).read()
    assert text.startswith("#") and "accelerate launch" in text.split("\n\n")[0]
    config = ClusterConfig.from_yaml_file(path)
    assert config.num_processes >= 1 and config.mixed_precision == "bf16"
