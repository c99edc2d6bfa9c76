"""Model sources: packaged model names, GGUF refs, the conversion cache, and the choice of dtype."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from peft_transfer import sources
from peft_transfer.sources import SourceError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_TRANSFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_convert(calls):
    def convert(path, out):
        calls.append(Path(path).name)
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))

    return convert


def test_refs_are_told_apart(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.gguf").write_bytes(b"GGUF")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "x.gguf").write_bytes(b"GGUF")  # a transformers folder stays a transformers folder
    assert sources.is_source_ref("packaged:smollm2-135m-instruct")
    assert sources.is_source_ref(str(tmp_path / "m.gguf"))
    assert sources.is_source_ref(str(folder))
    assert sources.is_source_ref("bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M")
    assert sources.is_source_ref("org/repo@v1:model-Q8_0.gguf")
    assert not sources.is_source_ref(str(checkpoint))
    assert not sources.is_source_ref("meta-llama/Llama-2-7b-hf")
    assert not sources.is_source_ref("meta-llama/Llama-2-7b-hf@main")


def test_unknown_packaged_name_lists_the_known_ones():
    with pytest.raises(SourceError, match="packaged:gemma-3-270m"):
        sources.resolve_source("packaged:gemma-9")


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("pandas_sns") else real(name, *a))
    with pytest.raises(SourceError, match=r"peft-transfer\[qwen\]"):
        sources.resolve_source("packaged:qwen2.5-coder-0.5b-instruct")


def test_conversion_is_cached_by_the_file_hash(tmp_path, monkeypatch, cache):
    calls = []
    monkeypatch.setattr(sources, "_convert", fake_convert(calls))
    gguf = tmp_path / "a.gguf"
    gguf.write_bytes(b"GGUF weights v1")
    first = sources.convert_gguf(gguf)
    assert first.name == hashlib.sha256(b"GGUF weights v1").hexdigest()[:16]
    assert json.loads((first / "gguf_source.json").read_text())["sha256"] == hashlib.sha256(b"GGUF weights v1").hexdigest()
    copy = tmp_path / "b.gguf"  # another path, the same bytes: the same converted folder, not converted again
    copy.write_bytes(b"GGUF weights v1")
    assert sources.convert_gguf(copy) == first and calls == ["a.gguf"]
    gguf.write_bytes(b"GGUF weights v2")  # new contents under the old name: converted anew
    assert sources.convert_gguf(gguf) != first and calls == ["a.gguf", "a.gguf"]
    assert not list(cache.glob("gguf/*.incomplete"))


def test_failed_conversion_leaves_no_folder(tmp_path, monkeypatch, cache):
    def broken(path, out):
        out.mkdir(parents=True)
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(sources, "_convert", broken)
    gguf = tmp_path / "a.gguf"
    gguf.write_bytes(b"x")
    with pytest.raises(RuntimeError):
        sources.convert_gguf(gguf)
    assert not [p for p in cache.glob("gguf/*") if (p / "config.json").exists()]
    calls = []
    monkeypatch.setattr(sources, "_convert", fake_convert(calls))
    assert (sources.convert_gguf(gguf) / "config.json").is_file() and calls == ["a.gguf"]


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    gguf_lib = pytest.importorskip("gguf")
    path = tmp_path / "odd.gguf"
    writer = gguf_lib.GGUFWriter(str(path), arch="notanarch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SourceError, match="transformers cannot read the GGUF file") as info:
        sources.convert_gguf(path)
    assert "llama" in str(info.value) and "gemma3" in str(info.value)  # names what it can read


def test_hub_gguf_selector_picks_one_file(tmp_path, monkeypatch):
    import huggingface_hub

    from peft_transfer import hub

    files = ["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "m-Q4_K_S.gguf"]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo, revision=None, token=None: files)
    fetched = []

    def fake_resolve(ref, token=None, allow_patterns=None):
        fetched.append((ref, allow_patterns))
        (tmp_path / allow_patterns[0]).write_bytes(b"GGUF " + allow_patterns[0].encode())
        return str(tmp_path)

    monkeypatch.setattr(hub, "resolve_pretrained", fake_resolve)
    assert sources._download_hub_gguf("org/m@v2", "Q4_K_M", token=None) == tmp_path / "m-Q4_K_M.gguf"
    assert fetched == [("org/m@v2", ["m-Q4_K_M.gguf"])]  # only the chosen file is downloaded
    with pytest.raises(SourceError, match="m-Q4_K_M.gguf, m-Q8_0.gguf"):
        sources._download_hub_gguf("org/m", "Q5_K_M", token=None)


def test_dtype_auto_is_bf16_where_the_cpu_has_it(monkeypatch):
    from peft_transfer import modeling

    assert modeling.torch_dtype("float32", "cpu") == torch.float32
    monkeypatch.setattr(modeling, "cpu_has_bf16", lambda: True)
    assert modeling.torch_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(modeling, "cpu_has_bf16", lambda: False)
    assert modeling.torch_dtype("auto", "cpu") == torch.float32


def test_dtype_auto_on_this_machine(tiny_world):
    from peft_transfer.modeling import cpu_has_bf16, load_base

    expected = torch.bfloat16 if cpu_has_bf16() else torch.float32
    assert load_base(tiny_world["source_model"], device="cpu").dtype == expected


def test_prepare_output_layer_keeps_the_logits_and_is_registered_once(tiny_world):
    from transformers import AutoModelForCausalLM

    from peft_transfer.distillation import models
    from peft_transfer.modeling import OutputLinear, prepare_output_layer

    model = AutoModelForCausalLM.from_pretrained(tiny_world["target_model"], dtype=torch.float32).eval()
    ids = torch.randint(5, 100, (3, 9))
    with torch.no_grad():
        before = model(input_ids=ids, logits_to_keep=1).logits
        prepare_output_layer(prepare_output_layer(model))
        after = model(input_ids=ids, logits_to_keep=1).logits
    head = model.get_output_embeddings()
    assert len(head._forward_pre_hooks) == 1
    # float32 on CPU: oneDNN's matmul, equal up to the order of the sums.
    assert type(head) is OutputLinear and models._ONEDNN_LINEAR is not None
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert set(model.state_dict()) == set(AutoModelForCausalLM.from_pretrained(tiny_world["target_model"]).state_dict())


def test_output_linear_takes_onednn_only_where_no_gradient_flows(monkeypatch):
    from peft_transfer.distillation import models

    calls = []
    real = models._ONEDNN_LINEAR
    monkeypatch.setattr(models, "_ONEDNN_LINEAR", lambda *a: calls.append(a) or real(*a))
    x, weight = torch.randn(4, 3, 16), torch.randn(50, 16)
    with torch.no_grad():
        torch.testing.assert_close(models.output_linear(x[:, 1:], weight), x[:, 1:] @ weight.T)
    assert len(calls) == 1
    x.requires_grad_()
    models.output_linear(x, weight).sum().backward()  # F.linear: a gradient flows
    torch.testing.assert_close(x.grad, weight.sum(0).expand_as(x))
    assert len(calls) == 1
    with torch.no_grad():
        models.output_linear(x.detach().bfloat16(), weight.bfloat16())  # bf16: torch's own call
    assert len(calls) == 1


def test_adapter_card_carries_the_licence_of_packaged_bases():
    from peft_transfer.hub import adapter_card

    card = adapter_card({"source_model": "packaged:smollm2-135m-instruct", "target_model": "packaged:gemma-3-270m",
                         "task_name": "addition", "peft_type": "LORA"})
    assert card.data.license == "gemma"
    assert "Gemma is provided under and subject to the Gemma Terms of Use" in card.text
    assert "packaged:smollm2-135m-instruct" in card.text and "Apache-2.0" in card.text
    plain = adapter_card({"source_model": "org/a", "target_model": "org/b"})
    assert plain.data.license is None and "Licence notices" not in plain.text
