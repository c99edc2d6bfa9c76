"""benchmarks/quality_real.py and benchmarks/real_tasks.py: the tasks, the Wilson interval, and the tables and claims
on hand-made rows (the real-model run itself takes hours and is not a test)."""

import json
import os
import re

import pytest

from benchmarks import quality_real
from benchmarks.real_tasks import REAL_TASKS, make_real_task, solve


@pytest.mark.parametrize("name", list(REAL_TASKS))
def test_tasks_are_disjoint_deterministic_and_answerable(name):
    task = make_real_task(name, n_train=50, n_test=30, seed=0)
    again = make_real_task(name, n_train=50, n_test=30, seed=0)
    assert task.train == again.train and task.seeds == again.seeds
    assert not {s["input"] for s in task.train} & {s["input"] for s in task.test}
    assert len(task.seeds) == 5 and all(s in task.train for s in task.seeds)
    assert all(s["target"] and "\n" not in s["input"] + s["target"] for s in task.train + task.test)


def test_task_answers_are_right():
    for s in make_real_task("addition", n_train=20, n_test=0).train:
        a, b = map(int, re.fullmatch(r"What is (\d{3}) \+ (\d{3})\?", s["input"]).groups())
        assert s["target"] == str(a + b)
    for s in make_real_task("word_sorting", n_train=20, n_test=0).train:
        words = s["input"].split("List: ")[1].split()
        assert s["target"].split() == sorted(words) and len(set(words)) == len(words)
    from benchmarks.real_tasks import _CATEGORIES, _PLURAL

    counts = {"a": 1, "an": 1, "two": 2, "three": 3}
    category = {form: c for c, names in _CATEGORIES.items() for n in names for form in (n, _PLURAL.get(n, n + "s"))}
    for s in make_real_task("object_counting", n_train=40, n_test=0).train:
        asked = re.search(r"How many (.+) do I have\?", s["input"]).group(1)
        items = re.sub(r"^I have |\. How many.*$", "", s["input"]).replace(", and ", ", ").split(", ")
        parsed = [(counts[i.split(" ", 1)[0]], category[i.split(" ", 1)[1]]) for i in items]
        assert s["target"] == str(sum(n for n, c in parsed if c == asked))


@pytest.mark.parametrize("name", list(REAL_TASKS))
def test_solver_answers_every_input_of_its_task(name):
    task = make_real_task(name, n_train=100, n_test=0, seed=3)
    assert [solve(name, s["input"]) for s in task.train] == [s["target"] for s in task.train]
    others = [make_real_task(other, n_train=5, n_test=0).train[0]["input"] for other in REAL_TASKS if other != name]
    assert [solve(name, x) for x in others] == [None] * len(others)  # another task's input is not in this format


def test_solver_refuses_off_format_inputs():
    assert solve("addition", "What is 12 + 30?") == "42"  # in the template, whatever the digits
    assert solve("addition", "What's 12 + 30?") is None
    assert solve("object_counting", "I have a cat and two drosophilas. How many animals do I have?") is None
    assert solve("object_counting", "I have a cat, two pianos, and a dog. How many animals do I have?") == "2"
    assert solve("boolean_expressions", "( ) is") is None and solve("boolean_expressions", "not True or ( True ) is") == "True"
    assert solve("boolean_expressions", "notFalse and True is") is None  # words run together: not an expression
    assert solve("multistep_arithmetic", "((9 ** 9) ** 9) =") is None  # no powers reach eval
    assert solve("multistep_arithmetic", "((-3 * 2) - (4 + -1)) =") == "-9"
    assert solve("dyck_languages", "Complete the brackets: ( [ ) ]") is None  # not a prefix of a balanced word
    assert solve("dyck_languages", "Complete the brackets: ( [ ] {") == "} )"
    assert solve("weekday_arithmetic", "Today is Monday. What day is it 8 days from now?") == "Tuesday"


def test_label_quality_is_counted_from_a_rows_artifacts(tmp_path):
    from datasets import Dataset

    from peft_transfer.rundir import RunDir

    dirs = RunDir(str(tmp_path / "row"))
    Dataset.from_list([{"input": "What is 1 + 2?", "completion": " 3", "answer": "3"},
                       {"input": "What is 2 + 2?", "completion": " 5", "answer": "5"},
                       {"input": "How much is 2 + 2?", "completion": " 4", "answer": "4"}]).save_to_disk(dirs.labels)
    import json
    import os

    os.makedirs(os.path.dirname(dirs.predictions))
    with open(dirs.predictions, "w") as f:
        json.dump({"source_adapter": ["3", "7", "1"], "transferred": [" 3", "8", "1"]}, f)
    q = quality_real._label_quality("addition", str(tmp_path / "row"))
    assert q["num_labels"] == 3 and q["in_format"] == pytest.approx(2 / 3)
    assert q["labels_correct"] == pytest.approx(0.5) and q["agrees_with_teacher"] == pytest.approx(2 / 3)
    assert "labels_correct_by_score" not in q  # the row kept no scored candidates


