"""benchmarks/quality.py: the claims logic on hand-made rows, and the CPU micro run end to end (a smoke test of the
harness: it checks that every row runs and that JSON, Markdown and PNGs are written, not that the claims hold).

The micro run takes about a minute on 2 shared CPU cores (one thread per process), so it is not marked slow."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import quality

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROWS = ("translora-same", "translora-cross", "unfiltered-same", "seeds-only-same", "random-text-same", "dora-same",
        "prompt-tuning-same", "chain-hop2", "scaling-same-N6")


def _rows(transferred: dict, source=0.5, target=0.2, mmd=(0.1, 0.3)):
    rows = [{"task": "t", "row": "pool-same", "mmd_accepted": mmd[0], "mmd_unfiltered": mmd[1], "acceptance_rate": 0.2}]
    for row in ROWS:
        rows.append({"task": "t", "row": row, "transferred": transferred.get(row, 0.3), "source_adapter": source,
                     "target_base": target, "mmd_accepted": mmd[0], "mmd_unfiltered": mmd[1]})
    return rows


def test_claims_hold_and_fail_on_hand_made_rows():
    size = quality.SIZES["micro"]
    good = {"translora-same": 0.6, "translora-cross": 0.55, "seeds-only-same": 0.4, "random-text-same": 0.35,
            "unfiltered-same": 0.3}
    c = quality.claims(quality.tables(_rows(good), size))
    assert c["a_translora_ge_max_source_target_on_average"]["same"]["holds"] is True
    assert c["b_translora_ge_source_minus_2_points_every_task"]["cross"]["holds"] is True
    assert c["c_filtered_above_ablations"]["holds"] is True
    assert c["c_filtered_above_ablations"]["paper_order_holds"] is True
    assert c["d_mmd_accepted_below_unfiltered_every_task"]["same"]["holds"] is True

    bad = dict(good, **{"translora-cross": 0.45, "unfiltered-same": 0.7, "random-text-same": 0.45})
    c = quality.claims(quality.tables(_rows(bad, mmd=(0.3, 0.1)), size))
    assert c["a_translora_ge_max_source_target_on_average"]["cross"]["holds"] is False
    assert c["b_translora_ge_source_minus_2_points_every_task"]["cross"]["worst_gap"] == pytest.approx(-0.05)
    assert c["b_translora_ge_source_minus_2_points_every_task"]["same"]["holds"] is True
    assert c["c_filtered_above_ablations"]["holds"] is False
    assert c["c_filtered_above_ablations"]["paper_order_holds"] is False
    assert c["d_mmd_accepted_below_unfiltered_every_task"]["cross"]["holds"] is False

    # Ties are not an ordering; a missing number makes a claim undecided rather than holding.
    tie = {row: 0.0 for row in ROWS}
    assert quality.claims(quality.tables(_rows(tie), size))["c_filtered_above_ablations"]["paper_order_holds"] is False
    missing = [r for r in _rows(good) if r["row"] != "translora-cross"]
    assert quality.claims(quality.tables(missing, size))["a_translora_ge_max_source_target_on_average"]["cross"][
        "holds"] is None

    # A transfer that failed keeps its baselines in Table 1; its Trans-LoRA number stays missing.
    failed = [r if r["row"] != "translora-cross" else
              {"task": "t", "row": "translora-cross", "error": "SynthesisError: ...", "source_adapter": 0.5,
               "target_base": 0.1} for r in _rows(good)]
    t1 = quality.tables(failed, size)["table1"]["cross"]
    assert t1["per_task"]["t"] == {"source_lora": 0.5, "target_base": 0.1, "translora": None}
    assert t1["tasks_averaged"] == 0 and t1["average"]["source_lora"] is None  # averages compare like with like

    # "On every task": one measured task below the bound fails it even while another task is missing.
    two = _rows(bad, mmd=(0.3, 0.1)) + [{"task": "u", "row": "translora-cross", "error": "SynthesisError: ..."}]
    c = quality.claims(quality.tables(two, size))
    assert c["b_translora_ge_source_minus_2_points_every_task"]["cross"]["holds"] is False
    assert c["d_mmd_accepted_below_unfiltered_every_task"]["cross"]["holds"] is False
    assert c["b_translora_ge_source_minus_2_points_every_task"]["same"]["holds"] is None  # u: not measured


def test_random_text_is_distinct_and_task_sized():
    texts = quality.random_text(40, seed=0)
    assert len(texts) == len(set(texts)) == 40
    assert all(0 < len(t) <= 81 for t in texts)


def test_micro_run_writes_every_table_and_plot(tmp_path):
    out = tmp_path / "quality-micro"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--size", "micro",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]

    result = json.loads((out / "results.json").read_text())
    assert result["meta"]["size"] == "micro" and result["meta"]["seed"] == 0
    assert result["meta"]["settings"]["transfer"]["num_samples"] == 12  # the run's settings are recorded
    assert set(result["meta"]["bases"]) == {"tiny-llama", "tiny-llama-b", "tiny-gemma"}
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"pool-same", *ROWS}
    failed = {name: r["error"] for name, r in rows.items() if "error" in r}
    assert not failed, failed
    for name in ROWS:
        for key in ("transferred", "source_adapter", "target_base"):
            assert 0.0 <= rows[name][key] <= 1.0, (name, key)
        assert rows[name]["num_eval"] == 16
    assert rows["seeds-only-same"]["num_accepted"] == 5
    assert rows["scaling-same-N6"]["num_accepted"] == 6 and rows["translora-same"]["num_accepted"] == 12
    assert rows["dora-same"]["peft_type"] == "dora" and rows["prompt-tuning-same"]["peft_type"] == "prompt_tuning"
    assert rows["unfiltered-same"]["filter_mode"] == "none"
    # The same-family target shares the source's tokenizer; the cross-family one does not.
    from transformers import AutoTokenizer

    vocab = {k: AutoTokenizer.from_pretrained(v).get_vocab() for k, v in result["meta"]["bases"].items()}
    assert vocab["tiny-llama"] == vocab["tiny-llama-b"] != vocab["tiny-gemma"]

    t = result["tables"]
    assert t["tasks"] == ["count_letters"]
    assert set(t["fig5"]) == {"6", "12"} and list(t["table5"]) == list(quality.ABLATIONS)
    for pair in ("same", "cross"):
        assert t["table9"][pair]["count_letters"]["accepted"] is not None
        assert t["table9"][pair]["count_letters"]["unfiltered"] is not None
    # Each verdict follows from the numbers it states.
    for pair, v in result["claims"]["a_translora_ge_max_source_target_on_average"].items():
        avg = t["table1"][pair]["average"]
        assert v["holds"] == (avg["translora"] >= max(avg["source_lora"], avg["target_base"])), pair
    for pair, v in result["claims"]["b_translora_ge_source_minus_2_points_every_task"].items():
        assert v["holds"] == (v["worst_gap"] >= -0.02), pair
    for pair, v in result["claims"]["d_mmd_accepted_below_unfiltered_every_task"].items():
        assert v["holds"] == (v["tasks_lower"] == v["tasks"]), pair

    md = (out / "results.md").read_text()
    for heading in ("Table 1", "Table 5", "Table 6", "Table 7", "Table 9", "Fig. 5", "Claims"):
        assert heading in md
    for png in ("fig3_scatter.png", "table5_ablations.png", "fig5_scaling.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
