"""The whole transfer on the tiny families: every stage, resume, and the bad inputs of the method."""

import json
import os

import pytest
import torch

from peft_transfer import Transfer
from peft_transfer.data import DataError
from peft_transfer.modeling import AdapterMismatchError, ModelPool
from peft_transfer.stages import STAGE_NAMES
from peft_transfer.stages import stage as stage_row
from peft_transfer.synthesis import SynthesisError


def _run(config, stages=None):
    return Transfer(config, show_progress=False).run(stages=stages)


def _mtime(path):
    return os.stat(path).st_mtime_ns


def test_cross_family_transfer_runs_every_stage(make_config, run_dir, tiny_world):
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The two families really differ: other architecture, other vocabulary.
    src_tok = AutoTokenizer.from_pretrained(tiny_world["source_model"])
    tgt_tok = AutoTokenizer.from_pretrained(tiny_world["target_model"])
    assert src_tok.get_vocab() != tgt_tok.get_vocab()

    config = make_config(output_dir=str(run_dir))
    report = _run(config)

    for name in STAGE_NAMES:
        assert os.path.isdir(run_dir / name), name
        assert not os.path.exists(run_dir / f"{name}.incomplete")
    assert report["stages"]["source_adapter"]["skipped"] and report["stages"]["discriminator"]["skipped"]

    accepted = load_from_disk(str(run_dir / "synthesis" / "accepted"))
    assert len(accepted) == config.num_samples == report["synthesis"]["accepted"]
    seeds = {json.loads(line)["input"] for line in open(tiny_world["seed_file"])}
    assert not seeds & set(accepted["input"]), "seed copies must be dropped"
    assert len(set(accepted["input"])) == len(accepted)
    labels = load_from_disk(str(run_dir / "labels"))
    assert labels["input"] == accepted["input"]

    ev = report["evaluation"]
    assert ev["num_samples"] == config.max_eval_samples
    for key in ("source_adapter", "target_base", "transferred"):
        assert 0.0 <= ev[key] <= 1.0

    lineage = report["lineage"]
    assert lineage["target_model"] == tiny_world["target_model"]
    assert lineage["num_accepted"] == config.num_samples and lineage["kd_loss"] == "sequence"
    assert json.load(open(run_dir / "report.json"))["synthesis"]["accepted"] == config.num_samples

    # The new adapter was trained (changes the target's outputs) and reloads by path.
    base = AutoModelForCausalLM.from_pretrained(tiny_world["target_model"])
    ids = tgt_tok("Sort these letters: d c a\nAnswer:", return_tensors="pt").input_ids
    with torch.no_grad():
        plain = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(run_dir / "target_adapter"))(ids).logits
    assert not torch.allclose(plain, adapted)