def test_label_quality_splits_the_labels_by_the_filters_score(tmp_path):
    from datasets import Dataset

    from peft_transfer.rundir import RunDir

    dirs = RunDir(str(tmp_path / "row"))
    # Four in-format inputs and one not: the two scored highest have right labels, the two lowest wrong ones.
    rows = [("What is 1 + 2?", "3", 2.0), ("What is 2 + 2?", "4", 1.5), ("What is 3 + 2?", "9", 0.5),
            ("What is 4 + 2?", "1", 0.2), ("How much is 2 + 2?", "4", 3.0)]
    Dataset.from_list([{"input": x, "completion": f" {y}", "answer": y} for x, y, _ in rows]).save_to_disk(dirs.labels)
    Dataset.from_list([{"input": x, "score": s, "round": 0, "passed": True, "accepted": True} for x, _, s in rows]
                      + [{"input": "What is 9 + 9?", "score": -1.0, "round": 0, "passed": False, "accepted": False}]
                      ).save_to_disk(dirs.candidates)
    q = quality_real._label_quality("addition", str(tmp_path / "row"))["labels_correct_by_score"]
    # Median of the five labelled scores is 1.5: the upper half holds 3.0 (not in format), 2.0 and 1.5.
    assert q == {"upper": 1.0, "upper_n": 2, "lower": 0.0, "lower_n": 2}


def test_wilson_interval():
    lo, hi = quality_real.wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert quality_real.wilson(0.0, 300)[0] == 0.0 and quality_real.wilson(0.0, 300)[1] > 0
    assert quality_real.wilson(None, 10) is None


def _rows(values, pair="smollm2-gemma3", tasks=("t1", "t2")):
    rows = []
    for task in tasks:
        for setting in quality_real.ABLATIONS:
            rows.append({"task": task, "row": f"{setting}-{pair}", "pair": pair, "setting": setting,
                         "transferred": values.get(setting, 0.3), "source_adapter": 0.5, "target_base": 0.1,
                         "num_eval": 300, "mmd_accepted": 0.01, "mmd_unfiltered": 0.02})
    return rows


def test_tables_and_claims_on_hand_made_rows(tmp_path):
    good = _rows({"translora": 0.6, "unfiltered": 0.4, "seeds-only": 0.3, "random-text": 0.2})
    t = quality_real.tables(good)
    cell = t["table1"]["smollm2-gemma3"]["per_task"]["t1"]
    assert (cell["source_lora"], cell["target_base"], cell["translora"], cell["num_test"]) == (0.5, 0.1, 0.6, 300)
    assert cell["ci95"]["translora"][0] < 0.6 < cell["ci95"]["translora"][1]
    c = quality_real.claims(t)
    assert c["a_translora_ge_max_source_target_on_average"]["smollm2-gemma3"]["holds"] is True
    assert c["c_filtered_above_ablations"]["smollm2-gemma3"]["holds"] is True
    assert c["d_mmd_accepted_below_unfiltered_every_task"]["smollm2-gemma3"]["holds"] is True

    bad = _rows({"translora": 0.45, "unfiltered": 0.5})
    c = quality_real.claims(quality_real.tables(bad))
    assert c["a_translora_ge_max_source_target_on_average"]["smollm2-gemma3"]["holds"] is False
    assert c["b_translora_ge_source_minus_2_points_every_task"]["smollm2-gemma3"]["worst_gap"] == pytest.approx(-0.05)
    assert c["c_filtered_above_ablations"]["smollm2-gemma3"]["holds"] is False

    # A task without the ablations does not enter the ablations' averages (like with like).
    partial = good + [{"task": "t3", "row": "translora-smollm2-gemma3", "pair": "smollm2-gemma3",
                       "setting": "translora", "transferred": 0.0, "source_adapter": 0.5, "target_base": 0.1,
                       "num_eval": 300}]
    t5 = quality_real.tables(partial)["table5"]["smollm2-gemma3"]
    assert t5["translora"]["average"] == pytest.approx(0.6) and t5["translora"]["tasks_averaged"] == 2

    failed = good[:1] + [dict(r, transferred=None, error="SynthesisError: budget") for r in good[1:2]] + good[2:]
    result = quality_real.write_outputs(str(tmp_path), failed, {"settings": quality_real.SETTINGS})
    assert (tmp_path / "results.json").exists() and (tmp_path / "fig3_scatter.png").exists()
    text = (tmp_path / "results.md").read_text()
    assert "SynthesisError: budget" in text and "## Table 9" in text
    assert result["tables"]["table1"]["smollm2-gemma3"]["per_task"]["t1"]["source_lora"] == 0.5


def test_a_continued_row_reports_its_stages_times_beside_its_last_invocations_wall_time(tmp_path):
    # A row stopped after its synthesis and continued: `seconds` is the last invocation's wall time only.
    row = {"task": "t1", "row": "translora-smollm2-gemma3", "pair": "smollm2-gemma3", "setting": "translora",
           "transferred": 0.6, "source_adapter": 0.5, "target_base": 0.1, "num_eval": 300, "seconds": 1400.0,
           "num_accepted": 250, "num_candidates": 400,
           "stages": {"synthesis": {"seconds": 1500.0, "skipped": True}, "labels": {"seconds": 250.0, "skipped": True},
                      "target_adapter": {"seconds": 1270.0}, "evaluation": {"seconds": 125.5}}}
    assert quality_real.stage_seconds(row) == 3145.5
    assert quality_real.stage_seconds({"seconds": 3.0}) is None  # an owner row: no stages
    quality_real.write_outputs(str(tmp_path), [row], {"settings": quality_real.SETTINGS})
    assert "| t1 | translora-smollm2-gemma3 | 1400.0 | 3145.5 | 250 / 400 |" in (tmp_path / "results.md").read_text()


