"""A run directory that never lies: fingerprinted reuse, checks before any work, a progress file keyed by settings.

Each test names the problem it guards against. "Before any work" is checked by making every model load fail: a
check that only happens after loading a base would raise that error instead of the expected one.
"""

import glob
import json
import os

import pytest

from peft_transfer import Transfer
from peft_transfer.errors import PreflightError, SettingsChangedError
from peft_transfer.modeling import AdapterMismatchError
from peft_transfer.rundir import RunDir
from peft_transfer.synthesis import SynthesisError


def _run(config, stages=None):
    return Transfer(config, show_progress=False).run(stages=stages)


def _mtime(path):
    return os.stat(path).st_mtime_ns


@pytest.fixture(scope="module")
def finished_run(tiny_world, base_run, tmp_path_factory):
    """A whole run (no evaluation), once for the module; tests copy it."""
    import shutil

    from conftest import FAST

    from peft_transfer import TransferConfig

    out = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(base_run, out)
    _run(TransferConfig(**{**tiny_world, **FAST, "output_dir": str(out), "eval_file": None}))
    return out


@pytest.fixture
def finished(finished_run, tmp_path):
    import shutil

    dst = tmp_path / "finished"
    shutil.copytree(finished_run, dst)
    return dst


# -- 2. a changed setting on an existing output_dir ----------------------------------------------------------------


def test_changed_data_setting_stops_before_any_work_naming_it(make_config, finished, no_model_loads):
    before = {name: _mtime(finished / name / "stage.json") for name in ("synthesis", "labels", "target_adapter")}
    with pytest.raises(SettingsChangedError) as error:
        _run(make_config(output_dir=str(finished), eval_file=None, num_samples=6))
    message = str(error.value)
    assert "synthesis: num_samples 12 -> 6" in message
    assert "--overwrite true" in message and "--output_dir" in message
    assert {name: _mtime(finished / name / "stage.json") for name in before} == before


def test_another_target_model_is_not_reused_silently(make_config, finished, tiny_world, no_model_loads):
    # The generator defaults to the target: synthesis was made by another model, and so was the adapter.
    with pytest.raises(SettingsChangedError, match=r"synthesis: generator '.*tiny-gemma' -> '.*tiny-llama'"):
        _run(make_config(output_dir=str(finished), eval_file=None, target_model=tiny_world["source_model"]))


def test_changed_training_setting_redoes_only_the_later_stages(make_config, finished, caplog, capsys):
    import logging

    kept = {name: _mtime(finished / name / "stage.json") for name in ("synthesis", "labels")}
    trained = _mtime(finished / "target_adapter" / "stage.json")
    with caplog.at_level(logging.INFO, logger="peft_transfer"):
        report = _run(make_config(output_dir=str(finished), eval_file=None, num_train_epochs=2))
    assert {name: _mtime(finished / name / "stage.json") for name in kept} == kept
    assert _mtime(finished / "target_adapter" / "stage.json") != trained
    assert any("target_adapter" in r.getMessage() and "num_train_epochs 1 -> 2" in r.getMessage()
               for r in caplog.records)
    # The report says what made each artifact.
    assert report["made_by"]["target_adapter"]["settings"]["num_train_epochs"] == 2
    assert report["made_by"]["synthesis"]["settings"]["num_samples"] == 12
    # The Trainer's closing summary dict is not printed: the stage line says what a user needs.
    captured = capsys.readouterr()
    assert "train_runtime" not in captured.out + captured.err


def test_same_settings_reuse_everything_and_overwrite_redoes_it(make_config, finished):
    stamps = {name: _mtime(finished / name / "stage.json") for name in ("synthesis", "labels", "target_adapter")}
    report = _run(make_config(output_dir=str(finished), eval_file=None))
    assert all(report["stages"][name].get("skipped") for name in stamps)
    _run(make_config(output_dir=str(finished), eval_file=None, overwrite=True), stages=("synthesis",))
    assert _mtime(finished / "synthesis" / "stage.json") != stamps["synthesis"]


def test_a_stage_without_a_record_is_not_trusted(make_config, finished, no_model_loads):
    record = finished / "labels" / "stage.json"
    made = json.loads(record.read_text())
    record.write_text(json.dumps({k: v for k, v in made.items() if k != "fingerprint"}))
    with pytest.raises(SettingsChangedError, match="labels: made by an earlier version"):
        _run(make_config(output_dir=str(finished), eval_file=None))


