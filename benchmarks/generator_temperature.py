"""What the generator's sampling temperature does to the candidates it writes, before any filter: a real-model
target prompted with a task's 5 seeds the way the synthesis prompts it.

    OMP_NUM_THREADS=1 python benchmarks/generator_temperature.py --tasks word_sorting addition \
        --temperatures 1.0 0.7 0.5 --out benchmarks/results/quality-real

For each task and temperature, `--prompts` prompts (the synthesis's own `generator_prompt`, seeded alike for every
temperature) are answered by `--generator` with the settings of `benchmarks/quality_real.py` (48 new tokens, the
seed list's stop strings), and the candidates counted: parsed, distinct, in the task's format (its solver answers
them: `benchmarks/real_tasks.py`), copies of a seed, copies of a real train or test input (the synthesis drops
both), the share of their words (whitespace-separated) that occur in the task's real train inputs, and their mean
number of words. `--adapter` writes with a PEFT adapter on the generator (the source's own, as
`generate_with_source_adapter` does); `--teacher-adapter` also counts the distinct in-format candidates that the
teacher (`--teacher` with that adapter) labels right. Writes `generator_temperature.json` and `.md` under `--out`;
each task is made as `quality_real.py` makes it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from benchmarks.quality_real import MODELS, SETTINGS  # noqa: E402
from benchmarks.real_tasks import REAL_TASKS, make_real_task, solve  # noqa: E402


def count(task: str, candidates: list[str | None], seeds: list[str], real: set[str], vocabulary: set[str]) -> dict:
    """The counts of one task and temperature (`candidates`: parsed texts, None where unparsable)."""
    parsed = [c for c in candidates if c is not None]
    words = [w for c in parsed for w in c.split()]
    return {"prompts": len(candidates), "parsed": len(parsed), "distinct": len(set(parsed)),
            "in_format": sum(solve(task, c) is not None for c in parsed),
            "seed_copies": sum(c in seeds for c in parsed),
            "real_copies": sum(c in real for c in parsed),
            "words_in_real_vocabulary": round(sum(w in vocabulary for w in words) / len(words), 3) if words else None,
            "mean_words": round(len(words) / len(parsed), 1) if parsed else None}


def teacher_right(task: str, parsed: list[str], teacher, tokenizer, cfg) -> int:
    """How many of the in-format candidates the teacher labels right (greedy, as the labels stage labels them with
    `cfg`: the benchmark's prompt and answer settings)."""
    from peft_transfer.labelling import label

    in_format = [c for c in dict.fromkeys(parsed) if solve(task, c) is not None]
    rows = label(cfg, teacher, tokenizer, in_format, show_progress=False) if in_format else []
    return sum(r["answer"].strip() == solve(task, c) for r, c in zip(rows, in_format))


def main() -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peft_transfer.data import generator_prompt, generator_stop_strings, parse_candidate
    from peft_transfer.generation import generate
    from peft_transfer.sources import resolve_source

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(REAL_TASKS), choices=list(REAL_TASKS))
    parser.add_argument("--temperatures", nargs="*", type=float, default=[1.0, 0.7, 0.5])
    parser.add_argument("--generator", default="gemma3", choices=list(MODELS))
    parser.add_argument("--adapter", default=None,
                        help="a PEFT adapter on the generator (the source's own: `generate_with_source_adapter`)")
    parser.add_argument("--teacher-adapter", default=None,
                        help="the source's adapter (on `--teacher`): count the in-format candidates it labels right")
    parser.add_argument("--teacher", default="smollm2", choices=list(MODELS))
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/quality-real")
    args = parser.parse_args()

    path = resolve_source(MODELS[args.generator])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter).eval()
    settings, results = SETTINGS["transfer"], {}
    teacher = teacher_tokenizer = label_cfg = None
    if args.teacher_adapter:
        from peft_transfer import TransferConfig

        # Only the labelling settings are read; the models and data it names are never loaded.
        label_cfg = TransferConfig(**{k: v for k, v in settings.items() if k != "embedding_model"},
                                   source_model="unused", target_model="unused", source_adapter="unused",
                                   filter_mode="none", seed_file="unused")
        teacher_path = resolve_source(MODELS[args.teacher])
        teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_path)
        teacher = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.bfloat16), args.teacher_adapter).eval()
    for task in args.tasks:
        made = make_real_task(task, n_train=SETTINGS["n_train"], n_test=SETTINGS["n_test"],
                              n_seeds=SETTINGS["n_seeds"], seed=args.seed)
        seeds = [e["input"] for e in made.seeds]
        real = {e["input"] for e in made.train + made.test}
        vocabulary = {w for e in made.train for w in e["input"].split()}
        for temperature in args.temperatures:
            torch.manual_seed(args.seed)
            rng = random.Random(args.seed)
            prompts = [generator_prompt(seeds, rng, len(seeds)) for _ in range(args.prompts)]
            start = time.perf_counter()
            outputs = generate(model, tokenizer, prompts, batch_size=settings["generation_batch_size"],
                               max_new_tokens=settings["max_candidate_tokens"], do_sample=True,
                               temperature=temperature, top_p=1.0, top_k=None,
                               stop_strings=generator_stop_strings(seeds, len(seeds)), desc=task, show_progress=False)
            candidates = [parse_candidate(text, finished=finished) for text, finished in outputs]
            row = count(task, candidates, seeds, real, vocabulary)
            if teacher is not None:
                row["teacher_right"] = teacher_right(task, [c for c in candidates if c is not None], teacher,
                                                     teacher_tokenizer, label_cfg)
            row["seconds"] = round(time.perf_counter() - start, 1)
            results.setdefault(task, {})[str(temperature)] = row
            print(task, temperature, row, flush=True)
    meta = {"generator": MODELS[args.generator], "adapter": args.adapter,
            "teacher": MODELS[args.teacher] if args.teacher_adapter else None, "teacher_adapter": args.teacher_adapter,
            "prompts": args.prompts, "seed": args.seed,
            "threads": torch.get_num_threads(), "dtype": "bfloat16"}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "generator_temperature.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    with open(os.path.join(args.out, "generator_temperature.md"), "w") as f:
        f.write(markdown(meta, results))


def markdown(meta: dict, results: dict) -> str:
    writer = meta["generator"] + (f" with the adapter {meta['adapter']}" if meta.get("adapter") else "")
    teacher = meta.get("teacher_adapter")
    lines = [f"# The generator's temperature, before any filter ({writer}, {meta['prompts']} prompts of the 5 seeds "
             f"per task and temperature, bf16, {meta['threads']} thread)", ""]
    if teacher:
        lines += [f"teacher right: of the distinct in-format candidates, how many the teacher ({meta.get('teacher')} "
                  f"with {teacher}) labels "
                  "right, greedy, as the labels stage does.", ""]
    lines += ["| task | temperature | parsed | distinct | in format | seed copies | real copies | words in the real "
              "inputs' vocabulary | words per input |" + (" teacher right |" if teacher else "") + " s |",
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if teacher else "") + "---|"]
    for task, per_t in results.items():
        for t, r in per_t.items():
            vocab = "—" if r["words_in_real_vocabulary"] is None else f"{100 * r['words_in_real_vocabulary']:.1f}%"
            right = f" {r['teacher_right']} |" if teacher else ""
            lines.append(f"| {task} | {t} | {r['parsed']} | {r['distinct']} | {r['in_format']} | {r['seed_copies']} "
                         f"| {r['real_copies']} | {vocab} | {r.get('mean_words', '—')} |{right} {r['seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
