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
    label_selection_ratio=1.0,  # every label: the selection is tested on its own (tests/test_labels.py)
    logging_steps=1000,
)


# The slow lane (`-m slow`; the fast lane is `-m "not slow"`): tests that build the tiny world (two tiny families
# pretrained here) or a run on it, start subprocesses, run a benchmark, or load the packaged real models.
SLOW_FIXTURES = {"tiny_world", "base_run", "run_dir", "make_config", "finished_run", "bases", "llama", "hd32", "served"}
SLOW_MODULES = {"test_faults", "test_distributed", "test_quality_micro", "test_device_script", "test_speed_benchmark",
                "test_stage_benchmark", "test_real_models", "test_chain_and_hub", "test_report_html",
                "test_demo_models"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def config_only(tmp_path):
    """`TransferConfig(**overrides)` with placeholder models and files: for checks of the settings alone, which
    never load or read them (no tiny world is built)."""
    from peft_transfer import TransferConfig

    def make(**overrides):
        return TransferConfig(**{"source_model": "unused/source", "target_model": "unused/target",
                                 "train_file": str(tmp_path / "unused.jsonl"), "output_dir": str(tmp_path / "run"),
                                 **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from peft_transfer.worlds.tasks import make_task
    from peft_transfer.worlds.tiny_models import build_family, task_files

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


@pytest.fixture(scope="module")
def untrained():
    """Tiny untrained bases of the two families, with their own tokenizers (no pretraining: cheap per module).

    An untrained generator would almost never end an item, so this one treats a quarter of its vocabulary as
    end-of-sequence: its candidates are short random strings that parse. Teacher and discriminator are Llama-style
    on the source tokenizer, the generator Gemma-style on the target one.
    """
    from peft_transfer.worlds.corpus import generic_corpus
    from peft_transfer.worlds.tiny_models import FAMILIES, build_model, build_tokenizer

    docs = generic_corpus(num_docs=300, seed=0, doc_chars=300)
    source_tok = build_tokenizer("byte_bpe", 384, docs)
    target_tok = build_tokenizer("metaspace_bpe", 448, docs)
    generator = build_model(FAMILIES["tiny-gemma"], target_tok, seed=1).eval()
    generator.generation_config.eos_token_id = list(range(3, len(target_tok) // 4))
    return dict(source_tok=source_tok, target_tok=target_tok, generator=generator,
                teacher=build_model(FAMILIES["tiny-llama"], source_tok, seed=2).eval(),
                discriminator=build_model(FAMILIES["tiny-llama"], source_tok, seed=3).eval())


@pytest.fixture
def no_model_loads(monkeypatch):
    """Every base load fails: a check that should stop a run before any work must come first."""
    from peft_transfer.modeling import ModelPool

    def refuse(self, ref):
        raise AssertionError(f"a base was loaded ({ref}) before the check that should have stopped the run")

    monkeypatch.setattr(ModelPool, "load", refuse)