def test_owner_adapters_are_kept_with_a_warning_when_their_settings_change(make_config, finished, tmp_path,
                                                                           tiny_world, no_model_loads, caplog):
    import logging

    lines = open(tiny_world["train_file"]).read().splitlines()
    edited = tmp_path / "train.jsonl"
    edited.write_text("\n".join(lines[:-1]) + "\n")
    stamps = {name: _mtime(finished / name / "stage.json") for name in ("source_adapter", "discriminator", "labels")}
    with caplog.at_level(logging.INFO, logger="peft_transfer"):
        report = _run(make_config(output_dir=str(finished), eval_file=None, train_file=str(edited), source_epochs=5))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("source_adapter" in m and "kept" in m and "source_epochs 2 -> 5" in m and "train_file changed" in m
               for m in warned), warned
    assert any("discriminator" in m and "train_file changed" in m for m in warned), warned
    said = [r.getMessage() for r in caplog.records]
    assert not any("source_adapter" in m and "with these settings" in m for m in said), said
    # Nothing was retrained or redone, and the report still says what made the adapters.
    assert {name: _mtime(finished / name / "stage.json") for name in stamps} == stamps
    assert report["made_by"]["source_adapter"]["settings"]["source_epochs"] == 2


def test_changed_seeds_stop_the_run(make_config, finished, tmp_path, no_model_loads):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"input": f"Sort these letters: {x}"}) + "\n"
                             for x in ("q w e", "r t y", "u i o", "p a s", "d f g")))
    with pytest.raises(SettingsChangedError, match=r"synthesis: seeds changed"):
        _run(make_config(output_dir=str(finished), eval_file=None, seed_file=str(seeds)))


# -- 3. another run's stages, where these settings would make them the same ---------------------------------------


def test_reuse_stages_from_copies_the_stages_made_the_same_and_says_where_from(make_config, finished, tmp_path,
                                                                                 no_model_loads, caplog):
    import logging

    # Another label selection: the data owner's adapters and the synthesis are made the same, the labels are not.
    new = tmp_path / "new"
    cfg = make_config(output_dir=str(new), eval_file=None, reuse_stages_from=str(finished), label_selection_ratio=0.5)
    with caplog.at_level(logging.INFO, logger="peft_transfer"):
        with pytest.raises(AssertionError, match="a base was loaded"):
            _run(cfg)  # the labels need the teacher: the first model load is the first work done here
    said = [r.getMessage() for r in caplog.records]
    assert any("labels" in m and "not reused" in m and "label_selection_ratio '<unset>' -> 0.5" in m
               for m in said), said
    for name in ("source_adapter", "discriminator", "synthesis"):
        record = json.loads((new / name / "stage.json").read_text())
        assert record["fingerprint"] == json.loads((finished / name / "stage.json").read_text())["fingerprint"]
        assert str(finished) in record["provided"]
    assert (new / "synthesis" / "accepted").is_dir() and not (new / "labels").exists()
    # The copies are this run's own now: the same command reuses them without `reuse_stages_from`.
    report = _run(make_config(output_dir=str(new), eval_file=None, label_selection_ratio=0.5),
                  stages=("source_adapter", "discriminator", "synthesis"))
    assert report["made_by"]["synthesis"]["provided"].startswith(str(finished))


def test_reuse_stages_from_must_be_another_run(make_config, finished, tmp_path, no_model_loads):
    from peft_transfer.errors import PreflightError

    for path, problem in ((tmp_path / "nowhere", "is not a folder"), (tmp_path, "holds no finished stage"),
                          (finished, "is the output_dir itself")):
        out = finished if path == finished else tmp_path / "new"
        with pytest.raises(PreflightError, match=problem):
            _run(make_config(output_dir=str(out), eval_file=None, reuse_stages_from=str(path)))


def test_the_stop_on_a_changed_data_setting_names_reuse_stages_from(make_config, finished, no_model_loads):
    with pytest.raises(SettingsChangedError, match=f"--reuse_stages_from {finished}"):
        _run(make_config(output_dir=str(finished), eval_file=None, label_max_new_tokens=12))


LABELLING = ("source_adapter", "discriminator", "synthesis", "labels")


