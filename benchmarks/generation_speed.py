"""Batched generation, side by side: one `model.generate` call per batch (transformers as it is used by default: every
row stays in the batch until the last one ends, every prompt is read in full, stop strings prepared in the call)
against `generation.generate` (each distinct prompt read once, rows that have ended leaving the batch
`SEGMENT_TOKENS` at a time, stop strings prepared once), on the demo's real models and settings:

    synthesis   Gemma-3-270M continues the demo's numbered-list prompt of its 5 seeds (one of their 120 orders per
                prompt), sampled at temperature 1, 32 new tokens at most, batches of 64, the item's stop string
    synthesis, 3 rounds   three rounds of such prompts (drawn from the same 120 orders), ours with the `PromptCache`
                that `synthesize` keeps across rounds, and without it
    labels      SmolLM2-135M-Instruct + the demo's source adapter answers the demo's held-out inputs, greedy, 8 new
                tokens at most, batches of 64, the answer's stop string

Both sides run in this process on the same prompts with the same torch seed; greedy continuations are compared text
for text (they are the same computation, in batches of other sizes), sampled ones by how many parse into an item.

    OMP_NUM_THREADS=2 python benchmarks/generation_speed.py --out benchmarks/results/speed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from peft_transfer import generation  # noqa: E402
from peft_transfer.data import generator_prompt, generator_stop_strings, parse_candidate, task_prompt  # noqa: E402
from peft_transfer.demos import REAL_DEMO_SETTINGS as DEMO  # noqa: E402
from peft_transfer.modeling import load_adapter, load_base, load_tokenizer, torch_dtype  # noqa: E402
from peft_transfer.sources import resolve_source  # noqa: E402


def one_call_per_batch(model, tokenizer, prompts, *, batch_size, max_new_tokens, do_sample, stop_strings):
    """Each batch through one `model.generate` call, as transformers does it: the reference side. Per prompt, the
    continuation and whether it ended by itself, as `generation.generate` returns them."""
    tokenizer.padding_side = "left"
    eos = generation._eos_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results = [None] * len(prompts)
    sampling = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0) if do_sample else dict(
        do_sample=False, temperature=None, top_p=None, top_k=None)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
        with generation.cpu_sampling(torch.device("cpu")) if do_sample else contextlib.nullcontext(), torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=eos, stop_strings=stop_strings, tokenizer=tokenizer, **sampling)
        for row, i in zip(out[:, enc["input_ids"].shape[1]:].tolist(), idx):
            text = tokenizer.decode(row, skip_special_tokens=True)
            results[i] = (text, any(t in eos for t in row) or any(s in text for s in stop_strings))
    return results


def ours(model, tokenizer, prompts, *, batch_size, max_new_tokens, do_sample, stop_strings, prompt_cache=None):
    return generation.generate(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               do_sample=do_sample, stop_strings=stop_strings, show_progress=False,
                               prompt_cache=prompt_cache)


def timed(side, model, tokenizer, prompts, **kwargs):
    torch.manual_seed(0)
    start = time.perf_counter()
    texts = side(model, tokenizer, prompts, **kwargs)
    return texts, time.perf_counter() - start


def run_meta(dtype: str, **extra) -> dict:
    """What a side-by-side run ran on: dtype, threads, torch, CPU capability, and the process's peak RSS so far."""
    return dict(dtype=dtype, threads=torch.get_num_threads(), torch=torch.__version__,
                cpu=torch.backends.cpu.get_cpu_capability(), **extra,
                peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2))


