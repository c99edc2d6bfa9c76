"""Fault injection: a run killed (SIGKILL) inside synthesis, labelling or training, then started again with the same
settings, ends with the same artifacts as a run that was never interrupted — nothing lost, nothing duplicated.

Each killed run is a subprocess that patches one point to kill itself; the resume runs in this process. Training
checkpoints every 2 steps, so a kill at step 5 resumes from step 4.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from peft_transfer import Transfer, TransferConfig
from peft_transfer.rundir import RunDir

# Runs in a fresh interpreter: arms one kill point, then runs the transfer.
DRIVER = r"""
import json, os, signal, sys
import torch
torch.set_num_threads(2)
from peft_transfer import Transfer, TransferConfig
settings, point, count = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
calls = []

def maybe_die():
    calls.append(1)
    if len(calls) == count:
        os.kill(os.getpid(), signal.SIGKILL)

if point == "round":  # the count-th generate -> filter round of synthesis, as it starts generating
    import peft_transfer.synthesis as synthesis
    real_round_generate = synthesis.generate

    def generate(*args, **kwargs):
        maybe_die()
        return real_round_generate(*args, **kwargs)

    synthesis.generate = generate
elif point == "label":  # the count-th batch of teacher answers (model.generate calls while labelling)
    import transformers
    import peft_transfer.labelling as labelling_module
    real_generate, real_label = transformers.GenerationMixin.generate, labelling_module.label
    labelling = []

    def generate(self, *args, **kwargs):
        if labelling:
            maybe_die()
        return real_generate(self, *args, **kwargs)

    def label(*args, **kwargs):
        labelling.append(1)
        return real_label(*args, **kwargs)

    transformers.GenerationMixin.generate = generate
    labelling_module.label = label
elif point == "step":  # before optimizer step number `count` of the first training
    import transformers
    real_step = transformers.Trainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step + 1 == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, *args, **kwargs)

    transformers.Trainer.training_step = training_step
Transfer(TransferConfig(**settings), show_progress=False).run()
"""


def _settings(tiny_world, out, **overrides):
    from conftest import FAST

    # Rounds hold at most 8 x generation_batch_size candidates: with batch 1, the 12 samples take several rounds.
    return {**tiny_world, **FAST, "output_dir": str(out), "eval_file": None, "generation_batch_size": 1,
            "num_train_epochs": 3, "save_steps": 2, **overrides}


def _killed(settings, point, count):
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(settings), point, str(count)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == -9, f"the run was not killed at {point} #{count}:\n{done.stderr[-3000:]}"


def _artifacts(out):
    from datasets import load_from_disk
    from safetensors.torch import load_file

    dirs = RunDir(str(out))
    stats = json.load(open(dirs.synthesis_stats))
    return {
        "accepted": list(load_from_disk(dirs.accepted)["input"]),
        "candidates": load_from_disk(dirs.candidates).to_list(),
        "stats": stats,
        "labels": load_from_disk(dirs.labels).to_list(),
        "adapter": load_file(os.path.join(dirs.target_adapter, "adapter_model.safetensors")),
    }


@pytest.fixture(scope="module")
def uninterrupted(tiny_world, base_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    shutil.copytree(base_run, out)
    Transfer(TransferConfig(**_settings(tiny_world, out)), show_progress=False).run()
    return _artifacts(out)


@pytest.mark.parametrize("point,count", [
    ("round", 1),  # synthesis: inside round 1 (nothing in the progress file yet)
    ("round", 2),  # synthesis: inside round 2 (round 1 is in the progress file)
    ("label", 1),  # labelling: the first batch of teacher answers
    ("label", 5),  # labelling: the fifth batch
    ("step", 2),  # distillation: step 2, before the first checkpoint
    ("step", 5),  # distillation: step 5, after the checkpoint of step 4
], ids=["synthesis-1", "synthesis-2", "labels-1", "labels-5", "training-2", "training-5"])
def test_killed_run_resumes_to_the_same_artifacts(point, count, uninterrupted, tiny_world, base_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    settings = _settings(tiny_world, out)
    _killed(settings, point, count)
    dirs = RunDir(str(out))
    if point == "round":
        assert os.path.exists(dirs.progress) == (count > 1) and not dirs.finished("synthesis")
    if point == "label":
        assert dirs.finished("synthesis") and not dirs.finished("labels")
    if point == "step":
        checkpoints = [d for d in os.listdir(RunDir.trainer(dirs.incomplete("target_adapter")))
                       if d.startswith("checkpoint-")]
        assert checkpoints == ([f"checkpoint-{2 * ((count - 1) // 2)}"] if count > 2 else []), checkpoints

    report = Transfer(TransferConfig(**settings), show_progress=False).run()
    again = _artifacts(out)
    assert again["accepted"] == uninterrupted["accepted"]
    assert again["candidates"] == uninterrupted["candidates"]
    assert again["stats"] == uninterrupted["stats"]
    assert again["labels"] == uninterrupted["labels"]
    assert again["adapter"].keys() == uninterrupted["adapter"].keys()
    for key, weight in uninterrupted["adapter"].items():
        torch.testing.assert_close(again["adapter"][key], weight, rtol=0, atol=1e-6, msg=key)
    assert not os.path.exists(dirs.incomplete("target_adapter")) and not os.path.exists(dirs.progress)
    if point == "step":
        assert not report["stages"]["target_adapter"].get("skipped")


def test_a_resumed_training_keeps_the_step_counts_its_ratios_were_resolved_to(tmp_path, caplog, monkeypatch):
    """`save_steps: 0.1` (the default) is stored resolved in the checkpoint; a resume takes that count instead of
    transformers warning that the arguments differ from the checkpoint's."""
    import logging

    from transformers import TrainingArguments
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import compare_trainer_and_checkpoint_args

    from peft_transfer.stages.common import steps_as_resolved

    checkpoint = tmp_path / "checkpoint-8"
    checkpoint.mkdir()
    state_file = str(checkpoint / "trainer_state.json")
    TrainerState(logging_steps=10, save_steps=8, train_batch_size=4).save_to_json(state_file)
    args = TrainingArguments(output_dir=str(tmp_path), save_steps=0.1, logging_steps=10, per_device_train_batch_size=4,
                             use_cpu=True, report_to=[])
    state = TrainerState.load_from_json(state_file)

    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)  # transformers logs to its own handler
    with caplog.at_level(logging.WARNING, logger="transformers"):
        compare_trainer_and_checkpoint_args(args, state)
    assert "save_steps: 0.1 (from args) != 8" in caplog.text, "transformers no longer warns: this helper can go"
    caplog.clear()
    steps_as_resolved(args, str(checkpoint))
    assert (args.save_steps, args.logging_steps) == (8, 10)
    with caplog.at_level(logging.WARNING, logger="transformers"):
        compare_trainer_and_checkpoint_args(args, state)
    assert "do not match" not in caplog.text