def _labels(run):
    from datasets import load_from_disk

    labels = RunDir(str(run)).labels
    stored = load_from_disk(os.path.join(labels, "labelled", "rows"))
    return json.loads((run / "labels" / "label_stats.json").read_text()), load_from_disk(labels), stored


def test_another_label_selection_is_made_from_the_stored_answers(make_config, finished, monkeypatch, caplog):
    """A new label_selection_ratio keeps the teacher's answers: no label is generated again, and once their
    confidences are stored, another selection loads no model at all."""
    import logging

    from peft_transfer import labelling
    from peft_transfer.modeling import ModelPool

    def no_labelling(*args, **kwargs):
        raise AssertionError("the teacher answered again")

    monkeypatch.setattr(labelling, "label", no_labelling)
    answers = _labels(finished)[2]
    assert "confidence" not in answers.column_names  # a ratio of 1 measures none
    with caplog.at_level(logging.INFO, logger="peft_transfer"):
        _run(make_config(output_dir=str(finished), eval_file=None, label_selection_ratio=0.5), stages=LABELLING)
    assert any("labels" in m and "stored answers" in m and "label_selection_ratio '<unset>' -> 0.5" in m
               for m in [r.getMessage() for r in caplog.records])
    stats, kept, stored = _labels(finished)
    assert (stats["labelled"], stats["selected"], len(kept)) == (12, 6, 6)
    assert sorted(stored["input"]) == sorted(answers["input"]) and len(stored) == 12
    assert set(kept["input"]) <= set(stored["input"]) and "confidence" in stored.column_names
    # The surest half by the stored confidences.
    order = sorted(stored["confidence"], reverse=True)
    assert min(kept["confidence"]) >= order[5]

    def refuse(self, ref):
        raise AssertionError(f"a base was loaded ({ref})")

    monkeypatch.setattr(ModelPool, "load", refuse)
    report = _run(make_config(output_dir=str(finished), eval_file=None, label_selection_ratio=0.25,
                              label_selection_strata=2), stages=LABELLING)
    stats, kept, _ = _labels(finished)
    assert (stats["selected"], stats["strata"], len(kept)) == (3, 2, 3)
    assert report["made_by"]["labels"]["settings"]["label_selection_ratio"] == 0.25


def test_reuse_stages_from_makes_another_selection_from_the_stored_answers(make_config, finished, tmp_path,
                                                                           no_model_loads):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(finished, source)
    # The teacher's answers with their confidences, as a run with a selection stores them.
    stored = source / "labels" / "labelled" / "rows"
    from datasets import Dataset, load_from_disk

    rows = load_from_disk(str(stored)).to_list()
    shutil.rmtree(stored)
    Dataset.from_list([dict(r, confidence=-float(i)) for i, r in enumerate(rows)]).save_to_disk(str(stored))
    new = tmp_path / "new"
    _run(make_config(output_dir=str(new), eval_file=None, reuse_stages_from=str(source), label_selection_ratio=0.5),
         stages=LABELLING)  # no model is loaded
    stats, kept, _ = _labels(new)
    assert kept["input"] == [r["input"] for r in rows[:6]] and stats["selected"] == 6
    assert json.loads((new / "labels" / "stage.json").read_text())["settings"]["label_selection_ratio"] == 0.5


# -- 1. the progress file is keyed by the settings -----------------------------------------------------------------


def test_progress_of_other_settings_is_set_aside_not_reused(make_config, run_dir, tmp_path):
    strict = make_config(output_dir=str(run_dir), filter_margin=1e9, candidate_budget=64, eval_file=None)
    with pytest.raises(SynthesisError, match="Only 0 of num_samples=12"):
        _run(strict)
    dirs = RunDir(str(run_dir))
    assert os.path.exists(dirs.progress)
    # The seed file is fixed (another one): the old candidates came from other seeds and must not be kept.
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"input": f"Sort these letters: {x}"}) + "\n"
                             for x in ("q w e", "r t y", "u i o", "p a s", "d f g")))
    report = _run(make_config(output_dir=str(run_dir), seed_file=str(seeds), eval_file=None))
    assert report["synthesis"]["accepted"] == 12
    assert glob.glob(dirs.progress + ".stale-*"), "the old progress is kept aside, not deleted"
    import hashlib

    new_seeds = [json.loads(line)["input"] for line in seeds.read_text().splitlines()]
    assert report["made_by"]["synthesis"]["inputs"]["seeds"] == hashlib.sha256(
        json.dumps(new_seeds).encode()).hexdigest()[:16]


