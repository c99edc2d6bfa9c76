"""Does the teacher know when its label is right? For the labelled synthetic inputs of a real-model row, the
teacher's confidence in each answer (`selection.answer_confidence`: the mean log-probability of its tokens, the
signal of `label_selection_ratio`) and its mean contrastive excess over the source base (TiTok's signal), against
whether the answer is right by the task's solver. Beside the mean, two other readings of the same token
log-probabilities: the lowest one (`min`: an answer is as sure as its least sure token) and their sum (`sum`: the
log-probability of the whole answer, which favours short ones).

    python benchmarks/label_confidence.py runs/quality-real-addition/addition/all-linear+n-scaling-smollm2-gemma3 \
        runs/quality-real-b/word_sorting/all-linear+n-scaling-smollm2-gemma3 --out benchmarks/results/quality-real
    python benchmarks/label_confidence.py --accepted \
        runs/quality-real-d/addition/label-selection+n-scaling-smollm2-gemma3 --out benchmarks/results/quality-real

Each argument is a row of `benchmarks/quality_real.py` whose labels are done; the teacher is the source base with
the adapter of the task's owner row (`../owner-<source>/source_adapter`). Only inputs in the task's format count
(the solver answers them). Per row: how many labels are right, the ROC-AUC of each signal for telling right from
wrong, and the share right in the surer half and the surest quarter by it. With `--accepted` the teacher labels
again every accepted input of the row's synthesis (greedy, the row's settings) instead of reading the row's
labels: for a row that kept only its surest labels (`label_selection_ratio` < 1), the set that selection chose
from. Writes `label_confidence.json` and `label_confidence.md` under `--out` (rows already there are kept unless
measured again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


def roc_auc(scores: list[float], right: list[bool]) -> float | None:
    """The probability that a right label scores above a wrong one (ties count half)."""
    pos = [s for s, r in zip(scores, right) if r]
    neg = [s for s, r in zip(scores, right) if not r]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def right_in_top(scores: list[float], right: list[bool], share: float) -> float:
    """The share of right labels among the `share` of inputs that score highest (ties to the earlier input)."""
    top = sorted(range(len(scores)), key=lambda i: -scores[i])[: max(1, int(len(scores) * share))]
    return sum(right[i] for i in top) / len(top)


def summarise(signals: dict[str, list[float]], right: list[bool], n_labels: int) -> dict:
    out = {"n_labels": n_labels, "n_in_format": len(right), "right": sum(right) / len(right) if right else None}
    for name, scores in signals.items():
        out[name] = {"roc_auc": roc_auc(scores, right), "right_in_surer_half": right_in_top(scores, right, 0.5),
                     "right_in_surest_quarter": right_in_top(scores, right, 0.25)}
    return out


def owner_adapter(row: Path) -> tuple[str, str, Path] | None:
    """The row's pair, its source and the source adapter of the task's owner row; None for a row of no known pair."""
    from benchmarks.quality_real import PAIRS

    pair = next((p for p in PAIRS if row.name.endswith(p)), None)
    if pair is None:
        return None
    source = PAIRS[pair][0]
    return pair, source, row.parent / f"owner-{source}" / "source_adapter"


def measure(row: Path, *, accepted: bool = False) -> dict:
    from types import SimpleNamespace

    from datasets import load_from_disk

    from benchmarks.quality_real import MODELS
    from benchmarks.real_tasks import solve
    from peft_transfer.data import task_prompt
    from peft_transfer.labelling import label
    from peft_transfer.modeling import load_adapter, load_base, load_tokenizer
    from peft_transfer.selection import _completion_logprobs

    task, (pair, source, adapter) = row.parent.name, owner_adapter(row)
    cfg = json.loads((row / "config.json").read_text())
    ref = MODELS[source]
    tokenizer = load_tokenizer(ref)
    teacher = load_adapter(load_base(ref, dtype=cfg.get("dtype", "auto")), str(adapter), ref)
    if accepted:
        inputs = list(load_from_disk(str(row / "synthesis" / "accepted"))["input"])
        labels = {k: [r[k] for r in label(SimpleNamespace(**cfg), teacher, tokenizer, inputs)]
                  for k in ("input", "completion", "answer")}
    else:
        labels = load_from_disk(str(row / "labels"))
    prompts = [task_prompt(tokenizer, x, cfg["prompt_template"]) for x in labels["input"]]
    completions = list(labels["completion"])
    # One pass with and without the adapter gives both: what `answer_confidence` and `token_excess` compute.
    tokens = _completion_logprobs(teacher, tokenizer, prompts, completions, 32, with_base=True)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("-inf")  # noqa: E731
    confidence = [mean([a for *_, a, _ in row]) for row in tokens]
    excess = [mean([a - b for *_, a, b in row]) for row in tokens]
    lowest = [min((a for *_, a, _ in row), default=float("-inf")) for row in tokens]
    total = [sum(a for *_, a, _ in row) if row else float("-inf") for row in tokens]
    answers = [solve(task, x) for x in labels["input"]]
    keep = [i for i, a in enumerate(answers) if a is not None]
    right = [answers[i] == labels["answer"][i].strip() for i in keep]
    signals = {"confidence": confidence, "excess": excess, "min": lowest, "sum": total}
    return {"task": task, "pair": pair, "teacher": f"{ref} + owner-{source}/source_adapter",
            "labelled": "every accepted input, again" if accepted else ROW_LABELS,
            **summarise({k: [v[i] for i in keep] for k, v in signals.items()}, right, len(labels["input"]))}


SIGNALS = ("confidence", "min", "sum", "excess")
ROW_LABELS = "the row's labels"


def markdown(results: dict) -> str:
    """One line per row and signal (the signals a row was measured with: older rows have confidence and excess)."""
    lines = ["| task | row | labels | in format | right | signal | ROC-AUC | right in its surer half | "
             "in its surest quarter |", "|---|---|---|---|---|---|---|---|---|"]
    pct = lambda x: "—" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    auc = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    for name, r in results.items():
        task, row = name.split("/", 1)
        for signal in (s for s in SIGNALS if s in r):
            m = r[signal]
            lines.append(f"| {task} | {row} | {r.get('labelled', ROW_LABELS)} | {r['n_in_format']} of "
                         f"{r['n_labels']} | {pct(r['right'])} | {signal} | {auc(m['roc_auc'])} | "
                         f"{pct(m['right_in_surer_half'])} | {pct(m['right_in_surest_quarter'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", help="row folders of a quality_real run (<out>/<task>/<row>)")
    parser.add_argument("--accepted", action="store_true",
                        help="label every accepted input of each row's synthesis again instead of reading its labels")
    parser.add_argument("--out", required=True, help="folder for label_confidence.json and label_confidence.md")
    args = parser.parse_args(argv)
    needs = "synthesis/accepted" if args.accepted else "labels"
    missing = [r for r in args.rows if not (Path(r) / needs).is_dir() or not (Path(r) / "config.json").is_file()
               or owner_adapter(Path(r)) is None or not owner_adapter(Path(r))[2].is_dir()]
    if missing:
        parser.error(f"not a quality_real row with its {needs} beside its owner row: {', '.join(missing)}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    path = Path(args.out, "label_confidence.json")
    results = json.loads(path.read_text())["rows"] if path.exists() else {}
    for row in map(Path, args.rows):
        name = f"{row.parent.name}/{row.name}" + (" (every accepted input)" if args.accepted else "")
        with torch.no_grad():
            results[name] = measure(row, accepted=args.accepted)
        print("\n".join(markdown({name: results[name]}).splitlines()[2:]), flush=True)
        os.makedirs(args.out, exist_ok=True)
        path.write_text(json.dumps({"rows": results}, indent=2) + "\n")
        Path(args.out, "label_confidence.md").write_text(markdown(results))
    return {"rows": results}


if __name__ == "__main__":
    main()
