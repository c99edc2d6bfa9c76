"""The output layer and the scoring passes, side by side, on the demo's real models and settings (float32 on a CPU
without bf16 is where these differ; in bf16 torch already calls oneDNN for the output layer):

    output layer      one matmul of 64 rows against each demo model's (vocab, hidden) head: `F.linear` (torch's
                      float32 CPU matmul) against `distillation.models.output_linear` (oneDNN), and the largest
                      difference
    discriminator     the demo's discriminator (SmolLM2 + its yes/no adapter) scores held-out inputs: every question
                      read whole, left-padded, with the plain head (the code before) against `discriminator.score`
                      (right-padded, the question's shared opening read once, `generation.logits_at`, oneDNN head)
    confidence        the teacher's confidence in its answers (the labels stage's selection pass): full logits over
                      every position with the plain head (before) against `selection.answer_confidence`
    synthesis         Gemma-3-270M writes candidates (`generation.generate`, sampled) with the plain head against
                      the oneDNN head; the same torch seed, counted by how many parse into an item
    labels            the teacher answers held-out inputs (greedy) with either head; compared text for text
    training          steps of the demo's distillation (Gemma-3 + LoRA on every linear layer, sequence CE through
                      `chunked_token_divergence`, batches of 16) with the plain matmul in the loss against oneDNN's

Both sides run in this process on the same inputs, alternately, each timed alone.

    OMP_NUM_THREADS=2 python benchmarks/scoring_speed.py --out benchmarks/results/speed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.generation_speed import run_meta, write_results  # noqa: E402
from peft_transfer import generation  # noqa: E402
from peft_transfer.data import generator_prompt, generator_stop_strings, parse_candidate, task_prompt  # noqa: E402
from peft_transfer.demos import REAL_DEMO_SETTINGS as DEMO  # noqa: E402
from peft_transfer.discriminator import encode_question, score  # noqa: E402
from peft_transfer.distillation import chunked  # noqa: E402
from peft_transfer.distillation.models import _ONEDNN_LINEAR, output_linear  # noqa: E402
from peft_transfer.modeling import load_adapter, load_base, load_tokenizer, torch_dtype  # noqa: E402
from peft_transfer.selection import answer_confidence  # noqa: E402
from peft_transfer.sources import resolve_source  # noqa: E402


@contextlib.contextmanager
def plain_head(model):
    """The model's output layer as the `nn.Linear` it was loaded as (torch's own matmul): the side before."""
    head = model.get_output_embeddings()
    kind = type(head)
    head.__class__ = torch.nn.Linear
    try:
        yield
    finally:
        head.__class__ = kind


@torch.no_grad()
def score_before(model, tokenizer, texts, task_name, *, batch_size):
    """`discriminator.score` as it was: left padding, every question read whole, `logits_to_keep=1`."""
    questions = [encode_question(tokenizer, t, task_name) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(questions[i].prefix_ids))
    out = np.zeros(len(texts), dtype=np.float32)
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(questions[i].prefix_ids) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            q = questions[i].prefix_ids
            ids[row, width - len(q):], mask[row, width - len(q):] = torch.tensor(q), 1
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                       logits_to_keep=1, use_cache=False).logits[:, -1].float()
        yes = torch.tensor([questions[i].yes_id for i in idx])
        no = torch.tensor([questions[i].no_id for i in idx])
        out[idx] = (logits.gather(1, yes[:, None]) - logits.gather(1, no[:, None]))[:, 0].numpy()
    return out


@torch.no_grad()
def confidence_before(model, tokenizer, prompts, completions, *, batch_size):
    """`selection.answer_confidence` as it was: right padding by the tokenizer, the logits of every position."""
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    out = []
    try:
        for i in range(0, len(prompts), batch_size):
            ps, cs = prompts[i:i + batch_size], completions[i:i + batch_size]
            enc = tokenizer([p + c for p, c in zip(ps, cs)], return_offsets_mapping=True, padding=True,
                            return_tensors="pt")
            offsets = enc.pop("offset_mapping").tolist()
            logits = model(**enc).logits[:, :-1].float()
            scores = torch.log_softmax(logits, dim=-1).gather(-1, enc["input_ids"][:, 1:, None])[..., 0].tolist()
            mask = enc["attention_mask"].tolist()
            for row, p in enumerate(ps):
                got = [scores[row][j - 1] for j, (s, e) in enumerate(offsets[row])
                       if j > 0 and mask[row][j] and e > len(p) and e > s]
                out.append(sum(got) / len(got) if got else float("-inf"))
    finally:
        tokenizer.padding_side = side
    return out


def timed(fn):
    torch.manual_seed(0)
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def head_rows(models):
    rows = []
    for name, model in models.items():
        weight = model.get_output_embeddings().weight
        x = torch.randn(64, weight.shape[1], dtype=weight.dtype)
        with torch.no_grad():
            reference, fast = F.linear(x, weight), output_linear(x, weight)
            times = {"before": [], "after": []}
            for _ in range(3):
                for side, fn in (("before", F.linear), ("after", output_linear)):
                    fn(x, weight)
                    start = time.perf_counter()
                    for _ in range(3):
                        fn(x, weight)
                    times[side].append((time.perf_counter() - start) / 3)
        flop = 2 * x.shape[0] * weight.shape[0] * weight.shape[1]
        before, after = min(times["before"]), min(times["after"])
        rows.append(dict(stage="output layer", model=f"{name} ({weight.shape[0]} x {weight.shape[1]}), 64 rows",
                         items=1, before_s=round(before, 4), after_s=round(after, 4),
                         check=f"{flop / before / 1e9:.0f} -> {flop / after / 1e9:.0f} GFLOP/s, largest difference "
                               f"{(reference - fast).abs().max().item():.1e}"))
    return rows


def training_row(model, tokenizer, inputs, answers, *, steps):
    from peft import LoraConfig, get_peft_model

    from peft_transfer.distillation.models import final_hidden

    # The demo's adapter: r 8, alpha 8 (the package defaults), on every linear layer.
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    peft_model.train()
    batch = 16
    eos = tokenizer.eos_token or ""
    rows = []
    for x, a in zip(inputs, answers):
        prompt = tokenizer(task_prompt(tokenizer, x))["input_ids"]
        full = tokenizer(task_prompt(tokenizer, x) + " " + a + eos)["input_ids"]
        rows.append((full, [-100] * len(prompt) + full[len(prompt):]))

    def step(i):
        chunk = rows[(i * batch) % len(rows):][:batch]
        ids, mask = generation.right_padded([r for r, _ in chunk], tokenizer.pad_token_id)
        labels, _ = generation.right_padded([lab for _, lab in chunk], -100)
        head = peft_model.get_output_embeddings()
        hidden = final_hidden(peft_model, head, dict(input_ids=ids, attention_mask=mask, use_cache=False))
        loss = chunked.chunked_token_divergence(hidden, head, None, None, labels, kind="forward_kl",
                                                sequence_weight=1.0, chunk_size=1024)
        loss.backward()
        peft_model.zero_grad(set_to_none=True)
        return loss.item()

    times, losses = {"before": 0.0, "after": 0.0}, {"before": [], "after": []}
    step(0)  # warm-up
    for i in range(steps):
        for side in ("before", "after"):
            patch = F.linear if side == "before" else output_linear
            real, chunked.output_linear = chunked.output_linear, patch
            try:
                loss, seconds = timed(lambda: step(i))
            finally:
                chunked.output_linear = real
            times[side] += seconds
            losses[side].append(loss)
    peft_model.unload()
    diff = max(abs(a - b) for a, b in zip(losses["before"], losses["after"]))
    return dict(stage="training", model=f"{DEMO['target_model']} + LoRA all-linear, batches of {batch}", items=steps,
                before_s=round(times["before"], 2), after_s=round(times["after"], 2),
                check=f"{times['before'] / steps:.2f} -> {times['after'] / steps:.2f} s a step, loss differs by "
                      f"{diff:.1e} at most")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=256, help="held-out inputs scored and answered")
    parser.add_argument("--prompts", type=int, default=128, help="synthesis prompts")
    parser.add_argument("--steps", type=int, default=4, help="training steps per side")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="folder for scoring_speed.json and .md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = str(torch_dtype(args.dtype)).replace("torch.", "")
    read = lambda path, key="input": [json.loads(line)[key] for line in open(path) if line.strip()]  # noqa: E731
    inputs, targets = read(DEMO["eval_file"])[:args.texts], read(DEMO["eval_file"], "target")[:args.texts]
    rows = []

    source_ref, target_ref = resolve_source(DEMO["source_model"]), resolve_source(DEMO["target_model"])
    source_tok, target_tok = load_tokenizer(source_ref), load_tokenizer(target_ref)
    target = load_base(target_ref, dtype=args.dtype)
    source = load_base(source_ref, dtype=args.dtype)
    rows += head_rows({DEMO["target_model"]: target, DEMO["source_model"]: source})
    del source

    # The discriminator scores.
    disc = load_adapter(load_base(source_ref, dtype=args.dtype), DEMO["discriminator_adapter"],
                        DEMO["source_model"]).eval()
    task = DEMO["task_name"]
    batch = 64  # the filter's batch size (`filter_batch_size`)
    with plain_head(disc):
        before, t_before = timed(lambda: score_before(disc, source_tok, inputs, task, batch_size=batch))
    after, t_after = timed(lambda: score(disc, source_tok, inputs, task, batch_size=batch, show_progress=False))
    rows.append(dict(stage="discriminator", model=f"{DEMO['source_model']} + discriminator adapter",
                     items=len(inputs), before_s=round(t_before, 2), after_s=round(t_after, 2),
                     check=f"log-odds differ by {np.abs(before - after).max():.1e} at most; the same side of 0 on "
                           f"{int(((before > 0) == (after > 0)).sum())} of {len(inputs)}"))
    disc = None  # freed before the next model loads

    # The teacher: confidence in its answers, and its answers.
    teacher = load_adapter(load_base(source_ref, dtype=args.dtype), DEMO["source_adapter"],
                           DEMO["source_model"]).eval()
    prompts = [task_prompt(source_tok, x) for x in inputs]
    completions = [" " + t for t in targets]
    with plain_head(teacher):
        before, t_before = timed(lambda: confidence_before(teacher, source_tok, prompts, completions, batch_size=16))
    after, t_after = timed(lambda: answer_confidence(teacher, source_tok, prompts, completions, batch_size=16))
    rows.append(dict(stage="confidence", model=f"{DEMO['source_model']} + source adapter", items=len(inputs),
                     before_s=round(t_before, 2), after_s=round(t_after, 2),
                     check=f"mean log-probability differs by {max(abs(a - b) for a, b in zip(before, after)):.1e} "
                           f"at most; the same order: {np.argsort(before).tolist() == np.argsort(after).tolist()}"))
    kwargs = dict(batch_size=DEMO["generation_batch_size"], max_new_tokens=DEMO["label_max_new_tokens"],
                  do_sample=False, stop_strings=["\n"], show_progress=False)
    with plain_head(teacher):
        before, t_before = timed(lambda: generation.generate(teacher, source_tok, prompts, **kwargs))
    after, t_after = timed(lambda: generation.generate(teacher, source_tok, prompts, **kwargs))
    rows.append(dict(stage="labels", model=f"{DEMO['source_model']} + source adapter", items=len(prompts),
                     before_s=round(t_before, 2), after_s=round(t_after, 2),
                     check=f"same text {sum(a == b for a, b in zip(before, after))} of {len(prompts)}"))
    teacher = None

    # The target writes candidates, and trains.
    seeds = read(DEMO["seed_file"])
    rng = random.Random(0)
    prompts = [generator_prompt(seeds, rng, 5) for _ in range(args.prompts)]
    kwargs = dict(batch_size=DEMO["generation_batch_size"], max_new_tokens=DEMO["max_candidate_tokens"],
                  do_sample=True, stop_strings=generator_stop_strings(seeds, 5), show_progress=False)
    with plain_head(target):
        before, t_before = timed(lambda: generation.generate(target, target_tok, prompts, **kwargs))
    after, t_after = timed(lambda: generation.generate(target, target_tok, prompts, **kwargs))
    items = [sum(parse_candidate(x, finished=e) is not None for x, e in side) for side in (before, after)]
    rows.append(dict(stage="synthesis", model=DEMO["target_model"], items=len(prompts), before_s=round(t_before, 2),
                     after_s=round(t_after, 2), check=f"items parsed {items[0]} / {items[1]}, same text "
                     f"{sum(a == b for a, b in zip(before, after))} of {len(prompts)}"))
    rows.append(training_row(target, target_tok, inputs, targets, steps=args.steps))
    for row in rows:
        row["speedup"] = round(row["before_s"] / row["after_s"], 2)

    meta = run_meta(dtype, onednn_output_layer=_ONEDNN_LINEAR is not None)
    lines = [f"# Output layer and scoring passes, side by side ({meta['dtype']}, {meta['threads']} threads, "
             f"{meta['cpu']})", "", "| stage | model | items | before s | after s | speed-up | check |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['model']} | {r['items']} | {r['before_s']} | {r['after_s']} | "
                     f"{r['speedup']}x | {r['check']} |")
    write_results(args.out, "scoring_speed", meta, rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
