"""Hub round trips of `peft_transfer.hub` against the local Hub-compatible server (`tests/hub_server.py`).

`huggingface_hub` reads `HF_ENDPOINT` and `HF_HUB_DISABLE_XET` when it is imported, and this pytest process
has imported it long before (through transformers), so every client-side step runs in a fresh subprocess
(`run_client`) with the server's endpoint, a private `HF_HOME` and the chosen Xet setting. The server runs
in a thread of this process, so tests inspect its state (files of every commit, LFS objects, privacy).
Models and adapters are tiny and built locally; logits are compared here, in the parent.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from peft_transfer import hub
from tests.hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]
SEED_MARKER = "SEED-TEXT-MUST-NEVER-LEAVE-7f3a9c"
LINEAGE = {
    "source_model": "org/source-base",
    "source_model_revision": "0123abc",
    "source_adapter": "org/source-adapter",
    "target_model": "org/target-base",
    "discriminator": "tester/disc",
    "generator": "org/target-base",
    "task_name": "letter-sorting",
    "num_seeds": 5,
    "num_accepted": 250,
    "num_candidates": 1000,
    "loss": "sequence-level KD",
    "peft_type": "LORA",
}


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def hub_server():
    """A fresh in-memory Hub on 127.0.0.1 (by-size LFS answers; tests switch `lfs_mode` as needed)."""
    with HubServer() as server:
        yield server


def run_client(server: HubServer, home: Path, code: str, *, xet: bool, token: str | None = "default") -> dict:
    """Run `code` in a fresh Python process whose huggingface_hub talks to `server`; return its `result` dict.

    `xet=False` sets `HF_HUB_DISABLE_XET=1` (LFS uploads); `token=None` runs without any token.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=server.url,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="0" if xet else "1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(ROOT),
        NO_PROXY="127.0.0.1,localhost",
    )
    if token is not None:
        env["HF_TOKEN"] = server.token if token == "default" else token
    # The client needs only `peft_transfer.hub` (huggingface_hub): a bare package module skips the package
    # `__init__`, which imports torch and trl (~5 s per process on 2 cores); the hub package itself runs unchanged.
    header = (
        "import json, sys, types\n"
        f"pkg = types.ModuleType('peft_transfer'); pkg.__path__ = [{str(ROOT / 'peft_transfer')!r}]\n"
        "sys.modules['peft_transfer'] = pkg\n"
        "from peft_transfer import hub\n"
        "result = {}\n"
    )
    script = header + textwrap.dedent(code)
    script += "\nprint('@@RESULT@@' + json.dumps(result))\n"
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")][-1]
    return json.loads(line[len("@@RESULT@@") :])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama base saved locally, two LoRA adapters on it (non-zero B, different weights), each folder
    also holding a `seeds.jsonl` and a pickle file that must never be uploaded."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "base")
    adapters = []
    for i in range(2):
        model = AutoModelForCausalLM.from_pretrained(root / "base")
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.5 + i)
        folder = root / f"adapter{i}"
        model.save_pretrained(folder)
        (folder / "seeds.jsonl").write_text(json.dumps({"input": f"{SEED_MARKER} sort these letters"}) + "\n")
        (folder / "optimizer.pt").write_bytes(SEED_MARKER.encode())
        adapters.append(folder)
    return {"base": root / "base", "adapters": adapters}


def logits(base: Path, adapter: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 17, 42, 99, 3]])).logits


def assert_no_seed_text(server: HubServer) -> None:
    for path, blob in server.all_blobs():
        assert "seeds" not in path and not path.endswith(".pt"), path
        assert SEED_MARKER.encode() not in blob.data, f"seed text uploaded in {path}"


# ---------------------------------------------------------------------------------------------- pure functions
def test_split_revision(tmp_path):
    assert hub.split_revision("user/repo@v1.0") == ("user/repo", "v1.0")
    assert hub.split_revision("user/repo") == ("user/repo", None)
    local = tmp_path / "run@3" / "adapter"
    local.mkdir(parents=True)
    assert hub.split_revision(str(local)) == (str(local), None)
    with pytest.raises(ValueError, match="revision"):
        hub.split_revision("user/repo@")


