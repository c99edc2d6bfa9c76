"""A two-process transfer through `accelerate launch` on CPU (gloo), against a single-process one.

On a machine without a GPU, `accelerate launch --multi_gpu --num_processes 2` starts two processes that form a
gloo group (`--cpu --num_processes 2` would start only one). Generation, filtering, labelling and evaluation are
sharded and gathered; training is DDP; only the main process writes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peft_transfer import Transfer
from peft_transfer.distributed import map_across_processes

ROOT = Path(__file__).resolve().parents[1]


def test_map_across_processes_is_plain_map_in_one_process():
    assert map_across_processes(lambda xs: [x * 2 for x in xs], [1, 2, 3]) == [2, 4, 6]


def _artifacts(run: Path, seeds: set[str]) -> dict:
    from datasets import load_from_disk

    accepted = load_from_disk(str(run / "synthesis" / "accepted"))["input"]
    labels = load_from_disk(str(run / "labels"))
    report = json.load(open(run / "report.json"))
    assert len(set(accepted)) == len(accepted), "a sample was duplicated"
    assert not seeds & set(accepted)
    assert labels["input"] == accepted, "labels must cover the accepted inputs, in order"
    assert (run / "target_adapter" / "adapter_model.safetensors").exists()
    return {
        "accepted": len(accepted),
        "labels": len(labels),
        "eval": report["evaluation"]["num_samples"],
        "synthesis_rows": report["synthesis"]["scored"],
    }


@pytest.mark.multiprocess
def test_two_process_transfer_matches_single_process_counts(make_config, run_dir, tmp_path, tiny_world):
    seeds = {json.loads(line)["input"] for line in open(tiny_world["seed_file"])}
    # Single process (its first two stages come from the shared base run).
    single = make_config(output_dir=str(run_dir))
    Transfer(single, show_progress=False).run()

    # Two processes, every stage (source adapter and discriminator trained under DDP too).
    multi_dir = tmp_path / "multi"
    recipe = tmp_path / "multi.yaml"
    settings = make_config(output_dir=str(multi_dir)).to_dict()
    settings.pop("hub_token")
    recipe.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(ROOT / "recipes" / "transfer.py"), "--config", str(recipe)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]

    one, two = _artifacts(run_dir, seeds), _artifacts(multi_dir, seeds)
    assert one["accepted"] == two["accepted"] == single.num_samples
    assert one["labels"] == two["labels"] and one["eval"] == two["eval"]
    for stage in ("source_adapter", "discriminator", "synthesis", "labels", "target_adapter", "evaluation"):
        assert (multi_dir / stage).is_dir() and not (multi_dir / f"{stage}.incomplete").exists()
    # Both processes really formed one group (the main process logs it).
    assert "transfer over 2 processes (MULTI_CPU)" in proc.stderr + proc.stdout