def test_claim_e_sets_the_default_against_its_teacher_the_paper_and_titok_on_the_tasks_each_ran():
    rows = _rows({"translora": 0.3}, tasks=("t1", "t2"))  # source 0.5, target 0.1 on both
    add = lambda task, setting, x, **more: rows.append(  # noqa: E731
        {"task": task, "row": f"{setting}-smollm2-gemma3", "pair": "smollm2-gemma3", "setting": setting,
         "transferred": x, **more})
    add("t1", quality_real.DEFAULT, 0.56, source_adapter=0.52, target_base=0.0)  # its own teacher: 0.52
    add("t1", "titok", 0.1)
    add("t2", "titok", None, error="SynthesisError: duplicates")
    c = quality_real.claims(quality_real.tables(rows))["e_default_ge_max_source_target_and_above_translora_titok"]
    e = c["smollm2-gemma3"]
    assert e["tasks_with_default"] == 1 and e["tasks"] == 2
    assert e["average"] == {"default": 0.56, "source_lora": 0.52, "target_base": 0.0}
    assert e["verdicts"] == {"teacher": True, "translora": True, "titok": True}
    assert e["against_titok"] == {"tasks": 1, "default": 0.56, "titok": 0.1}
    assert e["holds"] is None  # not yet run on t2
    add("t2", quality_real.DEFAULT, 0.40, source_adapter=0.50, target_base=0.1)
    e = quality_real.claims(quality_real.tables(rows))["e_default_ge_max_source_target_and_above_translora_titok"]
    e = e["smollm2-gemma3"]
    assert e["average"]["default"] == pytest.approx(0.48) and e["average"]["source_lora"] == pytest.approx(0.51)
    assert e["verdicts"]["teacher"] is False and e["holds"] is False
    assert e["against_titok"]["tasks"] == 1  # the failed TiTok row has no number
    assert e["against_target_own_data"]["tasks"] == 0  # no pair starts from Gemma-3
    # Qwen -> SmolLM2: SmolLM2 trained on the task's own data is the source of SmolLM2 -> Gemma-3 (0.5 on t1).
    rows.append({"task": "t1", "row": f"{quality_real.DEFAULT}-qwen-smollm2", "pair": "qwen-smollm2",
                 "setting": quality_real.DEFAULT, "transferred": 0.45, "source_adapter": 0.9, "target_base": 0.0})
    q = quality_real.claims(quality_real.tables(rows))["e_default_ge_max_source_target_and_above_translora_titok"]
    assert q["qwen-smollm2"]["against_target_own_data"] == {"tasks": 1, "default": 0.45, "target_own_data": 0.5,
                                                            "source_lora": 0.9}
    assert "teacher" in q["qwen-smollm2"]["verdicts"] and "target_own_data" not in q["qwen-smollm2"]["verdicts"]
    rows.pop()
    text = quality_real.markdown({"tables": quality_real.tables(rows),
                                  "claims": quality_real.claims(quality_real.tables(rows)), "rows": rows})
    assert ("- (e) smollm2-gemma3: the default's data settings (label-selection+n-scaling, 3 epochs) 48.0 >= "
            "max(source+LoRA 51.0, target base 5.0) on average over the 2 of 2 tasks it has run on (**fails**)") in text


def test_claim_e_holds_only_once_the_titok_style_row_has_run_on_every_task():
    rows = _rows({"translora": 0.3}, tasks=("t1", "t2"))  # source 0.5, target 0.1 on both
    for task in ("t1", "t2"):
        rows.append({"task": task, "row": f"{quality_real.DEFAULT}-smollm2-gemma3", "pair": "smollm2-gemma3",
                     "setting": quality_real.DEFAULT, "transferred": 0.6, "source_adapter": 0.5, "target_base": 0.1})
    rows.append({"task": "t1", "row": "titok-smollm2-gemma3", "pair": "smollm2-gemma3", "setting": "titok",
                 "transferred": 0.2})
    claim = lambda: quality_real.claims(quality_real.tables(rows))[  # noqa: E731
        "e_default_ge_max_source_target_and_above_translora_titok"]["smollm2-gemma3"]
    assert claim()["verdicts"] == {"teacher": True, "translora": True, "titok": True}
    assert claim()["holds"] is None  # the TiTok-style row has not run on t2
    rows.append({"task": "t2", "row": "titok-smollm2-gemma3", "pair": "smollm2-gemma3", "setting": "titok",
                 "transferred": None, "error": "SynthesisError: duplicates"})
    assert claim()["holds"] is None  # failed there: still open
    rows[-1] = {**rows[-1], "transferred": 1.0, "error": None}  # 0.6 on average, level with the default
    assert claim()["verdicts"]["titok"] is False and claim()["holds"] is False
    rows[-1]["transferred"] = 0.3
    assert claim()["holds"] is True
    text = quality_real.markdown({"tables": quality_real.tables(rows),
                                  "claims": quality_real.claims(quality_real.tables(rows)), "rows": rows})
    assert "the TiTok-style row have run on every task; a comparison that already covers every task and fails " \
           "makes it fail): **holds**" in text


