"""The teacher's labels: one answer (the paper's), or self-consistency over several votes."""

import bisect
import math

import pytest

from peft_transfer import Transfer
from peft_transfer.errors import ConfigError
from peft_transfer.rundir import RunDir, read_json


def _scripted_generate(script):
    """A `generate` that answers each prompt from `script[prompt]`, one answer per call in turn."""
    calls = []

    def generate(model, tokenizer, prompts, *, do_sample=False, temperature=1.0, **kwargs):
        calls.append((len(prompts), do_sample, temperature))
        return [(" " + script[p].pop(0) + "\n", True) for p in prompts]

    return generate, calls


def test_votes_pick_the_most_frequent_answer_ties_to_the_first(config_only, monkeypatch):
    from peft_transfer import labelling

    cfg = config_only(label_votes=4, label_temperature=0.5, prompt_template="{input}")
    script = {"a": ["1", "2", "2", "3"], "b": ["7", "8", "8", "7"], "c": ["5", "5", "5", "5"]}
    generate, calls = _scripted_generate(script)
    monkeypatch.setattr(labelling, "generate", generate)
    monkeypatch.setattr(labelling, "task_prompt", lambda tok, x, template: x)
    rows = labelling.label(cfg, None, None, ["a", "b", "c"], show_progress=False)
    assert [(r["answer"], r["agreement"]) for r in rows] == [("2", 0.5), ("7", 0.5), ("5", 1.0)]
    assert rows[0]["completion"] == " 2"  # as the teacher wrote it
    # The first answer greedy (the paper's), the 3 further votes sampled at label_temperature, batched over inputs.
    assert calls == [(3, False, 1.0), (9, True, 0.5)]


def test_one_vote_is_the_papers_single_answer(config_only, monkeypatch):
    from peft_transfer import labelling

    generate, calls = _scripted_generate({"a": ["4"]})
    monkeypatch.setattr(labelling, "generate", generate)
    monkeypatch.setattr(labelling, "task_prompt", lambda tok, x, template: x)
    rows = labelling.label(config_only(), None, None, ["a"], show_progress=False)
    assert rows == [{"input": "a", "completion": " 4", "answer": "4"}] and calls == [(1, False, 1.0)]


@pytest.mark.parametrize("overrides", [dict(label_votes=0), dict(label_votes=3, label_temperature=0.0),
                                       dict(label_votes=3, label_min_agreement=1.5), dict(label_min_agreement=0.5),
                                       dict(label_selection_ratio=0.0), dict(label_selection_ratio=1.5),
                                       dict(label_selection_strata=0)])
def test_vote_settings_are_checked(config_only, overrides):
    with pytest.raises(ConfigError):
        config_only(**overrides)


def test_labels_stage_drops_disagreed_inputs_and_reports_agreement(make_config, run_dir, monkeypatch):
    from datasets import load_from_disk

    from peft_transfer import labelling
    from peft_transfer.errors import UserError

    # float32: in bf16 the tiny teacher's logits tie often, and a tie splits the sampled votes from the greedy one on
    # nearly every input (all 12 dropped on a CPU with AMX), which is bf16 rounding, not what this test is about.
    cfg = make_config(output_dir=str(run_dir), eval_file=None, label_votes=3, label_min_agreement=0.6,
                      label_temperature=0.3, dtype="float32")
    Transfer(cfg, show_progress=False).run(stages=("synthesis", "labels"))
    dirs = RunDir(str(run_dir))
    stats, kept = read_json(dirs.label_stats), load_from_disk(dirs.labels)
    assert stats["votes"] == 3 and stats["labelled"] == cfg.num_samples
    assert stats["dropped"] == cfg.num_samples - len(kept) and all(a >= 0.6 for a in kept["agreement"])
    assert stats["unanimous"] <= stats["agreement"] <= 1.0
    assert Transfer(cfg, show_progress=False).report()["labels"] == stats
    # The vote settings are part of the labels' fingerprint: other votes are other labels.
    assert read_json(dirs.stage_record("labels"))["settings"]["label_votes"] == 3

    # A teacher that never agrees with itself: one clear error, the synthesis kept, no labels left half-made.
    def disagreeing(cfg, teacher, tokenizer, inputs, **kwargs):
        return [{"input": x, "completion": " 1", "answer": "1", "agreement": 1 / 3} for x in inputs]

    import shutil

    monkeypatch.setattr(labelling, "label", disagreeing)
    shutil.rmtree(dirs.labels)
    with pytest.raises(UserError, match="dropped all 12 inputs"):
        Transfer(cfg, show_progress=False).run(stages=("labels",))
    assert dirs.finished("synthesis") and not dirs.finished("labels")


