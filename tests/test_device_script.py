"""The GPU script's CPU dry run: every step runs on tiny shapes and writes its results, so the script cannot rot
between the sessions that are lent a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_script_dry_run(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "device.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    log = (tmp_path / "device.log").read_text()
    assert done.returncode == 0, log[-4000:]
    for step in ("speed", "kd_memory", "stage_throughput"):
        assert f"== {step}: rc=0" in done.stdout, done.stdout
    speed = json.loads((tmp_path / "speed" / "speed.json").read_text())
    assert speed["world"] == "random" and speed["end_to_end_speedup"] > 0
    assert json.loads((tmp_path / "kd_memory.json").read_text())
    assert json.loads((tmp_path / "stage_throughput.json").read_text())["stages"]
    # What comes back from the device machine: at most 8 files, at most 2 folders down.
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(tmp_path).parts) <= 3 for p in files)