def test_gap_table_reads_the_diagnostic_rows():
    rows = _rows({"translora": 0.3}, tasks=("t1",))
    rows[0].update(in_format=0.9, labels_correct=0.6, agrees_with_teacher=0.4,
                   labels_correct_by_score={"upper": 0.7, "upper_n": 100, "lower": 0.5, "lower_n": 100})
    rows += [{"task": "t1", "row": f"{s}-smollm2-gemma3", "pair": "smollm2-gemma3", "setting": s, "transferred": x}
             for s, x in (("real-inputs", 0.45), ("real-data", 0.55))]
    gap = quality_real.tables(rows)["gap"]["smollm2-gemma3"]["t1"]
    assert (gap["translora"], gap["source_lora"], gap["in_format"], gap["labels_correct"]) == (0.3, 0.5, 0.9, 0.6)
    assert (gap["real_inputs"], gap["real_data"]) == (0.45, 0.55)
    text = quality_real.markdown(
        {"tables": quality_real.tables(rows), "claims": quality_real.claims(quality_real.tables(rows)), "rows": rows})
    assert "| t1 | smollm2-gemma3 | 50.0 | 30.0 | 90.0 | 60.0 | 70.0 / 50.0 | 40.0 | 45.0 | — | 55.0 |" in text


def test_an_earlier_results_file_keeps_the_rows_not_measured_again(tmp_path):
    earlier = [dict(task="addition", row="translora-qwen-smollm2", pair="qwen-smollm2", setting="translora",
                    transferred=0.6),
               dict(task="addition", row="owner-qwen", pair="qwen", setting="owner", transferred=None)]
    prior = tmp_path / "results.json"
    prior.write_text(__import__("json").dumps({"rows": earlier}))
    again = [dict(task="addition", row="translora-qwen-smollm2", pair="qwen-smollm2", setting="translora",
                  transferred=0.7)]
    rows, carried = quality_real.with_prior(again, str(prior))
    assert carried == 1 and len(rows) == 2
    assert rows[0] == again[0]  # measured again: the new record wins and is not marked
    assert rows[1]["row"] == "owner-qwen" and rows[1]["carried_from"] == str(prior)
    assert quality_real.with_prior(again, None) == (again, 0)


def test_owner_rows_and_the_rows_changes_reuse_are_kept_beside_the_results_and_restored_in_a_new_run_folder(tmp_path):
    import json

    run = tmp_path / "run"

    def row(task, name, stages, **record):
        folder = run / task / name
        for stage in stages:
            (folder / stage / "trainer" / "checkpoint-8").mkdir(parents=True)
            (folder / stage / "trainer" / "checkpoint-8" / "optimizer.pt").write_bytes(b"x" * 100)
            (folder / stage / "adapter_model.safetensors").write_bytes(b"weights of " + stage.encode())
            (folder / stage / "stage.json").write_text(json.dumps({"fingerprint": stage}))
        (folder / "config.json").write_text("{}")
        (folder / "row.json").write_text(json.dumps(dict(task=task, row=name, **record)))

    row("addition", "owner-qwen", ("source_adapter", "discriminator"), seconds=2700.0)
    row("addition", "owner-smollm2", ("source_adapter",), error="SynthesisError: ...")
    row("addition", "translora-qwen-smollm2", ("synthesis", "labels", "target_adapter", "evaluation"), transferred=0.6)
    row("addition", "more-steps-qwen-smollm2", ("synthesis", "labels"), transferred=0.7)  # no change reuses it
    row("addition", "label-selection+n-scaling-smollm2-gemma3", ("synthesis",))  # length-strata reuses it
    (run / "addition" / "owner-gemma3" / "source_adapter.incomplete").mkdir(parents=True)  # nothing finished
    row("word_sorting", "owner-qwen", ("source_adapter",))  # cut in its discriminator: no row.json yet
    (run / "word_sorting" / "owner-qwen" / "row.json").unlink()
    (run / "word_sorting" / "owner-qwen" / "discriminator.incomplete").mkdir()
    results = tmp_path / "results"
    owners = results / "owners"

    assert quality_real.keep_rows(str(run), str(results)) == [
        "stages/addition/label-selection+n-scaling-smollm2-gemma3", "owners/addition/owner-qwen",
        "stages/addition/translora-qwen-smollm2", "owners/word_sorting/owner-qwen"]
    paper = results / "stages" / "addition" / "translora-qwen-smollm2"  # its inputs, labels and predictions
    assert sorted(p.name for p in paper.iterdir()) == ["config.json", "evaluation", "labels", "row.json", "synthesis"]
    assert not (paper / "synthesis" / "trainer").exists()
    fresh_paper = tmp_path / "fresh" / "addition" / "translora-qwen-smollm2"
    assert quality_real.restore_row(str(paper), str(fresh_paper))
    assert json.loads((fresh_paper / "row.json").read_text())["transferred"] == 0.6
    cut = owners / "word_sorting" / "owner-qwen"
    assert sorted(p.name for p in cut.iterdir()) == ["config.json", "source_adapter"]
    fresh_cut = tmp_path / "fresh" / "word_sorting" / "owner-qwen"
    assert quality_real.restore_row(str(cut), str(fresh_cut))  # the row then trains only its discriminator
    assert not (fresh_cut / "row.json").exists() and (fresh_cut / "source_adapter" / "stage.json").exists()
    kept = owners / "addition" / "owner-qwen"
    assert sorted(p.name for p in kept.iterdir()) == ["config.json", "discriminator", "row.json", "source_adapter"]
    assert not (kept / "source_adapter" / "trainer").exists()  # checkpoints stay behind
    assert (kept / "discriminator" / "stage.json").read_text() == json.dumps({"fingerprint": "discriminator"})

    fresh = tmp_path / "fresh" / "addition" / "owner-qwen"
    assert quality_real.restore_row(str(kept), str(fresh))
    record = json.loads((fresh / "row.json").read_text())
    assert record["seconds"] == 2700.0 and record["carried_from"] == os.path.relpath(kept)  # no machine's path
    # A restored owner is not copied back over the one it came from (the report would only rewrite its record).
    assert quality_real.keep_rows(str(tmp_path / "fresh"), str(results)) == ["owners/word_sorting/owner-qwen"]
    assert (fresh / "source_adapter" / "adapter_model.safetensors").read_bytes() == b"weights of source_adapter"
    (fresh / "row.json").write_text(json.dumps(dict(record, seconds=1.0)))
    assert not quality_real.restore_row(str(kept), str(fresh))  # a row already there is never replaced
    assert json.loads((fresh / "row.json").read_text())["seconds"] == 1.0
    assert not quality_real.restore_row(str(owners / "addition" / "owner-smollm2"), str(tmp_path / "x"))