def test_labels_stage_keeps_the_inputs_the_teacher_is_surest_of(make_config, run_dir):
    from datasets import load_from_disk

    cfg = make_config(output_dir=str(run_dir), eval_file=None, label_selection_ratio=0.5)
    Transfer(cfg, show_progress=False).run(stages=("synthesis", "labels"))
    dirs = RunDir(str(run_dir))
    stats, kept = read_json(dirs.label_stats), load_from_disk(dirs.labels)
    accepted = load_from_disk(dirs.accepted)["input"]
    assert stats["labelled"] == cfg.num_samples and stats["selected"] == len(kept) == 6
    assert stats["dropped_unsure"] == cfg.num_samples - 6
    # The kept are the surest, in the order synthesis accepted them; every one at or above the threshold.
    assert min(kept["confidence"]) == stats["confidence_threshold"] and all(c <= 0 for c in kept["confidence"])
    positions = [accepted.index(x) for x in kept["input"]]
    assert positions == sorted(positions)
    from peft_transfer.evaluation import format_report

    assert "Labels: 12 answers; the surest 6 kept (50%, 6 dropped)" in format_report(
        Transfer(cfg, show_progress=False).report())
    # Part of the labels' fingerprint: another share is other labels.
    assert read_json(dirs.stage_record("labels"))["settings"]["label_selection_ratio"] == 0.5


def test_surest_indices_keep_each_length_groups_share():
    from peft_transfer.labelling import surest_indices

    # Ten inputs; the teacher is surer the shorter the input, as it is of short word lists.
    lengths = [30, 10, 50, 20, 40, 35, 15, 45, 25, 5]
    confidence = [-length / 10 for length in lengths]
    assert surest_indices(confidence, 4) == [1, 3, 6, 9]  # one ranking: the four shortest
    assert surest_indices(confidence, 4, lengths=lengths, strata=1) == [1, 3, 6, 9]
    # Two groups by length (5, 10, 15, 20, 25 | 30, 35, 40, 45, 50): the surer (shorter) two of each.
    assert surest_indices(confidence, 4, lengths=lengths, strata=2) == [0, 1, 5, 9]
    # Quotas by largest remainder add up to `keep`; a share is kept within each group whatever the confidence.
    confidence = [0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0]
    chosen = surest_indices(confidence, 5, lengths=lengths, strata=3)
    assert len(chosen) == 5 and chosen == sorted(chosen)
    groups = [[9, 1, 6, 3], [8, 0, 5], [4, 7, 2]]  # at the length quantiles: 5 10 15 20 | 25 30 35 | 40 45 50
    assert [len(set(g) & set(chosen)) for g in groups] == [2, 2, 1]
    assert chosen == [0, 1, 2, 3, 5]
    # Inputs of one length stay together: with a single length the selection is the one ranking's.
    confidence = [-3.0, 0.0, -1.0, -2.0, 0.5, -0.5]
    assert surest_indices(confidence, 3, lengths=[7] * 6, strata=4) == surest_indices(confidence, 3) == [1, 4, 5]
    # Lengths 1 1 1 1 2 2 into two groups: [0..3] (length 1) and [4, 5]; shares 2 and 1.
    assert surest_indices(confidence, 3, lengths=[1, 1, 1, 1, 2, 2], strata=2) == [1, 2, 4]
    with pytest.raises(ValueError, match="one length per input"):
        surest_indices([0.0, 1.0], 1, strata=2)


def test_labels_stage_keeps_the_surer_share_within_each_length_group(make_config, run_dir):
    from datasets import load_from_disk

    cfg = make_config(output_dir=str(run_dir), eval_file=None, label_selection_ratio=0.5, label_selection_strata=2)
    Transfer(cfg, show_progress=False).run(stages=("synthesis", "labels"))
    dirs = RunDir(str(run_dir))
    stats, kept = read_json(dirs.label_stats), load_from_disk(dirs.labels)
    accepted = load_from_disk(dirs.accepted)["input"]
    assert stats["strata"] == 2 and stats["selected"] == len(kept) == 6
    # The shorter group: the inputs with fewer than half of the 12 shorter than them (ties stay together, so the
    # group may hold 5 or 7); it keeps its share of the 6, a half rounded up (largest remainder, ties to the first).
    ordered = sorted(len(x) for x in accepted)
    shorter = {x for x in accepted if bisect.bisect_left(ordered, len(x)) * 2 < len(accepted)}
    assert 0 < len(shorter) < len(accepted)
    assert sum(x in shorter for x in kept["input"]) == math.floor(6 * len(shorter) / len(accepted) + 0.5)
    assert read_json(dirs.stage_record("labels"))["settings"]["label_selection_strata"] == 2
    from peft_transfer.evaluation import format_report

    assert "the surest 6 kept (50%, 6 dropped, a share in each of 2 groups by length)" in format_report(
        Transfer(cfg, show_progress=False).report())
