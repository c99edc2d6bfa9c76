"""`report_to`: every stage's figures and the training curves reach the tracker under one run, here TensorBoard
writing into the run directory (read back with TensorBoard's own event reader)."""

import os

import pytest


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(folder, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_every_stage_reports_to_tensorboard_under_one_run(make_config, tmp_path):
    pytest.importorskip("tensorboard")
    from peft_transfer.pipeline import run_transfer
    from peft_transfer.rundir import RunDir, read_json

    cfg = make_config(report_to=["tensorboard"], logging_steps=1, run_name="tracked")
    report = run_transfer(cfg, show_progress=False, print_report=False)
    dirs = RunDir(cfg.output_dir)
    acc = _events(dirs.tracking)
    tags = set(acc.Tags()["scalars"])

    def last(tag):
        return acc.Scalars(tag)[-1].value

    # The training curves of the three training stages, each under its stage's name.
    for stage in ("source_adapter", "discriminator", "target_adapter"):
        assert f"train/{stage}/loss" in tags, (stage, sorted(tags))
    steps = [e.step for e in acc.Scalars("train/target_adapter/loss")]  # logging_steps=1: one point per step
    assert steps == list(range(1, len(steps) + 1))
    # Each stage's figures are the ones its artifacts hold.
    stats = read_json(dirs.synthesis_stats)
    assert last("train/synthesis/acceptance_rate") == pytest.approx(stats["acceptance_rate"])
    assert last("train/synthesis/candidates") == stats["candidates"]
    assert last("train/synthesis/duplicates") == stats["duplicates"]
    assert last("train/discriminator/roc_auc") == pytest.approx(read_json(dirs.discriminator_metrics)["roc_auc"])
    for key in ("source_adapter", "target_base", "transferred"):
        assert last(f"train/evaluation/{key}") == pytest.approx(report["evaluation"][key])
    for stage, info in report["stages"].items():
        assert last(f"train/{stage}/seconds") == pytest.approx(info["seconds"], rel=1e-4)
    # The pass rate of every round, at its round as the step.
    from datasets import load_from_disk

    rounds = load_from_disk(dirs.candidates)["round"]
    assert [e.step for e in acc.Scalars("train/synthesis/pass_rate_per_round")] == sorted(set(rounds))
    # The discriminator's held-out scores and the filter's verdicts as histograms.
    histograms = set(acc.Tags()["histograms"])
    assert {"discriminator/held_out_real_scores", "synthesis/passed_scores"} <= histograms
    real = acc.Histograms("discriminator/held_out_real_scores")[-1].histogram_value
    assert real.num == len(read_json(dirs.discriminator_metrics)["held_out_positive_scores"])
    # One run: every writer wrote into the run's tracking folder, none into the stage folders.
    assert not [p for p, _, files in os.walk(cfg.output_dir) if "tracking" not in p
                and any(f.startswith("events.out.tfevents") for f in files)]


def test_no_tracker_writes_nothing(config_only):
    from peft_transfer.rundir import RunDir
    from peft_transfer.tracking import StageTracker, integrations

    cfg = config_only()
    assert integrations(cfg.report_to) == [] and integrations("none") == []
    tracker = StageTracker(cfg, RunDir(cfg.output_dir))
    tracker.log_stage("synthesis", {"seconds": 1.0})
    tracker.close()
    assert not os.path.exists(RunDir(cfg.output_dir).tracking)


def test_a_tracker_that_is_unknown_or_not_installed_is_refused_before_work(config_only, tmp_path, no_model_loads):
    from peft_transfer import Transfer
    from peft_transfer.errors import UserError
    from peft_transfer.tracking import check_integrations

    check_integrations(["none"])
    with pytest.raises(UserError, match="no tracker transformers knows: 'tensorbord'"):
        check_integrations(["tensorbord"])
    from transformers.integrations import get_available_reporting_integrations

    absent = [n for n in ("wandb", "comet_ml", "neptune") if n not in get_available_reporting_integrations()]
    if absent:
        with pytest.raises(UserError, match=f"report_to asks for {absent[0]}, whose package is not installed"):
            check_integrations([absent[0]])
        (tmp_path / "seeds.jsonl").write_text("".join(f'{{"input": "x{i}"}}\n' for i in range(5)))
        cfg = config_only(report_to=[absent[0]], seed_file=str(tmp_path / "seeds.jsonl"), source_adapter=None)
        with pytest.raises(UserError, match="whose package is not installed"):
            Transfer(cfg, show_progress=False).run(stages=("synthesis",))