def test_a_restored_owner_names_its_source_inside_the_checkout_that_holds_it(tmp_path, monkeypatch):
    # The benchmark runs from a worktree elsewhere; the owners sit in the main checkout.
    kept = tmp_path / "main" / "benchmarks" / "results" / "owners" / "addition" / "owner-smollm2"
    (tmp_path / "main" / ".git").mkdir(parents=True)
    (kept / "source_adapter").mkdir(parents=True)
    (kept / "row.json").write_text(json.dumps({"task": "addition", "row": "owner-smollm2"}))
    worktree = tmp_path / "wt"
    worktree.mkdir()
    monkeypatch.chdir(worktree)
    row_dir = tmp_path / "runs" / "addition" / "owner-smollm2"
    assert quality_real.restore_row(str(kept), str(row_dir))
    record = json.loads((row_dir / "row.json").read_text())
    assert record["carried_from"] == "benchmarks/results/owners/addition/owner-smollm2"


def test_each_change_reuses_stages_a_row_before_it_makes():
    # A change that reuses another row's inputs (and labels) must name a row that makes them itself (the paper's row,
    # or a change that reuses nothing) and that runs before it, else the change is silently never run. A change that
    # reuses nothing may still name the row it is measured against.
    order = ["translora", *quality_real.IMPROVEMENTS]
    for setting, (overrides, reused, *_) in quality_real.IMPROVEMENTS.items():
        base = quality_real.reused_from(setting)
        assert base in order[: order.index(setting)], setting
        if base != "translora" and reused:
            assert quality_real.IMPROVEMENTS[base][1] == (), (setting, base)
            assert quality_real.ROW_OWNER.get(setting) == quality_real.ROW_OWNER.get(base), setting
        assert set(reused) <= {"synthesis", "labels"}, setting


def test_a_row_that_labels_its_reused_inputs_again_starts_from_the_stored_answers():
    # length-strata and surest-quarter keep the default's inputs and choose among its labels again: they name that
    # row's folder as reuse_stages_from, so the library makes their selection from its stored answers.
    for setting in ("length-strata", "surest-quarter", "self-consistency"):
        assert quality_real.answers_from(quality_real.IMPROVEMENTS[setting][1], "base") == {"reuse_stages_from": "base"}
    for setting in ("label-selection+more-steps", "token-selection", "label-selection+n-scaling"):
        assert quality_real.answers_from(quality_real.IMPROVEMENTS[setting][1], "base") == {}


def test_rows_asked_for_bring_the_rows_whose_stages_they_reuse_and_no_others():
    # `--rows label-selection` runs all-linear+n-scaling first (it reuses its inputs); a row that reuses nothing does
    # not run the paper's row it is only measured against.
    assert quality_real.rows_needed(["label-selection"]) == ("all-linear+n-scaling", "label-selection")
    assert quality_real.rows_needed(["label-selection+n-scaling"]) == ("label-selection+n-scaling",)
    assert quality_real.rows_needed(["more-steps", "unfiltered"]) == ("translora", "unfiltered", "more-steps")
    assert quality_real.rows_needed(quality_real.ROWS) == quality_real.ROWS


