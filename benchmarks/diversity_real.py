"""How close the accepted synthetic inputs of a real-model row lie to one another, against the real inputs' own
spacing: what `near_duplicate_similarity` (drop a passed candidate too like an accepted one) has to remove.

    python benchmarks/diversity_real.py runs/quality-real-addition/addition/translora-smollm2-gemma3 \
        runs/quality-real-c/dyck_languages/translora-smollm2-gemma3 --out benchmarks/results/quality-real

Each argument is a row of `benchmarks/quality_real.py` (a `Transfer` run directory whose synthesis is done; the
task's real train inputs are `../data/train.jsonl`). Every text is embedded with all-MiniLM-L6-v2, the embedder of
the synthesis's near-duplicate check and of the MMD figures; for each set the cosine similarity of every input to
its nearest other one is summarised by quantiles, and the share of accepted inputs that a threshold would drop is
counted the way the synthesis drops them (in acceptance order, against the inputs kept before it). Writes
`diversity.json` and `diversity.md` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from peft_transfer.synthesis import SynthesisStats, _Verdicts

THRESHOLDS = (0.9, 0.95, 0.99)
QUANTILES = (0.1, 0.5, 0.9)


def unit(embeddings) -> np.ndarray:
    return _Verdicts._unit(np.asarray(embeddings, dtype=np.float64))


def nearest_other(e: np.ndarray) -> np.ndarray:
    """Cosine similarity of each (unit) row to its nearest other row."""
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return s.max(axis=1)


def dropped_in_order(e: np.ndarray, threshold: float) -> int:
    """How many rows the synthesis's own check (`synthesis._Verdicts`) would drop, every row passed in this order: a
    row goes when its similarity to a row kept before it reaches `threshold`."""
    cfg = SimpleNamespace(near_duplicate_similarity=threshold, filter_margin=0.0)
    stats = SynthesisStats()
    _Verdicts(cfg, num_samples=len(e), embed=lambda texts: e[[int(t) for t in texts]]).take(
        [{"input": str(i), "score": None} for i in range(len(e))], stats)
    return stats.near_duplicates


def summarise(real: np.ndarray, accepted: np.ndarray) -> dict:
    q = lambda x: [round(float(v), 3) for v in np.quantile(x, QUANTILES)]  # noqa: E731
    return {
        "n_real": len(real), "n_accepted": len(accepted),
        "real_nearest_quantiles": q(nearest_other(real)),
        "accepted_nearest_quantiles": q(nearest_other(accepted)),
        "dropped_at": {str(t): dropped_in_order(accepted, t) for t in THRESHOLDS},
    }


def row_texts(row: Path) -> tuple[list[str], list[str]]:
    from datasets import load_from_disk

    real = [json.loads(line)["input"] for line in (row.parent / "data" / "train.jsonl").read_text().splitlines()]
    accepted = load_from_disk(str(row / "synthesis" / "accepted"))["input"]
    return real, list(accepted)


def markdown(results: dict) -> str:
    lines = ["| task | row | real inputs: nearest-other cosine (10/50/90%) | accepted synthetic inputs | "
             + " | ".join(f"dropped at {t}" for t in THRESHOLDS) + " |",
             "|---|---|---|---|" + "---|" * len(THRESHOLDS)]
    for name, r in results.items():
        task, row = name.split("/")
        lines.append(f"| {task} | {row} | {' / '.join(map(str, r['real_nearest_quantiles']))} | "
                     f"{' / '.join(map(str, r['accepted_nearest_quantiles']))} | "
                     + " | ".join(f"{r['dropped_at'][str(t)]} of {r['n_accepted']}" for t in THRESHOLDS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", help="row folders of a quality_real run (<out>/<task>/<row>)")
    parser.add_argument("--out", required=True, help="folder for diversity.json and diversity.md")
    parser.add_argument("--embedding-model", default="packaged:all-minilm-l6-v2")
    args = parser.parse_args(argv)
    missing = [r for r in args.rows if not (Path(r) / "synthesis" / "accepted").is_dir()
               or not (Path(r).parent / "data" / "train.jsonl").is_file()]
    if missing:
        parser.error(f"not a quality_real row with a finished synthesis and its task's data: {', '.join(missing)}")

    from peft_transfer.metrics import embed_texts

    def embed(texts):
        return unit(list(embed_texts(texts, sentence_model=args.embedding_model, model=None, tokenizer=None,
                                     batch_size=64)))

    results = {}
    for row in map(Path, args.rows):
        real, accepted = row_texts(row)
        name = f"{row.parent.name}/{row.name}"
        results[name] = summarise(embed(real), embed(accepted))
        print(markdown({name: results[name]}).splitlines()[-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    record = {"embedding_model": args.embedding_model, "thresholds": THRESHOLDS, "quantiles": QUANTILES,
              "rows": results}
    Path(args.out, "diversity.json").write_text(json.dumps(record, indent=2) + "\n")
    Path(args.out, "diversity.md").write_text(markdown(results))
    return record


if __name__ == "__main__":
    main()
