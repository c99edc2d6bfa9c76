"""`generation_backend: vllm`: the settings and errors (fast), and a vLLM server on a tiny model against HF (slow).

The slow tests need the vLLM environment (`bash scripts/setup.sh --vllm`, which `scripts/test.sh` runs); without it
they are skipped, unless `PEFT_TRANSFER_REQUIRE_VLLM=1` (set by `scripts/test.sh`) makes a missing one a failure.
"""

import json
import os

import pytest
import torch

from peft_transfer.errors import ConfigError
from peft_transfer.vllm_server import VLLMUnavailableError, _served_rank, find_python, lora_rank


def test_an_unknown_backend_is_a_config_error(config_only):
    with pytest.raises(ConfigError, match="generation_backend='vlm' is not one of"):
        config_only(generation_backend="vlm")


def test_a_missing_vllm_environment_names_the_setup_command(tmp_path):
    with pytest.raises(VLLMUnavailableError, match=r"setup\.sh --vllm"):
        find_python(str(tmp_path / "no-such-python"))


def test_a_python_without_vllm_says_what_failed(tmp_path):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named vllm' >&2\nexit 1\n")
    python.chmod(0o755)
    with pytest.raises(VLLMUnavailableError, match="cannot import vLLM's server: ModuleNotFoundError"):
        find_python(str(python))


@pytest.mark.parametrize("config, kind", [({"peft_type": "LORA", "use_dora": True, "r": 8}, "DoRA"),
                                          ({"peft_type": "PROMPT_TUNING"}, "PROMPT_TUNING")])
def test_only_lora_adapters_are_served(tmp_path, config, kind):
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(VLLMUnavailableError, match=f"LoRA adapters only, and .* is {kind}"):
        lora_rank(str(tmp_path))


def test_the_served_rank_is_the_next_one_vllm_takes(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8,
                                                              "rank_pattern": {"q_proj": 12}}))
    assert lora_rank(str(tmp_path)) == 12
    assert [_served_rank(r) for r in (1, 8, 12, 64, 300)] == [1, 8, 16, 64, 320]
    with pytest.raises(VLLMUnavailableError, match="ranks up to 512"):
        _served_rank(1024)


def test_the_backend_is_part_of_the_generating_stages_settings_only_when_it_is_not_hf(config_only):
    from peft_transfer.stages import stage

    hf, vllm = config_only(), config_only(generation_backend="vllm")
    for name in ("synthesis", "labels"):
        assert "generation_backend" not in stage(name).settings(hf)  # runs made before the setting are reused
        assert "generation_backend" in stage(name).settings(vllm)
    assert "generation_backend" not in stage("target_adapter").settings(vllm)


# -- against a real server ----------------------------------------------------------------------------------------