def test_each_owner_variant_changes_the_discriminator_it_names_and_nothing_else(tmp_path):
    common = dict(quality_real.SETTINGS["transfer"], task_name="t", train_file="train.jsonl", seed=0)
    paper = quality_real.owner_variant_config(common, "format-negatives", "smollm2", "adapter", str(tmp_path))
    assert paper.lora_target_modules == ["q_proj", "v_proj"] and paper.discriminator_format_negatives == 0.5
    wide = quality_real.owner_variant_config(common, "all-linear-discriminator", "smollm2", "adapter", str(tmp_path))
    assert wide.lora_target_modules == ["all-linear"] and wide.discriminator_format_negatives == 0.0
    assert wide.output_dir == str(tmp_path / "owner-smollm2-all-linear-discriminator")
    differ = ("lora_target_modules", "discriminator_format_negatives", "output_dir")
    assert {k: v for k, v in vars(wide).items() if k not in differ} == {
        k: v for k, v in vars(paper).items() if k not in differ}


def test_paired_comparison_counts_inputs_only_one_row_gets_right(tmp_path):
    import json

    from peft_transfer.rundir import RunDir

    eval_file = tmp_path / "test.jsonl"
    eval_file.write_text("".join(json.dumps({"input": f"q{i}", "target": str(i)}) + "\n" for i in range(12)))
    right = [str(i) for i in range(12)]
    rows = {"change": right[:10] + ["x", "x"],  # right on 0-9
            "paper": ["x"] * 8 + right[8:]}     # right on 8-11
    for name, preds in rows.items():
        dirs = RunDir(str(tmp_path / name))
        os.makedirs(os.path.dirname(dirs.predictions))
        with open(dirs.predictions, "w") as f:
            json.dump({"transferred": [f" {p} " for p in preds]}, f)
        with open(dirs("config.json"), "w") as f:
            json.dump({"eval_file": str(eval_file)}, f)
    result = quality_real.paired_comparison(str(tmp_path / "change"), str(tmp_path / "paper"))
    # 8 inputs only the change gets right, 2 only the paper's row: two-sided exact p = 2 * P(X <= 2 | 10, 1/2).
    assert (result["wins"], result["losses"]) == (8, 2)
    assert result["p_value"] == pytest.approx(2 * (1 + 10 + 45) / 1024, abs=1e-4)
    assert quality_real.paired_comparison(str(tmp_path / "change"), str(tmp_path / "missing")) is None

    # The paper's row restored from `stages/` names the held-out file of the run folder it was made in, gone now:
    # its evaluation's record says which contents it was measured on.
    from peft_transfer.rundir import hash_path

    paper = RunDir(str(tmp_path / "paper"))
    with open(paper("config.json"), "w") as f:
        json.dump({"eval_file": "/elsewhere/runs/addition/data/test.jsonl"}, f)
    assert quality_real.paired_comparison(str(tmp_path / "change"), paper.root) is None  # nothing says what it was
    with open(paper.stage_record("evaluation"), "w") as f:
        json.dump({"inputs": {"eval_file": hash_path(str(eval_file))}}, f)
    assert quality_real.paired_comparison(str(tmp_path / "change"), paper.root) == result
    with open(paper.stage_record("evaluation"), "w") as f:
        json.dump({"inputs": {"eval_file": "0123456789abcdef"}}, f)  # other held-out inputs
    assert quality_real.paired_comparison(str(tmp_path / "change"), paper.root) is None


def test_a_row_that_ran_out_of_candidates_is_continued_only_with_a_larger_budget():
    default = quality_real.SETTINGS["transfer"]["candidate_budget"]
    ran_out = {"error": "SynthesisError: Only 29 of num_samples=250 candidates were accepted ..."}
    assert quality_real.row_budget(ran_out) == default  # rows recorded before the budget was
    assert quality_real.budget_raised(ran_out, default + 1)
    assert not quality_real.budget_raised(ran_out, default)
    assert not quality_real.budget_raised(dict(ran_out, candidate_budget=6000), 5000)
    assert quality_real.budget_raised(dict(ran_out, candidate_budget=6000), 6001)
    # a row that failed otherwise, or finished, is never run again for a budget
    assert not quality_real.budget_raised({"error": "RuntimeError: out of memory"}, 10 * default)
    assert not quality_real.budget_raised({"transferred": 0.5}, 10 * default)


def test_a_budget_below_the_samples_needed_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as e:
        quality_real.main(["--candidate-budget", "10", "--tasks", "addition", "--out", "/nonexistent/never-made"])
    assert e.value.code == 2
    assert "--candidate-budget 10 is below the 250" in capsys.readouterr().err
    assert not os.path.exists("/nonexistent/never-made")


