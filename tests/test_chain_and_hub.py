"""Chained transfers (A -> B -> C with one discriminator), and a transfer that ends on the (local test) Hub."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from peft_transfer import run_transfer
from peft_transfer.pipeline import chain_configs
from tests.hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]


def test_two_hop_chain_reuses_the_discriminator_and_records_the_chain(make_config, run_dir, tiny_world):
    config = make_config(output_dir=str(run_dir), chain_targets=[tiny_world["source_model"]])
    hops = chain_configs(config)
    assert [h.target_model for h in hops] == [tiny_world["target_model"], tiny_world["source_model"]]
    assert hops[1].source_adapter == str(run_dir / "target_adapter")
    assert hops[1].discriminator_adapter == str(run_dir / "discriminator")

    report = run_transfer(config, show_progress=False, print_report=False)
    hop2 = run_dir / "hop-2"
    assert (hop2 / "target_adapter").is_dir() and (hop2 / "evaluation").is_dir()
    assert not (hop2 / "discriminator").exists() and not (hop2 / "source_adapter").exists()
    lineage = report["lineage"]
    assert lineage["source_model"] == tiny_world["target_model"]
    assert lineage["target_model"] == tiny_world["source_model"]
    assert [hop["target_model"] for hop in lineage["chain"]] == [tiny_world["target_model"]]
    assert lineage["chain"][0]["source_model"] == tiny_world["source_model"]
    assert json.load(open(hop2 / "target_adapter" / "transfer.json"))["chain"] == lineage["chain"]


def _client(server, home, code):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", HF_TOKEN=server.token,
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT), NO_PROXY="127.0.0.1,localhost")
    script = "import json\nresult = {}\n" + textwrap.dedent(code) + "\nprint('@@RESULT@@' + json.dumps(result))\n"
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])


def test_transfer_pushes_adapter_discriminator_and_synthetic_set_and_pulls_them_back(make_config, run_dir,
                                                                                      tiny_world, tmp_path):
    config = make_config(output_dir=str(run_dir), push_to_hub=True, hub_model_id="tester/tiny-gemma-sorting",
                         hub_discriminator_id="tester/sorting-discriminator", hub_dataset_id="tester/sorting-synthetic")
    settings = config.to_dict()
    with HubServer() as server:
        result = _client(server, tmp_path / "hf", f"""
            import torch
            from huggingface_hub import ModelCard, HfApi
            from peft_transfer import TransferConfig, Transfer
            from peft_transfer.modeling import load_adapter, load_base, load_tokenizer

            config = TransferConfig(**{settings!r})
            report = Transfer(config, show_progress=False).run()
            result["pushed"] = report["pushed"]

            # Pull the adapter back by repo id and compare with the local one.
            target = config.target_model
            tok = load_tokenizer(target)
            ids = tok("Sort these letters: d c a\\nAnswer:", return_tensors="pt").input_ids
            with torch.no_grad():
                local = load_adapter(load_base(target), report["target_adapter"], target)(ids).logits
                pulled = load_adapter(load_base(target), "tester/tiny-gemma-sorting", target)(ids).logits
            result["same_logits"] = bool(torch.equal(local, pulled))
            # And the discriminator (a private repo: this client has the token).
            load_adapter(load_base(config.source_model), "tester/sorting-discriminator", config.source_model)
            card = ModelCard.load("tester/tiny-gemma-sorting")
            result["card"] = card.data.to_dict()
            result["card_text"] = card.text
            result["disc_private"] = HfApi().model_info("tester/sorting-discriminator").private
            result["dataset_files"] = sorted(HfApi().list_repo_files("tester/sorting-synthetic", repo_type="dataset"))
        """)
        blobs = [blob for *_, blob in server.all_blobs()]

    assert result["same_logits"]
    assert set(result["pushed"]) == {"tester/tiny-gemma-sorting", "tester/sorting-discriminator",
                                     "tester/sorting-synthetic"}
    assert result["disc_private"] is True
    card = result["card"]
    assert card["library_name"] == "peft" and {"peft", "trans-lora", "peft-transfer"} <= set(card["tags"])
    assert "Transferred" in result["card_text"] or "transferred" in result["card_text"]
    assert any(f.endswith(".parquet") for f in result["dataset_files"])
    # No seed text in any uploaded file (seeds are excluded from the synthetic set by the leak guard too).
    seeds = [json.loads(line)["input"] for line in open(tiny_world["seed_file"])]
    for blob in blobs:
        data = blob.data
        for seed in seeds:
            assert seed.encode() not in data