def test_resolve_pretrained_local_and_invalid_refs(tmp_path):
    local = tmp_path / "model@main"
    local.mkdir()
    assert hub.resolve_pretrained(str(local)) == str(local)
    # Neither a local path nor a repo id: rejected before any network access.
    for ref in ["./no/such/dir", str(tmp_path / "missing" / "dir"), "bad repo name"]:
        with pytest.raises(hub.HubError, match="neither an existing local path nor a valid Hub repo id"):
            hub.resolve_pretrained(ref)
    with pytest.raises(hub.HubError, match="keep one"):
        hub.resolve_pretrained("user/repo@v1", revision="v2")


def test_adapter_card_content_and_validation():
    chain = [{"source_model": "org/older-base", "source_adapter": "org/older-adapter",
              "target_model": "org/source-base", "num_accepted": 100, "num_candidates": 400}]  # fmt: skip
    evaluation = {"source_adapter": 0.78, "target_base": 0.1, "transferred": 0.61, "num_samples": 200}
    card = hub.adapter_card({**LINEAGE, "chain": chain}, evaluation, repo_id="tester/adapter")
    meta = card.data.to_dict()
    assert meta["library_name"] == "peft" and meta["base_model"] == "org/target-base"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"peft", "trans-lora", "peft-transfer", "lora"} <= set(meta["tags"])
    text = card.text
    for expected in ["`org/source-adapter`", "`org/source-base` @ `0123abc`", "`tester/disc`", "250 / 1,000",
                     "25.0%", "sequence-level KD", "`org/older-adapter`", "100 / 400", "200 held-out",
                     "| target base + this adapter (transferred) | 61.0% |",
                     "| source base + source adapter | 78.0% |",
                     'PeftModel.from_pretrained(base, "tester/adapter")', "Leonid Karlinsky", "2405.17258",
                     hub.SECTION_START, hub.SECTION_END]:  # fmt: skip
        assert expected in text, expected
    with pytest.raises(ValueError, match="target_model"):
        hub.adapter_card({"source_model": "a/b"})
    with pytest.raises(ValueError, match="Unknown lineage keys"):
        hub.adapter_card({**LINEAGE, "seeds": ["some seed text"]})
    with pytest.raises(ValueError, match="fractions"):
        hub.adapter_card(LINEAGE, {"transferred": 61.0})
    # A local target path is not a Hub id: it stays out of `base_model` metadata.
    assert "base_model" not in hub.adapter_card({"target_model": "/tmp/some/local/model"}).data.to_dict()


def test_discriminator_and_dataset_cards_hold_counts_only():
    card = hub.discriminator_card({"base_model": "org/source-base", "task_name": "letter-sorting",
                                   "num_positives": 250, "num_negatives": 300, "accuracy": 0.93, "roc_auc": 0.97,
                                   "peft_type": "LORA"})  # fmt: skip
    meta = card.data.to_dict()
    assert meta["base_model"] == "org/source-base" and "discriminator" in meta["tags"] and "lora" in meta["tags"]
    for expected in ["| 250 |", "| 300 |", "0.9300", "0.9700", "private", "no training text"]:
        assert expected in card.text, expected
    with pytest.raises(ValueError, match="Unknown info keys"):
        hub.discriminator_card({"base_model": "a/b", "positives": ["real input text"]})
    dcard = hub.synthetic_dataset_card({"task_name": "letter-sorting", "num_accepted": 250, "num_candidates": 1000})
    assert "synthetic" in dcard.data.to_dict()["tags"] and "25.0%" in dcard.text


def test_merge_card_keeps_user_metadata_and_text():
    user = ModelCard("---\nlicense: mit\ntags: [my-tag]\nbase_model: old/base\n---\n# Mine\nUser intro.\n")
    first = hub.merge_card(user, hub.adapter_card(LINEAGE))
    second = hub.merge_card(
        ModelCard(first.content + "\nUser footer.\n"), hub.adapter_card({**LINEAGE, "num_accepted": 400})
    )
    meta = second.data.to_dict()
    assert meta["license"] == "mit" and meta["base_model"] == "org/target-base"
    assert meta["tags"][0] == "my-tag" and meta["tags"].count("peft") == 1
    assert "User intro." in second.text and "User footer." in second.text
    assert second.text.count(hub.SECTION_END) == 1
    assert "400 / 1,000" in second.text and "250 / 1,000" not in second.text