def test_the_paper_row_and_the_owners_keep_the_papers_adapter_whatever_the_default():
    # The benchmark names the paper's adapter itself: a new library default must not change the paper's row, nor
    # the fingerprints of the owners kept in `owners/` (trained with r 8, alpha 8 on q/v; an owner variant that names
    # its own modules, such as the all-linear discriminator, with those).
    import json

    settings = quality_real.SETTINGS["transfer"]
    assert (settings["lora_r"], settings["lora_alpha"], settings["lora_target_modules"]) == (8, 8, ["q_proj", "v_proj"])
    assert (settings["num_samples"], settings["num_train_epochs"]) == (250, 6)  # the paper's N; 6 epochs on CPU
    assert settings["label_selection_ratio"] == 1.0  # the paper distils every label (the library keeps the surer half)
    owners = os.path.join(os.path.dirname(quality_real.__file__), "results", "quality-real", "owners")
    for task in os.listdir(owners):
        for row in os.listdir(os.path.join(owners, task)):
            with open(os.path.join(owners, task, row, "config.json")) as f:
                made = json.load(f)
            variant = quality_real.OWNER_VARIANTS.get(row.split("-", 2)[2] if row.count("-") >= 2 else "", {})
            expected = variant.get("lora_target_modules", settings["lora_target_modules"])
            assert made["lora_target_modules"] == expected, (task, row)
            assert (made["lora_r"], made["lora_alpha"]) == (settings["lora_r"], settings["lora_alpha"]), (task, row)


def test_diversity_counts_the_near_duplicates_the_synthesis_would_drop():
    """`benchmarks/diversity_real.py` drops in acceptance order against the inputs kept before, as the synthesis's
    check does (compared on the same vectors), and finds each vector's nearest other one."""
    import types

    import numpy as np

    from benchmarks import diversity_real
    from peft_transfer.synthesis import SynthesisStats, _Verdicts

    e = diversity_real.unit([[1, 0], [1, 0.05], [0, 1], [0.05, 1], [1, -1]])
    assert np.allclose(diversity_real.nearest_other(e)[[0, 2]], [e[0] @ e[1], e[2] @ e[3]])
    assert diversity_real.dropped_in_order(e, 0.99) == 2 and diversity_real.dropped_in_order(e, 0.9999) == 0

    vectors = diversity_real.unit(np.random.default_rng(0).normal(size=(60, 3)))
    for threshold in (0.9, 0.97):
        cfg = types.SimpleNamespace(near_duplicate_similarity=threshold, filter_margin=0.0)
        verdicts = _Verdicts(cfg, num_samples=1000, embed=lambda texts: vectors[[int(t) for t in texts]])
        stats = SynthesisStats()
        verdicts.take([{"input": str(i), "score": 1.0} for i in range(len(vectors))], stats)
        assert stats.near_duplicates == diversity_real.dropped_in_order(vectors, threshold) > 0


def test_label_confidence_counts_right_labels_by_the_teachers_confidence():
    """`benchmarks/label_confidence.py`: ROC-AUC as the chance a right label outscores a wrong one, and the share
    right among the surest inputs."""
    from benchmarks import label_confidence as lc

    scores, right = [0.9, 0.8, 0.1, 0.5, -1.0, 0.5], [True, True, False, False, False, True]
    # right {0.9, 0.8, 0.5} against wrong {0.1, 0.5, -1.0}: 3 + 3 + (1 + 0.5 + 1) of 9 pairs.
    assert lc.roc_auc(scores, right) == pytest.approx(8.5 / 9)
    assert lc.roc_auc(scores, [True] * 6) is None
    assert lc.right_in_top(scores, right, 0.5) == pytest.approx(2 / 3)  # 0.9, 0.8 and the first 0.5 (wrong)
    assert lc.right_in_top(scores, right, 0.25) == 1.0  # at least one input
    out = lc.summarise({"confidence": scores, "excess": [-s for s in scores]}, right, n_labels=8)
    assert out["n_labels"] == 8 and out["n_in_format"] == 6 and out["right"] == 0.5
    assert out["excess"]["roc_auc"] == pytest.approx(1 - 8.5 / 9)
    table = lc.markdown({"addition/all-linear+n-scaling-smollm2-gemma3": out})
    assert ("| addition | all-linear+n-scaling-smollm2-gemma3 | the row's labels | 6 of 8 | 50.0% | confidence | 0.944 | "
            "66.7% | 100.0% |") in table
    assert "| excess | 0.056 | 0.0% | 0.0% |" in table and "| min |" not in table  # only the signals measured


def test_labels_right_by_filter_score_splits_at_the_median_and_skips_unfiltered_rows():
    inputs, answers, labels = ["a", "b", "c", "d"], ["1", "2", None, "4"], [" 1", "0", "3", "4"]
    scored = {"input": inputs, "score": [0.1, 0.9, 0.5, 0.7]}
    split = quality_real._labels_correct_by_score(inputs, answers, labels, scored)
    # median of 0.1 0.5 0.7 0.9 is 0.7: upper b (wrong), d (right); lower a (right), c (not in format)
    assert split == {"upper": 0.5, "upper_n": 2, "lower": 1.0, "lower_n": 1}
    # An unfiltered row (TiTok's curriculum, `filter_mode: none`) has no scores: nothing to split.
    unfiltered = {"input": inputs, "score": [None] * 4}
    assert quality_real._labels_correct_by_score(inputs, answers, labels, unfiltered) is None


