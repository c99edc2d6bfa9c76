"""TiTok-style token selection: the teacher's contrastive excess per token, carried across tokenizers, and the
training rows whose loss is on the top tokens by it."""

import pytest
import torch


@pytest.fixture(scope="module")
def teacher(untrained):
    """The untrained Llama-style teacher with a LoRA whose B matrices are random: the adapter changes the output."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    import copy

    model = get_peft_model(copy.deepcopy(untrained["teacher"]), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    return model.eval(), untrained["source_tok"]


def test_excess_is_adapter_minus_base_log_probability_per_completion_token(teacher):
    from peft_transfer.selection import token_excess

    model, tok = teacher
    prompts, completions = ["Sort: b a\nAnswer:", "x\nAnswer:"], [" a b", " yes indeed"]
    spans = token_excess(model, tok, prompts, completions, batch_size=2)
    for p, c, row in zip(prompts, completions, spans):
        assert row and row[0][0] <= 0 < row[0][1] and row[-1][1] == len(c)  # the spans cover the completion
        assert all(a < b for a, b, _ in row)
        # One row alone, computed by hand: the same numbers (padding does not change them).
        ids = tok(p + c, return_tensors="pt", return_offsets_mapping=True)
        offsets = ids.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            lp = torch.log_softmax(model(**ids).logits[0, :-1].float(), -1)
            with model.disable_adapter():
                lp0 = torch.log_softmax(model(**ids).logits[0, :-1].float(), -1)
        target = ids["input_ids"][0, 1:]
        expected = [(lp[j - 1, target[j - 1]] - lp0[j - 1, target[j - 1]]).item()
                    for j, (s, e) in enumerate(offsets) if j > 0 and e > len(p) and e > s]
        assert [x for _, _, x in row] == pytest.approx(expected, abs=1e-4)
    assert any(abs(x) > 1e-3 for row in spans for _, _, x in row)  # the adapter does change the scores


def test_answer_confidence_is_the_mean_log_probability_of_the_answer_tokens(teacher):
    from peft_transfer.selection import answer_confidence, token_excess

    model, tok = teacher
    prompts, completions = ["Sort: b a\nAnswer:", "x\nAnswer:", "y\nAnswer:"], [" a b", " yes indeed", ""]
    confidence = answer_confidence(model, tok, prompts, completions, batch_size=2)
    assert confidence[2] == float("-inf")  # an empty answer ranks last
    for p, c, got in zip(prompts[:2], completions[:2], confidence):
        ids = tok(p + c, return_tensors="pt", return_offsets_mapping=True)
        offsets = ids.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            lp = torch.log_softmax(model(**ids).logits[0, :-1].float(), -1)
        target = ids["input_ids"][0, 1:]
        expected = [lp[j - 1, target[j - 1]].item()
                    for j, (s, e) in enumerate(offsets) if j > 0 and e > len(p) and e > s]
        assert got == pytest.approx(sum(expected) / len(expected), abs=1e-4) and got < 0
    # The shared pass leaves the excess as it was: same spans, one per completion token.
    assert [len(r) for r in token_excess(model, tok, prompts[:2], completions[:2])] == [
        len(tok(p + c)["input_ids"]) - len(tok(p)["input_ids"]) for p, c in zip(prompts[:2], completions[:2])]


def test_selected_row_keeps_the_top_tokens_and_the_end_of_sequence(untrained):
    from peft_transfer.selection import selected_row

    tok = untrained["target_tok"]  # another tokenizer than the teacher's: spans are characters, not tokens
    prompt, completion = "Sort: d c b a\nAnswer:", " a b c d"
    # Teacher spans in completion characters: high excess on "c", low elsewhere.
    spans = [(0, 2, 0.1), (2, 4, -1.0), (4, 6, 3.0), (6, 8, 0.2)]
    full = selected_row(tok, prompt, completion, spans, ratio=1.0)
    few = selected_row(tok, prompt, completion, spans, ratio=0.25)
    assert full["input_ids"] == few["input_ids"] == tok(prompt + completion + tok.eos_token)["input_ids"]
    kept_all = [j for j, t in enumerate(full["labels"]) if t != -100]
    kept_few = [j for j, t in enumerate(few["labels"]) if t != -100]
    assert set(kept_few) < set(kept_all) and few["labels"][-1] == tok.eos_token_id  # the end is always learnt
    assert len(kept_all) > len(kept_few) >= 2
    # The kept completion token is the one over the "c" span (characters 4-6 of the completion).
    ids = tok(prompt + completion + tok.eos_token, return_offsets_mapping=True)
    s, e = ids["offset_mapping"][kept_few[0]]
    assert "c" in (prompt + completion)[s:e]
    assert all(few["labels"][j] == -100 for j in range(len(tok(prompt)["input_ids"]) - 1))  # never the prompt


def test_ratio_is_checked(config_only):
    from peft_transfer.errors import ConfigError

    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="token_selection_ratio"):
            config_only(token_selection_ratio=bad)


def test_transfer_with_token_selection_trains_on_fewer_tokens(make_config, run_dir):
    from peft_transfer import Transfer
    from peft_transfer.rundir import SELECTION, RunDir, read_json

    cfg = make_config(output_dir=str(run_dir), eval_file=None, token_selection_ratio=0.5)
    Transfer(cfg, show_progress=False).run()
    dirs = RunDir(str(run_dir))
    import os

    stats = read_json(os.path.join(dirs.target_adapter, SELECTION))
    assert stats["token_selection_ratio"] == 0.5 and stats["tokens_with_loss"] > 0
    record = read_json(dirs.stage_record("target_adapter"))
    assert record["settings"]["token_selection_ratio"] == 0.5 and "source_adapter" in record["reads"]


def test_titok_curriculum_generates_with_the_source_adapter(make_config, run_dir, monkeypatch):
    """TiTok's curriculum: the source base with its adapter writes the inputs, no discriminator."""
    from peft_transfer import Transfer
    from peft_transfer.errors import ConfigError
    from peft_transfer.modeling import ModelPool
    from peft_transfer.rundir import RunDir, read_json

    with pytest.raises(ConfigError, match="generate_with_source_adapter"):
        make_config(generate_with_source_adapter=True, generator_model="some/other-model")
    leases = []
    lease = ModelPool.lease

    def spy(self, ref, adapter=None):
        leases.append((ref, adapter))
        return lease(self, ref, adapter)

    monkeypatch.setattr(ModelPool, "lease", spy)
    cfg = make_config(output_dir=str(run_dir), eval_file=None, filter_mode="none", generate_with_source_adapter=True)
    Transfer(cfg, show_progress=False).run(stages=("synthesis",))
    dirs = RunDir(str(run_dir))
    assert leases[0] == (cfg.source_model, dirs.source_adapter)
    record = read_json(dirs.stage_record("synthesis"))
    assert record["settings"]["generator"] == cfg.source_model and "source_adapter" in record["reads"]


def test_answer_confidence_reads_past_a_prompt_tuned_teachers_virtual_tokens(untrained):
    import copy

    from peft import PromptTuningConfig, get_peft_model

    from peft_transfer.selection import answer_confidence

    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(untrained["teacher"]),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    tok = untrained["source_tok"]
    prompts, completions = ["Sort: b a\nAnswer:", "x\nAnswer:"], [" a b", " yes indeed"]
    confidence = answer_confidence(model, tok, prompts, completions, batch_size=2)
    for p, c, got in zip(prompts, completions, confidence):
        ids = tok(p + c, return_tensors="pt", return_offsets_mapping=True)
        offsets = ids.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            lp = torch.log_softmax(model(**ids).logits[0, 3:-1].float(), -1)  # after the 3 virtual tokens
        target = ids["input_ids"][0, 1:]
        expected = [lp[j - 1, target[j - 1]].item()
                    for j, (s, e) in enumerate(offsets) if j > 0 and e > len(p) and e > s]
        assert got == pytest.approx(sum(expected) / len(expected), abs=1e-4)