# ---------------------------------------------------------------------------------------------- round trips
PUSH_TWICE_AND_PULL = """
from huggingface_hub import ModelCard
from huggingface_hub.utils._runtime import is_xet_available
result["xet"] = is_xet_available()
v1 = hub.push_adapter({a0!r}, "tester/adapter", lineage={lineage!r})
v2 = hub.push_adapter({a1!r}, "tester/adapter", lineage={lineage!r}, commit_message="second")
result["v1"], result["v2"], result["url"] = v1.oid, v2.oid, str(v2)
result["main"] = hub.resolve_pretrained("tester/adapter")
result["old"] = hub.resolve_pretrained("tester/adapter@" + v1.oid)
result["card"] = ModelCard.load("tester/adapter").data.to_dict()
"""


@pytest.mark.parametrize("xet", [False, True], ids=["lfs-no-xet", "xet-all-regular"])
def test_adapter_round_trip(hub_server, tiny, tmp_path, xet):
    # Xet on: the server answers every file "regular" (it does not speak Xet), upload_folder takes its
    # pipelined path. Xet off: files of >= 1 KiB (the safetensors) go through the LFS batch API.
    hub_server.lfs_mode = "all_regular" if xet else "by_size"
    a0, a1 = map(str, tiny["adapters"])
    out = run_client(hub_server, tmp_path / "home", PUSH_TWICE_AND_PULL.format(a0=a0, a1=a1, lineage=LINEAGE), xet=xet)
    assert out["xet"] is xet
    assert out["v1"] != out["v2"] and out["url"].endswith(out["v2"])

    files = hub_server.files("tester/adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert files["adapter_model.safetensors"].lfs is (not xet)
    assert bool(hub_server.lfs_objects) is (not xet)
    assert_no_seed_text(hub_server)
    assert not hub_server.repo("tester/adapter")["private"]

    torch = pytest.importorskip("torch")
    main, old = Path(out["main"]), Path(out["old"])
    assert out["v2"] in str(main) and out["v1"] in str(old)
    assert sorted(p.name for p in main.iterdir()) == [".gitattributes", "README.md", "adapter_config.json",
                                                      "adapter_model.safetensors"]  # fmt: skip
    local0, local1 = logits(tiny["base"], tiny["adapters"][0]), logits(tiny["base"], tiny["adapters"][1])
    assert not torch.allclose(local0, local1)
    assert torch.equal(logits(tiny["base"], main), local1)
    assert torch.equal(logits(tiny["base"], old), local0)

    card = out["card"]
    assert card["base_model"] == "org/target-base" and card["library_name"] == "peft"
    assert "trans-lora" in card["tags"]


def test_discriminator_is_private_and_needs_the_token(hub_server, tiny, tmp_path):
    folder = str(tiny["adapters"][0])
    info = {"base_model": "org/source-base", "task_name": "letter-sorting", "num_positives": 250, "num_negatives": 250}
    out = run_client(hub_server, tmp_path / "owner", f"""
from huggingface_hub import ModelCard
hub.push_discriminator({folder!r}, "tester/disc", info={info!r})
result["card"] = ModelCard.load("tester/disc").content
result["pulled"] = hub.resolve_pretrained("tester/disc")
""", xet=False)  # fmt: skip
    assert hub_server.repo("tester/disc")["private"] is True
    assert "adapter_model.safetensors" in hub_server.files("tester/disc")
    assert "num_positives" not in out["card"] and "| 250 |" in out["card"]
    assert "base_model: org/source-base" in out["card"]
    assert Path(out["pulled"], "adapter_config.json").exists()
    assert_no_seed_text(hub_server)

    # Without a token (fresh cache, so nothing is served from disk): a clear error that names the fix.
    anon = run_client(hub_server, tmp_path / "anon", """
try:
    hub.resolve_pretrained("tester/disc")
except hub.HubError as e:
    result["error"] = str(e)
""", xet=False, token=None)  # fmt: skip
    assert "private repos need a token" in anon["error"] and "hf auth login" in anon["error"]

    # An existing public repo is not silently used for a private-by-default push.
    refused = run_client(hub_server, tmp_path / "owner", f"""
from huggingface_hub import HfApi
HfApi().create_repo("tester/public-disc", private=False)
try:
    hub.push_discriminator({folder!r}, "tester/public-disc", info={info!r})
except hub.HubError as e:
    result["error"] = str(e)
""", xet=False)  # fmt: skip
    assert "private=False" in refused["error"]
    assert set(hub_server.files("tester/public-disc")) == {".gitattributes"}


def test_repush_keeps_user_card_text(hub_server, tiny, tmp_path):
    folder = str(tiny["adapters"][0])
    out = run_client(hub_server, tmp_path / "home", f"""
from huggingface_hub import HfApi, ModelCard
hub.push_adapter({folder!r}, "tester/adapter", lineage={LINEAGE!r})
card = ModelCard.load("tester/adapter")
card.data.license = "apache-2.0"
card.data.tags = card.data.tags + ["my-own-tag"]
card.text = "# My notes\\nWritten by hand before.\\n" + card.text + "\\nAnd after.\\n"
HfApi().upload_file(path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id="tester/adapter")
hub.push_adapter({folder!r}, "tester/adapter", lineage={{**{LINEAGE!r}, "num_accepted": 400}})
final = ModelCard.load("tester/adapter")
result["meta"], result["text"] = final.data.to_dict(), final.text
""", xet=False)  # fmt: skip
    meta, text = out["meta"], out["text"]
    assert meta["license"] == "apache-2.0" and "my-own-tag" in meta["tags"] and "trans-lora" in meta["tags"]
    assert "Written by hand before." in text and "And after." in text
    assert "400 / 1,000" in text and "250 / 1,000" not in text and text.count(hub.SECTION_END) == 1


def test_synthetic_dataset_push_and_pull(hub_server, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"input": [f"candidate {i}" for i in range(6)], "output": [f"answer {i}" for i in range(6)]}
    saved = tmp_path / "synthetic"
    datasets.Dataset.from_dict(rows).save_to_disk(str(saved))
    (saved / "seeds.jsonl").write_text(json.dumps({"input": SEED_MARKER}) + "\n")
    out = run_client(hub_server, tmp_path / "home", f"""
import datasets
from huggingface_hub import DatasetCard
info = {{"task_name": "letter-sorting", "num_candidates": 24}}
hub.push_synthetic_dataset({str(saved)!r}, "tester/synthetic", info=info)
folder = hub.resolve_pretrained("tester/synthetic", repo_type="dataset")
result["rows"] = datasets.load_dataset("parquet", data_dir=folder + "/data", split="train").to_dict()
result["card"] = DatasetCard.load("tester/synthetic", repo_type="dataset").data.to_dict()
""", xet=False)  # fmt: skip
    assert out["rows"] == rows
    assert "synthetic" in out["card"]["tags"]
    repo = hub_server.repo("tester/synthetic", "dataset")
    assert repo["private"] is True
    assert set(hub_server.files("tester/synthetic", "dataset")) == {".gitattributes", "README.md",
                                                                   "data/train-00000-of-00001.parquet"}  # fmt: skip
    assert_no_seed_text(hub_server)


def test_clear_errors_for_missing_repo_and_revision(hub_server, tiny, tmp_path):
    folder = str(tiny["adapters"][0])
    out = run_client(hub_server, tmp_path / "home", f"""
hub.push_adapter({folder!r}, "tester/adapter", lineage={LINEAGE!r})
for key, ref in [("repo", "tester/does-not-exist"), ("branch", "tester/adapter@no-such-branch"),
                 ("sha", "tester/adapter@" + "0" * 40)]:
    try:
        hub.resolve_pretrained(ref)
    except hub.HubError as e:
        result[key] = str(e)
""", xet=False)  # fmt: skip
    assert "not found or is not accessible" in out["repo"] and "hub_token" in out["repo"]
    assert "Revision 'no-such-branch' not found" in out["branch"]
    assert "Revision '" + "0" * 40 + "' not found" in out["sha"]


def test_adapter_card_shows_the_lm_eval_table_of_the_three_models():
    from peft_transfer.hub import adapter_card

    results = {"source_adapter": {"arc_easy": {"acc,none": 0.61, "acc_stderr,none": 0.01}},
               "target_base": {"arc_easy": {"acc,none": 0.42}},
               "transferred": {"arc_easy": {"acc,none": 0.55}, "peft_transfer_eval": {"exact_match,strip": 0.5}}}
    text = str(adapter_card({"target_model": "org/target"}, lm_eval=results))
    table = text.split("## lm-evaluation-harness")[1]
    assert "| arc_easy | acc,none | 0.6100 | 0.4200 | 0.5500 |" in table
    assert "| peft_transfer_eval | exact_match,strip |  |  | 0.5000 |" in table
    assert "stderr" not in table
    assert "## lm-evaluation-harness" not in str(adapter_card({"target_model": "org/target"}))