def test_more_seeds_keeps_the_tasks_seeds_first_and_adds_other_train_examples(tmp_path):
    """The seeds-15 row: the task keeps 5 seeds, so 15 per prompt needs a file of 15 (the 5 first, then train
    examples that are not seeds, the same ones on every call); `load_seeds` would refuse the 5-seed file."""
    from peft_transfer.data import load_seeds

    train = [{"input": f"q{i}", "target": str(i)} for i in range(40)]
    seeds = [train[i] for i in (3, 7, 11, 20, 33)]
    for name, rows in (("train", train), ("seeds", seeds)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(Exception, match="num_seeds=15"):
        load_seeds(str(tmp_path / "seeds.jsonl"), 15)
    path = quality_real.more_seeds(str(tmp_path), 15)
    got = load_seeds(path, 15)
    assert got[:5] == [s["input"] for s in seeds] and len(set(got)) == 15
    assert set(got) <= {t["input"] for t in train}
    (tmp_path / "seeds-15.jsonl").unlink()
    assert load_seeds(quality_real.more_seeds(str(tmp_path), 15), 15) == got  # drawn the same way again


def test_a_change_takes_its_seed_as_an_offset_and_more_seeds_from_a_file_of_that_many(tmp_path):
    retrained, reused, *base = quality_real.IMPROVEMENTS["retrained"]
    assert reused == ("synthesis", "labels") and not base  # the paper's row's inputs and labels, against that row
    assert set(retrained) == {"seed"}  # only the training seed differs
    got = quality_real.row_overrides(retrained, seed=7, seeds_kept=5, data=str(tmp_path))
    assert got["seed"] == 7 + retrained["seed"] != 7
    unchanged = {"num_train_epochs": 12}
    assert quality_real.row_overrides(unchanged, seed=7, seeds_kept=5, data="x") == unchanged
    train = [{"input": f"q{i}", "target": str(i)} for i in range(20)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train[:5]))
    got = quality_real.row_overrides(quality_real.IMPROVEMENTS["seeds-15"][0], seed=0, seeds_kept=5, data=str(tmp_path))
    assert got["num_seeds"] == 15 and got["seed_file"] == str(tmp_path / "seeds-15.jsonl")


def test_generator_temperature_counts_format_copies_and_the_real_vocabulary():
    from benchmarks.generator_temperature import count

    seeds = ["Sort the following words alphabetically: List: apple pear"]
    real = {"Sort the following words alphabetically: List: fig kiwi"}
    vocabulary = {"Sort", "the", "following", "words", "alphabetically:", "List:", "fig", "kiwi", "apple", "pear"}
    candidates = [seeds[0], "Sort the following words alphabetically: List: fig kiwi",
                  "Sort the following words alphabetically: List: zebra fig", "not a list", None]
    c = count("word_sorting", candidates, seeds, real, vocabulary)
    assert (c["prompts"], c["parsed"], c["distinct"], c["seed_copies"], c["real_copies"]) == (5, 4, 4, 1, 1)
    assert c["in_format"] == 3  # the off-format text is not answered by the task's solver
    assert c["words_in_real_vocabulary"] == round(23 / 27, 3)  # word by word: "zebra", "not", "a", "list" are not
    assert c["mean_words"] == round(27 / 4, 1)


def test_each_change_is_summed_over_the_tasks_where_it_and_its_reference_row_have_both_run():
    rows = _rows({"translora": 0.3}, tasks=("t1", "t2", "t3"))
    add = lambda task, setting, x, **more: rows.append(  # noqa: E731
        {"task": task, "row": f"{setting}-smollm2-gemma3", "pair": "smollm2-gemma3", "setting": setting,
         "transferred": x, "num_eval": 300, **more})
    add("t1", "more-steps", 0.5,
        paired={"against": "translora-smollm2-gemma3", "wins": 70, "losses": 10, "p_value": 1e-12})
    add("t2", "more-steps", 0.2)  # no predictions at hand: averaged, not counted input by input
    add("t3", "more-steps", None, error="SynthesisError: budget")
    add("t1", "label-selection", 0.9)  # its reference row (all-linear+n-scaling) has not run
    for r in rows:
        if r["row"] == "translora-smollm2-gemma3" and r["task"] == "t1":
            r["transferred"] = 0.33  # the paper's row made again after more-steps was compared with it (at 0.3)
    t = quality_real.tables(rows)
    v = t["improvement_summary"]["smollm2-gemma3"]["more-steps"]
    assert v["against"] == "translora" and v["tasks"] == ["t1", "t2"] and v["of_tasks"] == 3
    # t1: 0.5 - (70 - 10) / 300 = 0.3, the row it was compared with; t2: the paper's row as it stands, 0.3
    assert v["change"] == pytest.approx(0.35) and v["against_average"] == pytest.approx(0.3)
    assert (v["tasks_paired"], v["wins"], v["losses"]) == (1, 70, 10)
    assert v["p_value"] == pytest.approx(quality_real.mcnemar_p(70, 10)) and v["p_value"] < 1e-10
    assert "label-selection" not in t["improvement_summary"]["smollm2-gemma3"]
    assert quality_real.mcnemar_p(5, 5) == 1.0 and quality_real.mcnemar_p(0, 0) == 1.0
    assert quality_real.mcnemar_p(0, 6) == pytest.approx(2 / 64)
    text = quality_real.markdown({"tables": t, "claims": quality_real.claims(t), "rows": rows})
    assert "| smollm2-gemma3 | more-steps | translora | 2 of 3 | 35.0 | 30.0 | +5.0 | 70 (on 1 tasks) | 10 |" in text