def test_interrupted_stage_is_redone_and_finished_stages_are_kept(make_config, run_dir, monkeypatch):
    config = make_config(output_dir=str(run_dir))
    _run(config, stages=("synthesis",))
    kept = {p: _mtime(run_dir / p / "stage.json") for p in ("source_adapter", "discriminator", "synthesis")}

    def crash(run, out):
        with open(os.path.join(out, "partial.txt"), "w") as f:
            f.write("half done")
        raise KeyboardInterrupt

    monkeypatch.setattr(stage_row("labels"), "body", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(config)
    assert os.path.isdir(run_dir / "labels.incomplete") and not os.path.exists(run_dir / "labels")
    monkeypatch.undo()

    report = _run(make_config(output_dir=str(run_dir)))
    assert os.path.isdir(run_dir / "labels") and not os.path.exists(run_dir / "labels.incomplete")
    assert not os.path.exists(run_dir / "labels" / "partial.txt")
    for stage, mtime in kept.items():
        assert _mtime(run_dir / stage / "stage.json") == mtime
        assert report["stages"][stage]["skipped"]
    assert "skipped" not in report["stages"]["labels"]


def test_overwrite_redoes_finished_stages(make_config, run_dir):
    config = make_config(output_dir=str(run_dir), eval_file=None)
    _run(config, stages=("synthesis",))
    before = _mtime(run_dir / "synthesis" / "stage.json")
    _run(make_config(output_dir=str(run_dir), eval_file=None, overwrite=True), stages=("synthesis",))
    assert _mtime(run_dir / "synthesis" / "stage.json") != before


def test_discriminator_stage_reports_held_out_quality(base_run):
    metrics = json.load(open(base_run / "discriminator" / "metrics.json"))
    assert {"accuracy", "roc_auc", "near_chance", "num_positives", "num_negatives"} <= set(metrics)
    assert metrics["num_positives"] > 0 and metrics["num_negatives"] > 0
    assert 0.0 <= metrics["roc_auc"] <= 1.0


# -- bad input --------------------------------------------------------------------------------------------------


def test_missing_seed_file(make_config, tmp_path):
    config = make_config(seed_file=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        _run(config)
    assert not any(os.path.isdir(os.path.join(config.output_dir, s)) for s in STAGE_NAMES)


def test_malformed_seed_file(make_config, tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"input": "Sort these letters: a c b"}\n{"input": oops}\n')
    with pytest.raises(DataError, match=r"Line 2 .* not valid JSON"):
        _run(make_config(seed_file=str(bad)))
    bad.write_text('{"text": "Sort these letters: a c b"}\n')
    with pytest.raises(DataError, match="no string 'input' field"):
        _run(make_config(seed_file=str(bad)))


def test_fewer_seeds_than_configured(make_config, tmp_path):
    few = tmp_path / "seeds.jsonl"
    few.write_text("".join(json.dumps({"input": f"Sort these letters: {x}"}) + "\n" for x in ("a b", "c d", "e f")))
    with pytest.raises(DataError, match="holds 3 distinct inputs but num_seeds=5"):
        _run(make_config(seed_file=str(few)))


def test_adapter_of_another_base_is_refused(make_config, run_dir, tiny_world, no_model_loads):
    # The source adapter was trained on the Llama-style base; applying it to the Gemma-style one must fail clearly.
    config = make_config(output_dir=str(run_dir / "other"), source_model=tiny_world["target_model"],
                         source_adapter=str(run_dir / "source_adapter"),
                         discriminator_adapter=str(run_dir / "discriminator"),
                         discriminator_model=tiny_world["source_model"], eval_file=None)
    with pytest.raises(AdapterMismatchError, match="was trained on"):
        _run(config)
    # Refused before any work: synthesis did not start.
    assert not os.path.exists(run_dir / "other" / "synthesis") and not (run_dir / "other" / "synthesis.incomplete").exists()


def test_tokenizer_without_pad_token(tiny_world, tmp_path):
    from transformers import AutoTokenizer

    from peft_transfer.modeling import load_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_world["source_model"])
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    assert load_tokenizer(str(tmp_path / "nopad")).pad_token == tok.eos_token  # the usual stand-in
    tok.eos_token = None
    tok.save_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match="neither a pad nor an EOS token: add a pad token"):
        load_tokenizer(str(tmp_path / "nothing"))


def test_generator_whose_output_never_parses(make_config, run_dir, tiny_world, tmp_path):
    from peft_transfer.worlds.tiny_models import build_family

    # An untrained base writes noise: never a finished item within 3 tokens.
    noise = build_family("tiny-gemma", str(tmp_path / "noise"), pretrain_steps=0, seed=3)
    config = make_config(output_dir=str(run_dir), generator_model=noise, max_candidate_tokens=3, eval_file=None)
    with pytest.raises(SynthesisError, match=r"never parsed into a candidate: \d+ of \d+ continuations"):
        _run(config)
    assert not os.path.exists(run_dir / "synthesis")
    assert os.path.isdir(run_dir / "source_adapter") and os.path.isdir(run_dir / "discriminator")


def test_discriminator_that_accepts_nothing_keeps_progress_and_resumes(make_config, run_dir):
    strict = make_config(output_dir=str(run_dir), filter_margin=1e9, candidate_budget=64, eval_file=None)
    with pytest.raises(SynthesisError, match=r"Only 0 of num_samples=12 .* acceptance rate 0\.0%; \d+ unparsable, "
                       r"\d+ duplicates, \d+ copies of a seed, \d+ near-copies of real inputs\)\. Raise"):
        _run(strict)
    progress = run_dir / "synthesis_progress.jsonl"
    assert progress.exists() and not os.path.exists(run_dir / "synthesis")
    spent = [json.loads(line) for line in open(progress) if '"stats"' in line][-1]["stats"]["candidates"]
    assert spent == 64

    # Started again with a usable margin, it goes on from what was generated instead of starting over.
    report = _run(make_config(output_dir=str(run_dir), candidate_budget=800, eval_file=None))
    assert report["synthesis"]["accepted"] == 12
    assert report["synthesis"]["candidates"] >= 64
    assert not progress.exists()


