"""`benchmarks/speed.py` on random tiny models: both sides do the same work, and every figure is measured."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_speed_benchmark_times_both_sides_on_the_same_work(tmp_path):
    import speed

    report = speed.main(["--world", "tiny", "--candidates", "8", "--samples", "4", "--epochs", "1",
                         "--out", str(tmp_path)])
    assert set(report["stages"]) == {"generate", "score", "label", "train"}
    for name, stage in report["stages"].items():
        assert stage["paper"]["seconds"] > 0 and stage["ours"]["seconds"] > 0, name
        assert stage["speedup"] == round(stage["paper"]["seconds"] / stage["ours"]["seconds"], 2)
    # The same candidates are scored and the same rows trained on: the same FLOPs on both sides.
    assert report["stages"]["score"]["paper"]["gflop"] == report["stages"]["score"]["ours"]["gflop"]
    train = report["stages"]["train"]
    assert train["paper"]["tokens_per_epoch"] == train["ours"]["tokens_per_epoch"] > 0
    assert train["ours"]["completion_tokens_per_epoch"] > 0
    assert all(v["gflops"] > 0 for k, v in report["peak"].items() if isinstance(v, dict))
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["end_to_end_speedup"] == report["end_to_end_speedup"]
    assert "| **end to end** |" in (tmp_path / "speed.md").read_text()