def _vllm_python():
    try:
        return find_python()
    except VLLMUnavailableError as e:
        if os.environ.get("PEFT_TRANSFER_REQUIRE_VLLM") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def hd32(tmp_path_factory):
    """A tiny Llama that vLLM's CPU attention takes, and a LoRA on it that changes its greedy answers."""
    from peft import LoraConfig, get_peft_model

    from peft_transfer.modeling import load_base
    from peft_transfer.worlds.tiny_models import build_family

    python = _vllm_python()
    root = tmp_path_factory.mktemp("vllm")
    base = build_family("tiny-llama-hd32", str(root / "base"), pretrain_steps=150, seed=0)
    torch.manual_seed(0)
    model = get_peft_model(load_base(base, dtype="float32"),
                           LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(str(root / "adapter"))
    return {"python": python, "base": base, "adapter": str(root / "adapter"), "root": root}


@pytest.fixture(scope="module")
def served(hd32):
    from peft_transfer.vllm_server import serve

    with serve(hd32["base"], hd32["adapter"], python=hd32["python"], dtype="float32", merge_adapter=False,
               log_path=str(hd32["root"] / "server.log")) as lease:  # the adapter through vLLM's LoRA support
        yield lease


PROMPTS = [f"1. {w}\n2. {w[::-1]} {i}\n3." for i, w in enumerate(["apple", "stone", "river", "cloud"] * 4)]


def _hf(hd32, adapter: bool, **kwargs):
    from peft_transfer.generation import generate
    from peft_transfer.modeling import load_adapter, load_base, load_tokenizer

    model = load_base(hd32["base"], dtype="float32")
    if adapter:
        model = load_adapter(model, hd32["adapter"], hd32["base"])
    return generate(model, load_tokenizer(hd32["base"]), PROMPTS, **kwargs)


@pytest.mark.parametrize("adapter", [False, True])
def test_greedy_answers_and_their_ends_match_hf(hd32, served, adapter):
    from peft_transfer.generation import generate
    from peft_transfer.vllm_server import VLLMModel

    kwargs = dict(max_new_tokens=12, stop_strings=["\n"])
    model = VLLMModel(served.model.server, adapter=adapter, name_or_path=hd32["base"],
                      eos_token_ids=served.model.eos_token_ids)
    ours, theirs = generate(model, served.tokenizer, PROMPTS, **kwargs), _hf(hd32, adapter, **kwargs)
    assert sum(a == b for a, b in zip(ours, theirs)) >= len(PROMPTS) - 2, list(zip(ours, theirs))
    assert any(finished for _, finished in ours) and not all(finished for _, finished in ours)
    if adapter:  # the adapter is applied: its answers are not the base's
        base = generate(VLLMModel(served.model.server, adapter=False, name_or_path="", eos_token_ids=[]),
                        served.tokenizer, PROMPTS, **kwargs)
        assert sum(a != b for a, b in zip(ours, base)) >= len(PROMPTS) // 2


def test_sampling_repeats_under_the_same_torch_seed_and_varies_per_prompt(served):
    from peft_transfer.generation import generate

    def sample(seed):
        torch.manual_seed(seed)
        return generate(served.model, served.tokenizer, [PROMPTS[0]] * 6, max_new_tokens=10, do_sample=True)

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first
    assert len({text for text, _ in first}) > 1  # one prompt asked six times: six requests with their own seeds


def test_a_transfer_writes_candidates_and_labels_through_vllm(hd32, tmp_path):
    from conftest import FAST

    from peft_transfer import Transfer, TransferConfig
    from peft_transfer.rundir import RunDir, read_json
    from peft_transfer.worlds.tasks import make_task
    from peft_transfer.worlds.tiny_models import task_files

    files = task_files(make_task("sort_letters", n_train=40, n_test=8, seed=0), str(tmp_path / "task"))
    # The served adapter is the source adapter; unfiltered, so that only the generating stages run.
    config = TransferConfig(**{**FAST, **files, "source_model": hd32["base"], "target_model": hd32["base"],
                               "source_adapter": hd32["adapter"], "filter_mode": "none",
                               "output_dir": str(tmp_path / "run"), "generation_backend": "vllm",
                               "vllm_python": hd32["python"], "dtype": "float32", "compute_mmd": True})
    Transfer(config, show_progress=False).run(stages=("synthesis", "labels"))
    dirs = RunDir(str(tmp_path / "run"))
    stats, labels = read_json(dirs.synthesis_stats), read_json(dirs.label_stats)
    assert stats["accepted"] == FAST["num_samples"] and labels["labelled"] == FAST["num_samples"]
    assert stats["generation_backend"] == labels["generation_backend"] == "vllm"
    assert stats["vllm_startup_seconds"] > 0
    assert read_json(dirs.stage_record("synthesis"))["settings"]["generation_backend"] == "vllm"
    assert read_json(dirs.diagnostics)["mmd_accepted"] is not None  # embedded by the HF generator afterwards
    assert os.path.getsize(dirs("vllm-labels.log")) > 0
    # On CPU the adapter is served merged into the base: the labels are the HF teacher's.
    from datasets import load_from_disk

    from peft_transfer.modeling import load_adapter, load_base, load_tokenizer
    from peft_transfer.labelling import label

    rows = load_from_disk(dirs.labels)
    teacher = load_adapter(load_base(hd32["base"], dtype="float32"), hd32["adapter"], hd32["base"])
    hf = label(config, teacher, load_tokenizer(hd32["base"]), list(rows["input"]), show_progress=False)
    assert sum(a["completion"] == b for a, b in zip(hf, rows["completion"])) >= len(hf) - 2


@pytest.mark.slow
def test_the_speed_benchmark_times_vllm_beside_hf_on_the_same_prompts(tmp_path):
    import sys
    from pathlib import Path

    _vllm_python()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import speed

    report = speed.main(["--world", "tiny", "--candidates", "8", "--samples", "4", "--epochs", "1",
                         "--sides", "ours", "vllm", "--out", str(tmp_path)])
    for name in ("generate", "label"):
        vllm, ours = report["stages"][name]["vllm"], report["stages"][name]["ours"]
        assert vllm["seconds"] > 0 and vllm["startup_s"] > 0 and vllm["new_tokens"] > 0, name
        assert "vllm" not in report["stages"]["score"] and "vllm" not in report["stages"]["train"]
        assert ours["seconds"] > 0
    st = report["stages"]
    # every figure in the report is rounded on its own, so the sum agrees to a rounding step per term
    assert report["end_to_end_s"]["vllm"] == pytest.approx(report["end_to_end_s"]["ours"] + sum(
        st[k]["vllm"]["seconds"] + st[k]["vllm"]["startup_s"] - st[k]["ours"]["seconds"]
        for k in ("generate", "label")), abs=0.3)
    assert 0 <= report["vllm_labels_equal_to_hf"] <= 4
    assert "- generate, vLLM server:" in (tmp_path / "speed.md").read_text()
