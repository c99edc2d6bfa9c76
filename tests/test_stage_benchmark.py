"""The stage throughput benchmark (`benchmarks/stage_throughput.py`) on its tiny preset: every stage runs through the
pipeline's own functions and reports positive throughputs in its JSON."""

import json
import math

import pytest

from benchmarks import stage_throughput

TINY = ["--preset", "tiny", "--threads", "1", "--calls", "1", "--batch1-calls", "1", "--train-steps", "1",
        "--train-warmup", "1", "--static-cache", "--peak-tflops", "1.0"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    stage_throughput.main(TINY + ["--out", str(out)])
    with open(out) as f:
        return json.load(f)


def test_every_stage_reports_positive_throughput(report):
    assert set(report["stages"]) == set(stage_throughput.STAGES)
    for name, stage in report["stages"].items():
        for key in ("first_call_s", "steady_median_s", "per_s", "first_call_per_s"):
            value = stage[key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, key, value)
        assert len(stage["steady_call_s"]) == 1, name
        assert stage["unit"].endswith("/s")


def test_report_records_setting_and_shapes(report):
    env = report["environment"]
    assert env["device"] and env["torch"] and env["transformers"] and env["peft"]
    assert report["preset"] == "tiny" and report["model"]["hidden_size"] == 64
    assert report["batch_sizes"] == {"generate": 8, "generate_batch1": 1, "score": 32, "label": 8, "train": 8}
    stages = report["stages"]
    # Lengths as asked: prompts of about 128 tokens, questions of about 96, every training row cut at 256.
    assert 128 <= stages["generate"]["prompt_tokens"]["min"] <= stages["generate"]["prompt_tokens"]["max"] <= 140
    assert stages["generate_static"]["cache_implementation"] == "static"
    assert 96 <= stages["score"]["question_tokens"]["min"] and stages["score"]["question_tokens"]["mean"] <= 110
    assert stages["train"]["row_tokens"] == {"min": 256, "mean": 256.0, "max": 256}
    assert stages["train"]["tokens_per_step"] == 8 * 256
    # The design's numbers are kept apart from the measured ones.
    assert set(report["design_reference"]) == set(stages) and "DESIGN" in report["design_reference_note"]


def test_mfu_counts_no_weight_gradients_for_the_frozen_base(report):
    train = report["stages"]["train"]
    assert train["lora_params"] > 0 and train["matmul_params"] > 0
    assert train["flops_per_token"] < 6 * train["matmul_params"]  # 4N + small terms, not 6N
    assert 0 < train["mfu"] < train["mfu_6n"]


def test_zero3_needs_the_deepspeed_launcher(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    with pytest.raises(SystemExit, match="accelerate launch --config_file recipes/accelerate/zero3.yaml"):
        stage_throughput.main(["--preset", "tiny", "--deepspeed", "zero3"])
