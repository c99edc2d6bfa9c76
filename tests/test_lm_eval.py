"""`evaluation_backend: lm_eval`: lm-evaluation-harness evaluates the three models on eval_file (as a generated local
task) and on a user's own lm-eval task, offline, with the tiny models."""

import json
import os

import pytest

MC_TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


def _user_task(folder):
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, "tiny_choice.jsonl")
    with open(data, "w") as f:
        for i in range(6):
            f.write(json.dumps({"question": f"Letters {i}:", "choices": [" a b", " b a"], "answer": i % 2}) + "\n")
    with open(os.path.join(folder, "tiny_choice.yaml"), "w") as f:
        f.write(MC_TASK.format(data=data))
    return folder


def test_lm_eval_scores_eval_file_as_the_built_in_evaluation_does(make_config, run_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from peft_transfer.pipeline import run_transfer
    from peft_transfer.rundir import RunDir, read_json

    built_in = run_transfer(make_config(output_dir=str(run_dir)), show_progress=False, print_report=False)
    dirs = RunDir(str(run_dir))
    predictions = read_json(dirs.predictions)
    include = _user_task(str(tmp_path / "my_tasks"))
    cfg = make_config(output_dir=str(run_dir), evaluation_backend="lm_eval", lm_eval_tasks=["tiny_choice"],
                      lm_eval_include_path=include)
    report = run_transfer(cfg, show_progress=False, print_report=False)
    # Only the evaluation was redone (its settings changed); the local task scored what the built-in scored.
    assert report["stages"]["target_adapter"].get("skipped") and not report["stages"]["evaluation"].get("skipped")
    for key in ("source_adapter", "target_base", "transferred"):
        assert report["evaluation"][key] == built_in["evaluation"][key], key
        assert read_json(dirs.predictions)[key] == [p.strip() for p in predictions[key]], key
        tables = report["lm_eval"][key]
        assert tables["peft_transfer_eval"]["exact_match,strip"] == report["evaluation"][key]
        assert 0 <= tables["tiny_choice"]["acc,none"] <= 1 and "acc_norm,none" not in tables["tiny_choice"]
    # The three models differ on the user's task only through their weights: the base alone and with an adapter.
    md = open(os.path.join(dirs.stage("evaluation"), "lm_eval.md")).read()
    assert md.count("tiny_choice") == 3 and md.count("peft_transfer_eval") == 3


def test_unknown_lm_eval_task_is_refused_before_any_model_loads(config_only, tmp_path, no_model_loads):
    pytest.importorskip("lm_eval")
    from peft_transfer import Transfer
    from peft_transfer.errors import UserError

    (tmp_path / "seeds.jsonl").write_text("".join(f'{{"input": "x{i}"}}\n' for i in range(5)))
    cfg = config_only(evaluation_backend="lm_eval", lm_eval_tasks=["no_such_task_here"],
                      seed_file=str(tmp_path / "seeds.jsonl"))
    with pytest.raises(UserError, match="no task named 'no_such_task_here'"):
        Transfer(cfg, show_progress=False).run(stages=("evaluation",))


def test_lm_eval_settings_without_the_backend_are_refused(config_only):
    with pytest.raises(Exception, match="evaluation_backend: lm_eval"):
        config_only(lm_eval_tasks=["arc_easy"])