def test_margin_calibrated_on_held_out_negatives(make_config, run_dir):
    from peft_transfer.metrics import calibrate_margin

    negatives = json.load(open(run_dir / "discriminator" / "metrics.json"))["held_out_negative_scores"]
    assert negatives and all(isinstance(x, float) for x in negatives)
    config = make_config(output_dir=str(run_dir), target_false_accept_rate=0.5, candidate_budget=2000, eval_file=None,
                         num_samples=4)
    _run(config, stages=("synthesis",))
    stats = json.load(open(run_dir / "synthesis" / "stats.json"))
    assert stats["filter_margin"] == calibrate_margin(negatives, 0.5)
    assert stats["filter_margin"] > -1e9  # the config's margin was replaced


def test_evaluation_cache_reuses_what_does_not_depend_on_the_run(make_config, run_dir, tmp_path, monkeypatch):
    import shutil

    from peft_transfer import evaluation

    config = make_config(output_dir=str(run_dir), evaluation_cache_dir=str(tmp_path / "cache"))
    first = _run(config)["evaluation"]
    assert len(os.listdir(tmp_path / "cache")) == 2  # source adapter, target base

    calls = []
    real_evaluate = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: calls.append(k["desc"]) or real_evaluate(*a, **k))
    shutil.rmtree(run_dir / "evaluation")
    second = _run(make_config(output_dir=str(run_dir), evaluation_cache_dir=str(tmp_path / "cache")))["evaluation"]
    assert calls == ["evaluate transferred"]
    assert second == first


def test_bases_stay_loaded_between_stages_without_changing_results(make_config, base_run, tmp_path, monkeypatch):
    import shutil

    from datasets import load_from_disk

    loads = {True: [], False: []}
    real_load = ModelPool.load
    reports = {}
    for keep in (True, False):
        run = tmp_path / f"keep-{keep}"
        shutil.copytree(base_run, run)
        monkeypatch.setattr(ModelPool, "load", lambda self, ref, keep=keep: loads[keep].append(ref) or real_load(self, ref))
        reports[keep] = _run(make_config(output_dir=str(run), keep_models_loaded=keep))
        reports[keep]["labels"] = load_from_disk(str(run / "labels"))["completion"]
    # synthesis (target + source), labels (source), distillation (target), evaluation (source, target x2)
    assert sorted(set(loads[True])) == sorted(set(loads[False]))
    assert len(loads[True]) == 2 < len(loads[False])
    assert reports[True]["labels"] == reports[False]["labels"]
    assert reports[True]["evaluation"] == reports[False]["evaluation"]
    assert reports[True]["synthesis"] == reports[False]["synthesis"]


def test_each_stage_prints_one_line_with_its_time_and_peak_memory(make_config, run_dir, caplog):
    import json
    import logging

    with caplog.at_level(logging.INFO, logger="peft_transfer"):
        _run(make_config(output_dir=str(run_dir), eval_file=None), stages=("synthesis",))
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("✓ synthesis")]
    assert len(done) == 1 and "peak RSS" in done[0] and "accepted" in done[0]
    info = json.loads((run_dir / "synthesis" / "stage.json").read_text())
    assert info["seconds"] > 0 and info["peak_rss_gb"] > 0.05  # a process with torch loaded holds more than 50 MB


def test_near_duplicates_dropped_in_the_generators_embedding_space(make_config, run_dir):
    """The synthesis stage embeds with the generator's hidden states (no `embedding_model`): passed candidates that
    near to an accepted one are marked and counted, and the accepted ones are pairwise below the similarity."""
    import numpy as np
    from datasets import load_from_disk

    from peft_transfer.metrics import embed_texts
    from peft_transfer.modeling import load_base, load_tokenizer

    config = make_config(output_dir=str(run_dir), near_duplicate_similarity=0.6, eval_file=None, num_samples=8,
                         candidate_budget=2000, compute_mmd=False)
    _run(config, stages=("synthesis",))
    stats = json.load(open(run_dir / "synthesis" / "stats.json"))
    candidates = load_from_disk(str(run_dir / "synthesis" / "candidates"))
    assert stats["accepted"] == 8 and stats["near_duplicates"] == sum(candidates["near_duplicate"]) > 0
    accepted = [r["input"] for r in candidates if r["accepted"]]
    model, tokenizer = load_base(config.target_model, dtype=config.dtype), load_tokenizer(config.target_model)
    vectors = embed_texts(accepted, model=model, tokenizer=tokenizer)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert (np.triu(vectors @ vectors.T, 1) < 0.6 + 0.01).all()  # other batches: bf16 sums in another order