def write_results(out: str | None, name: str, meta: dict, rows: list[dict], text: str) -> None:
    """Print the Markdown table; with `out`, write `<name>.json` (meta and rows) and `<name>.md` there."""
    print(text)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=2)
        with open(os.path.join(out, f"{name}.md"), "w") as f:
            f.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256, help="synthesis prompts (the demo's rounds have 512)")
    parser.add_argument("--rounds", type=int, default=3, help="synthesis rounds of the rounds row")
    parser.add_argument("--round-prompts", type=int, default=64, help="prompts per round of the rounds row")
    parser.add_argument("--label-inputs", type=int, default=300, help="held-out inputs the teacher answers")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="folder for generation_speed.json and .md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = str(torch_dtype(args.dtype)).replace("torch.", "")
    read = lambda path: [json.loads(line)["input"] for line in open(path) if line.strip()]  # noqa: E731
    rows = []

    # Synthesis: the target writes candidates.
    ref = resolve_source(DEMO["target_model"])
    tokenizer, model = load_tokenizer(ref), load_base(ref, dtype=args.dtype)
    seeds = read(DEMO["seed_file"])
    rng = random.Random(0)
    prompts = [generator_prompt(seeds, rng, 5) for _ in range(args.prompts)]
    stop = generator_stop_strings(seeds, 5)
    kwargs = dict(batch_size=DEMO["generation_batch_size"], max_new_tokens=DEMO["max_candidate_tokens"],
                  do_sample=True, stop_strings=stop)
    sides = {name: timed(side, model, tokenizer, prompts, **kwargs)
             for name, side in (("one_call", one_call_per_batch), ("ours", ours))}
    rows.append(dict(stage="synthesis", model=DEMO["target_model"], prompts=len(prompts),
                     distinct_prompts=len(set(prompts)), sampled=True,
                     **{f"{n}_s": round(t, 2) for n, (_, t) in sides.items()},
                     **{f"{n}_items": sum(parse_candidate(x, finished=e) is not None for x, e in texts)
                        for n, (texts, _) in sides.items()}))

    # Synthesis rounds: the prompts of later rounds are drawn from the same 120 orders; ours keeps those it has read
    # (`PromptCache`, as `synthesize` does), and is also timed without it.
    draws = [random.Random(1 + r) for r in range(args.rounds)]
    rounds = [[generator_prompt(seeds, draw, 5) for _ in range(args.round_prompts)] for draw in draws]
    store = generation.PromptCache()

    def over_rounds(side, **extra):
        def run(model, tokenizer, _, **kw):
            return [x for prompts in rounds for x in side(model, tokenizer, prompts, **kw, **extra)]
        return run

    sides = {name: timed(side, model, tokenizer, None, **kwargs) for name, side in (
        ("one_call", over_rounds(one_call_per_batch)), ("ours_without_prompt_cache", over_rounds(ours)),
        ("ours", over_rounds(ours, prompt_cache=store)))}
    rows.append(dict(stage=f"synthesis, {args.rounds} rounds", model=DEMO["target_model"],
                     prompts=args.rounds * args.round_prompts,
                     distinct_prompts=len({p for prompts in rounds for p in prompts}), sampled=True,
                     **{f"{n}_s": round(t, 2) for n, (_, t) in sides.items()},
                     **{f"{n}_items": sum(parse_candidate(x, finished=e) is not None for x, e in texts)
                        for n, (texts, _) in sides.items()},
                     prompts_read=store.reads, prompts_from_cache=store.hits))
    del model

    # Labels: the teacher answers.
    ref = resolve_source(DEMO["source_model"])
    tokenizer = load_tokenizer(ref)
    model = load_adapter(load_base(ref, dtype=args.dtype), DEMO["source_adapter"], DEMO["source_model"]).eval()
    prompts = [task_prompt(tokenizer, x) for x in read(DEMO["eval_file"])[:args.label_inputs]]
    kwargs = dict(batch_size=DEMO["generation_batch_size"], max_new_tokens=DEMO["label_max_new_tokens"],
                  do_sample=False, stop_strings=["\n"])
    sides = {name: timed(side, model, tokenizer, prompts, **kwargs)
             for name, side in (("one_call", one_call_per_batch), ("ours", ours))}
    (a, _), (b, _) = sides["one_call"], sides["ours"]
    rows.append(dict(stage="labels", model=DEMO["source_model"] + " + source adapter", prompts=len(prompts),
                     distinct_prompts=len(set(prompts)), sampled=False,
                     **{f"{n}_s": round(t, 2) for n, (_, t) in sides.items()},
                     same_text=sum(x == y for x, y in zip(a, b))))
    for row in rows:
        row["speedup"] = round(row["one_call_s"] / row["ours_s"], 2)

    meta = run_meta(dtype)
    lines = [f"# Batched generation, side by side ({meta['dtype']}, {meta['threads']} threads, {meta['cpu']})", "",
             "| stage | model | prompts (distinct) | one call per batch s | ours s | speed-up | check |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        check = (f"items parsed {r['one_call_items']} / {r['ours_items']}" if r["sampled"]
                 else f"same text {r['same_text']} of {r['prompts']}")
        if "prompts_read" in r:
            check += (f"; prompts read {r['prompts_read']}, from the prompt cache {r['prompts_from_cache']}; "
                      f"without it {r['ours_without_prompt_cache_s']} s")
        lines.append(f"| {r['stage']} | {r['model']} | {r['prompts']} ({r['distinct_prompts']}) | {r['one_call_s']} "
                     f"| {r['ours_s']} | {r['speedup']}x | {check} |")
    write_results(args.out, "generation_speed", meta, rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