def test_overwrite_deletes_the_progress_file(make_config, run_dir):
    strict = make_config(output_dir=str(run_dir), filter_margin=1e9, candidate_budget=64, eval_file=None)
    with pytest.raises(SynthesisError):
        _run(strict)
    # With overwrite the stored candidates are not reused: the budget is spent again from zero.
    with pytest.raises(SynthesisError, match="Only 0 of num_samples=12") as error:
        _run(make_config(output_dir=str(run_dir), filter_margin=1e9, candidate_budget=64, eval_file=None,
                         overwrite=True), stages=("synthesis",))
    assert error.value.stats.candidates == 64


def test_torn_progress_tail_with_overwrite_is_no_error(make_config, run_dir):
    dirs = RunDir(str(run_dir))
    with open(dirs.progress, "w") as f:
        f.write('{"input": "Sort these letters: a b", "sco')
    report = _run(make_config(output_dir=str(run_dir), eval_file=None, overwrite=True), stages=("synthesis",))
    assert report["synthesis"]["accepted"] == 12


# -- 3. and 4. checks before any work ------------------------------------------------------------------------------


def test_seed_longer_than_the_generators_context(make_config, tmp_path, no_model_loads, tiny_world):
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(tiny_world["target_model"]).max_position_embeddings
    seeds = tmp_path / "seeds.jsonl"
    long = "Sort these letters: " + " ".join("abcdefgh"[i % 8] for i in range(2 * context))
    seeds.write_text("".join(json.dumps({"input": x}) + "\n" for x in
                             ("Sort these letters: a b", long, "Sort these letters: c d", "Sort these letters: e f",
                              "Sort these letters: g h")))
    with pytest.raises(PreflightError, match=rf"does not fit the generator's context of {context} tokens"):
        _run(make_config(seed_file=str(seeds)))


def test_missing_source_adapter_fails_before_synthesis(make_config, run_dir, tmp_path, no_model_loads):
    config = make_config(output_dir=str(tmp_path / "other"), source_adapter=str(tmp_path / "no" / "such" / "adapter"),
                         discriminator_adapter=str(run_dir / "discriminator"), eval_file=None)
    with pytest.raises(PreflightError, match="does not exist"):
        _run(config)


def test_discriminator_of_another_base_fails_before_synthesis(make_config, run_dir, tiny_world, tmp_path,
                                                              no_model_loads):
    config = make_config(output_dir=str(tmp_path / "other"), source_adapter=str(run_dir / "source_adapter"),
                         discriminator_adapter=str(run_dir / "discriminator"),
                         discriminator_model=tiny_world["target_model"], eval_file=None)
    with pytest.raises(AdapterMismatchError, match="was trained on"):
        _run(config)


def test_token_level_kd_across_vocabularies_fails_before_synthesis(make_config, run_dir, no_model_loads):
    with pytest.raises(PreflightError, match="kd_loss='forward_kl'.*set `kd_loss: sequence`"):
        _run(make_config(output_dir=str(run_dir), kd_loss="forward_kl", eval_file=None))


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
def test_unwritable_output_dir(make_config, tmp_path, where, no_model_loads):
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "run"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    with pytest.raises(PreflightError, match="cannot be written to .*--output_dir"):
        _run(make_config(output_dir=str(out)))


def test_adapter_without_a_recorded_base_is_checked_by_its_shapes(make_config, run_dir, tiny_world, tmp_path,
                                                                   no_model_loads):
    import shutil

    adapter = tmp_path / "anonymous_adapter"
    shutil.copytree(run_dir / "source_adapter", adapter)
    config_path = adapter / "adapter_config.json"
    settings = json.loads(config_path.read_text())
    settings["base_model_name_or_path"] = None  # nothing recorded: only the weights can tell
    config_path.write_text(json.dumps(settings))
    config = make_config(output_dir=str(tmp_path / "other"), source_model=tiny_world["target_model"],
                         source_adapter=str(adapter), discriminator_adapter=str(run_dir / "discriminator"),
                         discriminator_model=tiny_world["source_model"], eval_file=None)
    with pytest.raises(AdapterMismatchError, match=r"\w+_proj takes \d+ features in .*, \d+ in the adapter"):
        _run(config)
