"""`evaluation_backend: lm_eval`: the three models (source base + adapter, target base, target base + transferred
adapter) evaluated by lm-evaluation-harness, on `eval_file` and on any lm-eval task.

`eval_file` becomes a local lm-eval task, `peft_transfer_eval` (a task YAML written into the evaluation stage's folder
beside a copy of the evaluated examples): each input put to the model as the built-in evaluation puts it (through
the chat template when the tokenizer has one, else `prompt_template`), greedy answers cut at `answer_stop`, exact
match of the whitespace-stripped answer. So a user's held-out set and a public benchmark are scored by one harness,
and `peft_transfer_eval`'s `exact_match` is the accuracy the rest of the run reports. `lm_eval_tasks` are any task
or group names lm-eval knows, or tasks of `lm_eval_include_path`.

The models are the run's own (its pool: packaged and GGUF sources, safetensors only, bf16 on CPU), handed to
lm-eval's `HFLM` as loaded models with their adapters, so lm-eval never downloads or loads a model itself.
"""

from __future__ import annotations

import functools
import json
import logging
import os

from .errors import UserError

logger = logging.getLogger(__name__)

LOCAL_TASK = "peft_transfer_eval"


class LmEvalError(UserError):
    pass


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise LmEvalError(f"evaluation_backend: lm_eval needs lm-evaluation-harness ({e}): "
                          'pip install "peft-transfer[lm_eval]", or use `evaluation_backend: exact_match`.') from None


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None):
    """lm-eval's index of its tasks (and of `include_path`'s): about 10 s to build here, so built once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def check_tasks(names: list[str], include_path: str | None) -> None:
    """Every task of `names` is one lm-eval knows (before any model loads)."""
    require_lm_eval()
    if include_path and not os.path.isdir(include_path):
        raise LmEvalError(f"lm_eval_include_path {include_path!r} is not a folder: give the folder of your task YAMLs.")
    if not names:
        return
    known = set(task_manager(include_path).all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LmEvalError(f"lm-eval knows no task named {', '.join(map(repr, unknown))}: give names from "
                          "`lm_eval ls tasks`, or a folder of your own task YAMLs in `lm_eval_include_path`.")


def _jinja_text(template: str) -> str:
    """`prompt_template` (`{input}` marks the input) as lm-eval's Jinja `doc_to_text`, its other text verbatim."""
    parts = template.split("{input}")
    return "{{input}}".join("{% raw %}" + p + "{% endraw %}" if p else "" for p in parts)


def write_local_task(folder: str, examples: list[dict], *, chat: bool, prompt_template: str, answer_stop: str | None,
                     max_new_tokens: int) -> dict:
    """`eval_file`'s `examples` as the lm-eval task `peft_transfer_eval`: its YAML and a copy of the examples in
    `folder` (to rerun with lm-eval's own CLI), and the task's config, which `evaluate_model` takes as it is."""
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, "examples.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"input": e["input"], "target": e["target"]}, ensure_ascii=False) + "\n")
    task = {
        "task": LOCAL_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": os.path.abspath(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        # With a chat template the input alone is the user turn (lm-eval applies the template), as in the built-in.
        "doc_to_text": "{{input}}" if chat else _jinja_text(prompt_template),
        "doc_to_target": "{{target | trim}}",
        "target_delimiter": "",
        "generation_kwargs": {"until": [answer_stop] if answer_stop else [], "do_sample": False,
                              "max_gen_toks": max_new_tokens},
        "filter_list": [{"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    with open(os.path.join(folder, f"{LOCAL_TASK}.yaml"), "w", encoding="utf-8") as f:
        json.dump(task, f, indent=1)  # JSON is YAML
    return task


def evaluate_model(model, tokenizer, *, tasks: list[str], local_task: dict | None, include_path: str | None,
                   batch_size: int, num_fewshot: int | None, limit: int | None, max_length: int | None = None) -> dict:
    """lm-eval's `simple_evaluate` of a loaded model on `tasks` (names) and `local_task` (a `write_local_task`
    config): `{"results": {task: {metric: value}}, "predictions": the local task's answers, "table": markdown}`."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import make_table

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    out = simple_evaluate(model=lm, tasks=[*([local_task] if local_task else []), *tasks],
                          task_manager=task_manager(include_path), num_fewshot=num_fewshot, limit=limit,
                          apply_chat_template=bool(getattr(tokenizer, "chat_template", None)),
                          log_samples=local_task is not None, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                          torch_random_seed=0, fewshot_random_seed=0)
    results = {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
               for task, metrics in out["results"].items()}
    samples = (out.get("samples") or {}).get(LOCAL_TASK, [])
    predictions = [s["filtered_resps"][0] for s in sorted(samples, key=lambda s: s["doc_id"])]
    return {"results": results, "predictions": predictions, "table": make_table(out)}


def accuracy(result: dict) -> float | None:
    """The local task's exact match (`exact_match,strip`) from `evaluate_model`'s results."""
    metrics = result["results"].get(LOCAL_TASK) or {}
    return next((v for k, v in metrics.items() if k.startswith("exact_match,")), None)


MODELS = (("source_adapter", "source base + source adapter"), ("target_base", "target base"),
          ("transferred", "target base + transferred adapter"))


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """`{model: {task: {metric: value}}}` as a header and rows: one row per task and metric (standard errors left
    out), one column per model."""
    models = [(key, label) for key, label in MODELS if key in results]
    metrics = sorted({(task, metric) for key, _ in models for task, values in results[key].items()
                      for metric in values if "_stderr" not in metric})
    rows = [[task, metric, *("" if (v := results[key].get(task, {}).get(metric)) is None else f"{v:.4f}"
                             for key, _ in models)] for task, metric in metrics]
    return ["task", "metric", *(label for _, label in models)], rows


def markdown_table(results: dict) -> list[str]:
    """`table` as Markdown lines (the printed report and the adapter card)."""
    header, rows = table(results)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]
