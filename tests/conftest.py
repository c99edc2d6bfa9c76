"""Shared fixtures: a tiny two-family world built once per test session (no download).

`tiny_world` builds the Llama-style and Gemma-style families with their own locally trained tokenizers and a short
pretraining on the generic corpus (so that they continue numbered lists), plus the built-in task's files.
`base_run` runs the first two stages (source adapter, discriminator) once; tests copy it instead of retraining.
"""

import os
import shutil

import pytest
import torch

torch.set_num_threads(2)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAST = dict(
    num_samples=12,
    candidate_budget=800,
    generation_batch_size=32,
    filter_batch_size=32,
    max_candidate_tokens=40,
    label_max_new_tokens=16,
    learning_rate=2e-3,
    num_train_epochs=1,
    source_learning_rate=2e-3,
    source_epochs=2,
    discriminator_epochs=1,
    discriminator_negatives=32,
    per_device_train_batch_size=8,
    max_eval_samples=8,
    filter_margin=-1e9,  # accept whatever parses: filtering itself is tested on its own
    logging_steps=1000,
)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from peft_transfer.tasks import make_task
    from peft_transfer.testing import build_family, task_files

    root = tmp_path_factory.mktemp("world")
    paths = {
        "source_model": build_family("tiny-llama", str(root / "tiny-llama"), pretrain_steps=150, seed=0),
        "target_model": build_family("tiny-gemma", str(root / "tiny-gemma"), pretrain_steps=150, seed=0),
    }
    paths.update(task_files(make_task("sort_letters", n_train=60, n_test=20, seed=0), str(root / "task")))
    return paths


@pytest.fixture
def make_config(tiny_world, tmp_path):
    from peft_transfer import TransferConfig

    def make(**overrides):
        settings = {**tiny_world, **FAST, "output_dir": str(tmp_path / "run"), **overrides}
        return TransferConfig(**settings)

    return make


@pytest.fixture(scope="session")
def base_run(tiny_world, tmp_path_factory):
    """A run directory whose source_adapter and discriminator stages are done."""
    from peft_transfer import Transfer, TransferConfig

    out = tmp_path_factory.mktemp("base_run") / "run"
    config = TransferConfig(**{**tiny_world, **FAST, "output_dir": str(out)})
    Transfer(config, show_progress=False).run(stages=("source_adapter", "discriminator"))
    return out


@pytest.fixture
def run_dir(base_run, tmp_path):
    """A fresh copy of `base_run` for one test."""
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst
