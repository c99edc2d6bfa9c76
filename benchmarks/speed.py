"""Speed, side by side: the paper-style loop and this pipeline on the same work, and the machine's measured peak.

One process, one run, the same models, prompts and rows for both:

    generate   C candidates from numbered-list prompts of the seeds (sampling, `max_candidate_tokens`, stop string):
               paper-style one `model.generate` per prompt; ours `generation.generate`, batched and length-sorted
    score      the same C candidate texts through the discriminator: paper-style a sampled reply per candidate
               (batch 1, a few tokens, "yes" or not); ours `discriminator.score`, one batched forward pass, log-odds
    label      the first N candidates answered by the teacher (source base + adapter, greedy, answer stop string):
               paper-style batch 1; ours `labelling.label`
    train      the N labelled rows for E epochs on the target base with a fresh LoRA: paper-style stock
               `trl.SFTTrainer` at the paper's batch 8 (the output layer at every position); ours
               `DistillationTrainer` (the output layer only where the loss is), at the pipeline's batch

FLOPs are counted from the model's shapes and the tokens processed, the same count for both sides (the work, not
what an implementation wastes): 2·P per token forward, where P is the weights of every matrix multiply but the
input embedding (the output layer included), counted only at the positions that need it (the last prompt position
and every new token for generation; the last position for scoring); training 4·P_body per token (forward, and the
backward through the frozen base to the adapters) plus 4·V·d per completion token for the output layer. Attention
scores are left out (sequences here are under 200 tokens). The fraction of peak divides by the bf16 (or fp32)
matmul rate this machine reaches at the stage's shapes, measured in the same run, and generation is also set
against the memory-bound floor (weights read once per decode step at the measured copy bandwidth).

    python benchmarks/speed.py --world real --out benchmarks/results/speed           # SmolLM2 -> Gemma-3, N = 64
    python benchmarks/speed.py --world tiny --candidates 16 --samples 8 --epochs 1   # random tiny models (smoke)
    python benchmarks/speed.py --world random --preset 7b --out $OUT/speed-7b        # random 7B models on a GPU
    python benchmarks/speed.py --world real --sides paper ours vllm --out benchmarks/results/speed

`--sides ... vllm` also times generate and label through `generation_backend: vllm` (a vLLM server in its own
environment, `bash scripts/setup.sh --vllm`) on the same prompts: the server's start-up is reported apart from the
stage's seconds, and the end-to-end figure with vLLM counts it (HF scoring and training).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # stage_throughput, for the random world
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "peft_transfer" / "demo_models" / "smollm2-addition"
REAL = dict(source="packaged:smollm2-135m-instruct", target="packaged:gemma-3-270m",
            source_adapter=str(DEMO / "source_adapter"), discriminator=str(DEMO / "discriminator"),
            seeds=str(DEMO / "seeds.jsonl"), task_name="three-digit addition", max_candidate_tokens=32,
            label_max_new_tokens=8, batch_size=16, learning_rate=2e-3)
REPLY_TOKENS = 4  # a sampled yes/no reply of the paper-style discriminator


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", choices=("real", "tiny", "random"), default="real",
                   help="real: the packaged models; tiny: random tiny families; random: random-weight Llama "
                        "models of --preset's shapes, built in memory (7b on a GPU)")
    p.add_argument("--preset", default="7b", help="shapes of the random world (benchmarks/stage_throughput.py)")
    p.add_argument("--candidates", type=int, default=64, help="C: candidates generated and scored")
    p.add_argument("--samples", type=int, default=64, help="N: candidates labelled and trained on")
    p.add_argument("--epochs", type=float, default=2, help="E: training epochs over the N rows")
    p.add_argument("--generation-batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--sides", nargs="+", choices=("paper", "ours", "vllm"), default=["paper", "ours"],
                   help="vllm: generate and label through the vLLM server as well (needs `setup.sh --vllm`)")
    p.add_argument("--out", default=None, help="folder for speed.json and speed.md")
    return p


# -- models ---------------------------------------------------------------------------------------------------------

def tiny_world(folder: str) -> dict:
    """Random-weight tiny models (head size 32, which vLLM's CPU attention takes) and random LoRA adapters: timing
    only, the texts are noise."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peft_transfer.worlds.tiny_models import build_family

    source = build_family("tiny-llama-hd32", os.path.join(folder, "src"), pretrain_steps=0, seed=0)
    target = build_family("tiny-llama-hd32", os.path.join(folder, "tgt"), pretrain_steps=0, seed=1)
    adapters = {}
    for name in ("source_adapter", "discriminator"):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(source),
                               LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        model.save_pretrained(os.path.join(folder, name))
        adapters[name] = os.path.join(folder, name)
    seeds = os.path.join(folder, "seeds.jsonl")
    with open(seeds, "w") as f:
        for x in ("What is 12 + 7?", "What is 40 + 2?", "What is 3 + 9?", "What is 15 + 15?", "What is 8 + 1?"):
            f.write(json.dumps({"input": x}) + "\n")
    return dict(source=source, target=target, source_adapter=adapters["source_adapter"],
                discriminator=adapters["discriminator"], seeds=seeds, task_name="tiny task", max_candidate_tokens=24,
                label_max_new_tokens=8, batch_size=8, learning_rate=2e-3)


def random_world(folder: str, preset_name: str) -> dict:
    """Source and target: random-weight Llama models of a preset's shapes, built on the device (no files); random
    LoRA adapters for the teacher and the discriminator. For timing only."""
    from peft import LoraConfig, get_peft_model
    from stage_throughput import PRESETS, Words, build_base, build_tokenizer

    from peft_transfer.modeling import default_device, torch_dtype

    preset = PRESETS[preset_name]
    tokenizer = build_tokenizer(preset, Words(0))
    device, dtype = default_device(), torch_dtype("auto")
    models = {name: build_base(preset, tokenizer, dtype=dtype, device=device, seed=seed)
              for name, seed in (("source", 0), ("target", 1))}
    adapters = {}
    for name in ("source_adapter", "discriminator"):
        lora = get_peft_model(models["source"], LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                           task_type="CAUSAL_LM"), adapter_name=name)
        lora.save_pretrained(os.path.join(folder, name), selected_adapters=[name])
        models["source"] = lora.unload()
        adapters[name] = os.path.join(folder, name, name)
    words = Words(1)
    seeds = os.path.join(folder, "seeds.jsonl")
    with open(seeds, "w") as f:
        for _ in range(5):
            f.write(json.dumps({"input": words.text(12)}) + "\n")
    return dict(source=f"random {preset_name} (seed 0)", target=f"random {preset_name} (seed 1)",
                loaded={"source": (models["source"], tokenizer), "target": (models["target"], tokenizer)},
                source_adapter=adapters["source_adapter"], discriminator=adapters["discriminator"], seeds=seeds,
                task_name="synthetic benchmark", max_candidate_tokens=32, label_max_new_tokens=16, batch_size=16,
                learning_rate=2e-4)


def matmul_params(model) -> dict:
    """Weights of the matrix multiplies: the body's and the output layer's (the input embedding is a lookup)."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    body = sum(p.numel() for n, p in model.named_parameters() if p is not embed and p is not head and p.dim() == 2
               and "lora_" not in n)
    return {"body": body, "head": head.numel(), "vocab": head.shape[0], "hidden": head.shape[1]}


# -- the machine ----------------------------------------------------------------------------------------------------

def _seconds(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_peak(dtype: torch.dtype, device: torch.device, shapes: dict[str, tuple[int, int, int]]) -> dict:
    """Matmul GFLOP/s at each (m, k, n) and the copy bandwidth, medians of repeats (this process, these threads)."""
    out = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
        c = torch.matmul(a, b)

        def repeat(k):
            for _ in range(k):  # into one output: keeping every product would time fresh memory's page faults
                torch.matmul(a, b, out=c)

        # Median of repeats lasting at least 0.2 s each (short ones are within timer and frequency noise).
        reps = max(1, int(0.2 / _seconds(lambda: repeat(1))))
        times = sorted(_seconds(lambda: repeat(reps)) / reps for _ in range(5))
        out[name] = {"shape": [m, k, n], "gflops": round(2 * m * k * n / times[2] / 1e9, 1)}
    x = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=device)  # 256 MiB
    y = torch.empty_like(x)
    y.copy_(x)
    best = min(_seconds(lambda: y.copy_(x)) for _ in range(5))
    out["copy_gb_s"] = round(2 * x.numel() * 4 / best / 1e9, 1)  # read + write
    return out


# -- the stages, both ways ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def served(side, ref, adapter=None):
    """For the vllm side, a server for `ref` (and `adapter`) and its start-up seconds; else nothing (HF)."""
    if side != "vllm":
        yield None, {}
        return
    from peft_transfer.vllm_server import serve

    with serve(ref, adapter) as lease:
        yield lease.model, {"startup_s": round(lease.model.server.startup_seconds, 1)}


def _timed(fn):
    _sync()
    start = time.perf_counter()
    result = fn()
    _sync()
    return result, time.perf_counter() - start


def generate_both(side, model, tokenizer, prompts, cfg, batch_size):
    from peft_transfer.generation import generate

    kwargs = dict(max_new_tokens=cfg["max_candidate_tokens"], do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                  stop_strings=cfg["stop"], show_progress=False)
    torch.manual_seed(0)
    if side in ("ours", "vllm"):  # batched (vllm: `model` is the server's `VLLMModel`)
        return generate(model, tokenizer, prompts, batch_size=batch_size, **kwargs)
    return [generate(model, tokenizer, [p], batch_size=1, **kwargs)[0] for p in prompts]


def score_both(side, model, tokenizer, texts, task_name, batch_size):
    from peft_transfer.data import discriminator_prompt
    from peft_transfer.discriminator import score
    from peft_transfer.generation import generate

    if side == "ours":
        return [float(s) > 0 for s in score(model, tokenizer, texts, task_name, batch_size=batch_size,
                                            show_progress=False)]
    torch.manual_seed(0)
    replies = [generate(model, tokenizer, [discriminator_prompt(tokenizer, t, task_name)], batch_size=1,
                        max_new_tokens=REPLY_TOKENS, do_sample=True, show_progress=False)[0][0] for t in texts]
    return [r.strip().lower().startswith("yes") for r in replies]


def label_both(side, model, tokenizer, inputs, cfg, batch_size):
    from peft_transfer import TransferConfig
    from peft_transfer.labelling import label

    tc = TransferConfig(source_model="x", target_model="y", source_adapter="a", seed_file="s", filter_mode="none",
                        label_max_new_tokens=cfg["label_max_new_tokens"], generation_batch_size=batch_size)
    if side in ("ours", "vllm"):
        return label(tc, model, tokenizer, inputs, show_progress=False)
    one = TransferConfig(**{**tc.to_dict(redact=False), "generation_batch_size": 1})
    return [label(one, model, tokenizer, [x], show_progress=False)[0] for x in inputs]


def train_both(side, model, tokenizer, rows, cfg, epochs, folder):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from peft_transfer.distillation import DistillationConfig, DistillationTrainer

    lora = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    common = dict(output_dir=folder, learning_rate=cfg["learning_rate"], num_train_epochs=epochs, lr_scheduler_type="linear",
                  warmup_steps=0, weight_decay=0.0, logging_steps=10_000, save_strategy="no", report_to=[],
                  disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=0, max_length=512)
    data = Dataset.from_list(rows)
    if side == "ours":
        args = DistillationConfig(per_device_train_batch_size=cfg["batch_size"], **common)
        trainer = DistillationTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                      peft_config=lora)
    else:
        args = SFTConfig(per_device_train_batch_size=8, completion_only_loss=True, **common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=lora)
    result = trainer.train()
    tokens = completion = 0
    for row in trainer.train_dataset:  # TRL folds the completion mask into the labels (-100 on the prompt)
        tokens += len(row["input_ids"])
        if "completion_mask" in row:
            completion += sum(row["completion_mask"])
        elif "labels" in row:
            completion += sum(1 for x in row["labels"] if x != -100)
    steps = result.global_step
    from peft_transfer.modeling import strip_adapters

    model = strip_adapters(trainer.model)
    return {"steps": steps, "loss": round(result.training_loss, 4), "tokens_per_epoch": tokens,
            "completion_tokens_per_epoch": completion}, model


# -- the run --------------------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from peft_transfer.data import generator_prompt, generator_stop_strings, load_seeds, parse_candidate, task_prompt
    from peft_transfer.modeling import load_adapter, load_base, load_tokenizer, strip_adapters, torch_dtype

    tmp = tempfile.mkdtemp(prefix="speed-")
    cfg = dict(REAL) if args.world == "real" else tiny_world(tmp) if args.world == "tiny" else random_world(tmp, args.preset)
    seeds = load_seeds(cfg["seeds"], 5)
    cfg["stop"] = generator_stop_strings(seeds, 5)
    rng = random.Random(0)
    prompts = [generator_prompt(seeds, rng, 5) for _ in range(args.candidates)]
    dtype = torch_dtype("auto")
    report = {"world": args.world, "candidates": args.candidates, "samples": args.samples, "epochs": args.epochs,
              "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""),
              "models": {"source": cfg["source"], "target": cfg["target"]}, "stages": {}, "versions": _versions()}

    loaded = cfg.pop("loaded", None) or {k: (load_base(cfg[k]), load_tokenizer(cfg[k])) for k in ("target", "source")}
    (target, target_tok), (source, source_tok) = loaded["target"], loaded["source"]
    del loaded
    shapes = {"target": matmul_params(target), "source": matmul_params(source)}
    report["params"] = shapes
    t, s = shapes["target"], shapes["source"]
    device = next(target.parameters()).device
    report["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report["peak"] = measure_peak(dtype, device, {
        "decode (64 x d x 4d)": (64, t["hidden"], 4 * t["hidden"]),
        "train body (2048 x d x 4d)": (2048, t["hidden"], 4 * t["hidden"]),
        "output layer (256 x d x V)": (256, t["hidden"], t["vocab"]),
    })
    peak = max(v["gflops"] for k, v in report["peak"].items() if isinstance(v, dict))

    def record(stage, side, seconds, flops, **extra):
        entry = report["stages"].setdefault(stage, {})
        entry[side] = {"seconds": round(seconds, 2), "gflop": round(flops / 1e9, 1),
                       "gflops": round(flops / seconds / 1e9, 2), "fraction_of_peak": round(flops / seconds / 1e9 / peak, 4),
                       **extra}
        print(f"{stage:<9} {side:<6} {seconds:8.1f} s  {flops / seconds / 1e9:7.1f} GFLOP/s  {extra}", flush=True)

    # generate (target base)
    prompt_tokens = [len(target_tok(p)["input_ids"]) for p in prompts]
    outputs = {}
    hf_sides = [side for side in args.sides if side != "vllm"]
    for side in args.sides:
        with served(side, cfg["target"]) as (model, startup):
            outs, sec = _timed(lambda: generate_both(side, model or target, target_tok, prompts, cfg,
                                                     args.generation_batch_size))
        new = sum(len(target_tok(o, add_special_tokens=False)["input_ids"]) for o, _ in outs)
        flops = 2 * (t["body"] * (sum(prompt_tokens) + new) + t["head"] * (len(prompts) + new))
        # The memory-bound floor of decoding: the weights read once per decode step. Batch 1 takes one step per new
        # token; a batch runs until its last row stops (at most max_candidate_tokens steps: this floor is a bound).
        steps = new if side == "paper" else cfg["max_candidate_tokens"] * -(-len(prompts) // args.generation_batch_size)
        floor = steps * (t["body"] + t["head"]) * dtype.itemsize / (report["peak"]["copy_gb_s"] / 2 * 1e9)
        record("generate", side, sec, flops, new_tokens=new, candidates_per_s=round(len(prompts) / sec, 2),
               tokens_per_s=round(new / sec, 1), memory_floor_s=round(floor, 2), **startup)
        outputs[side] = outs
    base = outputs.get("ours") or outputs["paper"]
    texts = [parse_candidate(o, finished=f) or (o.strip().splitlines() or ["x"])[0][:200] or "x" for o, f in base]

    # score (discriminator on the source base)
    disc = load_adapter(source, cfg["discriminator"], cfg["source"])
    from peft_transfer.discriminator import encode_question

    question_tokens = sum(len(encode_question(source_tok, x, cfg["task_name"]).prefix_ids) for x in texts)
    for side in hf_sides:
        verdicts, sec = _timed(lambda: score_both(side, disc, source_tok, texts, cfg["task_name"], 64))
        flops = 2 * (s["body"] * question_tokens + s["head"] * len(texts))
        record("score", side, sec, flops, candidates_per_s=round(len(texts) / sec, 2), passed=sum(verdicts))
    source = strip_adapters(disc)

    # label (teacher: source base + source adapter)
    teacher = load_adapter(source, cfg["source_adapter"], cfg["source"])
    inputs = texts[: args.samples]
    label_prompt_tokens = sum(len(source_tok(task_prompt(source_tok, x))["input_ids"]) for x in inputs)
    labelled = {}
    for side in args.sides:
        with served(side, cfg["source"], cfg["source_adapter"]) as (model, startup):
            rows, sec = _timed(lambda: label_both(side, model or teacher, source_tok, inputs, cfg,
                                                  args.generation_batch_size))
        new = sum(len(source_tok(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows)
        flops = 2 * (s["body"] * (label_prompt_tokens + new) + s["head"] * (len(inputs) + new))
        record("label", side, sec, flops, samples_per_s=round(len(inputs) / sec, 2), new_tokens=new, **startup)
        labelled[side] = rows
    if {"ours", "vllm"} <= set(labelled):
        report["vllm_labels_equal_to_hf"] = sum(a["completion"] == b["completion"]
                                                for a, b in zip(labelled["ours"], labelled["vllm"]))
    teacher = source = disc = None  # noqa: F841 — free the source base before training

    # train (target base, fresh LoRA), on the same rows for both
    rows = labelled.get("ours") or labelled["paper"]
    train_rows = [{"prompt": task_prompt(target_tok, r["input"]), "completion": r["completion"] or " 0"} for r in rows]
    for side in hf_sides:
        (info, target), sec = _timed(lambda: train_both(side, target, target_tok, train_rows, cfg, args.epochs,
                                                        os.path.join(tmp, f"train-{side}")))
        epochs = args.epochs
        flops = epochs * (4 * t["body"] * info["tokens_per_epoch"] + 4 * t["head"] * info["completion_tokens_per_epoch"])
        record("train", side, sec, flops, **info, tokens_per_s=round(epochs * info["tokens_per_epoch"] / sec, 1))

    total = {side: sum(st[side]["seconds"] for st in report["stages"].values() if side in st) for side in hf_sides}
    if "vllm" in args.sides and "ours" in total:  # HF scoring and training, vLLM generation with its start-ups
        st = report["stages"]
        total["vllm"] = total["ours"] + sum(st[k]["vllm"]["seconds"] + st[k]["vllm"]["startup_s"] - st[k]["ours"]["seconds"]
                                            for k in ("generate", "label"))
    report["end_to_end_s"] = {k: round(v, 1) for k, v in total.items()}
    if {"paper", "ours"} <= set(args.sides):
        for st in report["stages"].values():
            st["speedup"] = round(st["paper"]["seconds"] / st["ours"]["seconds"], 2)
            if "vllm" in st:
                st["vllm_speedup"] = round(st["paper"]["seconds"] / st["vllm"]["seconds"], 2)
        report["end_to_end_speedup"] = round(total["paper"] / total["ours"], 2)
        if "vllm" in total:
            report["end_to_end_speedup_vllm"] = round(total["paper"] / total["vllm"], 2)
    report["peak_gflops_used"] = peak
    print(markdown(report))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "speed.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(args.out, "speed.md"), "w") as f:
            f.write(markdown(report) + "\n")
    return report


def markdown(r: dict) -> str:
    lines = [f"# Speed, side by side ({r['world']} world: {r['models']['source']} -> {r['models']['target']})", "",
             f"C = {r['candidates']} candidates, N = {r['samples']} labelled and trained on, {r['epochs']} epochs; "
             f"{r['threads']} threads, {r['dtype']}; torch {r['versions']['torch']}, transformers "
             f"{r['versions']['transformers']}, trl {r['versions']['trl']}.", "",
             "| stage | paper-style s | ours s | ours / paper-style speed-up | paper-style % of peak | ours % of peak |",
             "|---|---|---|---|---|---|"]
    for name, st in r["stages"].items():
        p, o = st.get("paper", {}), st.get("ours", {})
        pct = lambda e: f"{100 * e['fraction_of_peak']:.1f}%" if e else "—"  # noqa: E731
        lines.append(f"| {name} | {p.get('seconds', '—')} | {o.get('seconds', '—')} | {st.get('speedup', '—')}× | "
                     f"{pct(p)} | {pct(o)} |")
    e = r["end_to_end_s"]
    lines.append(f"| **end to end** | {e.get('paper', '—')} | {e.get('ours', '—')} | "
                 f"{r.get('end_to_end_speedup', '—')}× | | |")
    lines += ["", f"Peak: the best bf16/fp32 matmul rate measured at the stage shapes, {r['peak_gflops_used']} GFLOP/s "
              f"(all shapes: {json.dumps({k: v for k, v in r['peak'].items()})}).", ""]
    g = r["stages"].get("generate", {})
    for side in ("paper", "ours"):
        if side in g:
            lines.append(f"- generate, {side}: {g[side]['tokens_per_s']} new tokens/s, {g[side]['candidates_per_s']} "
                         f"candidates/s; memory-bound floor {g[side]['memory_floor_s']} s against "
                         f"{g[side]['seconds']} s measured.")
    for name in ("generate", "label"):
        v, o = r["stages"].get(name, {}).get("vllm"), r["stages"].get(name, {}).get("ours")
        if v:
            rate = f"{v['tokens_per_s']} new tokens/s" if "tokens_per_s" in v else f"{v['samples_per_s']} samples/s"
            vs = f", {round(o['seconds'] / v['seconds'], 2)}× ours on HF" if o else ""
            lines.append(f"- {name}, vLLM server: {v['seconds']} s (start-up {v['startup_s']} s apart), {rate}, "
                         f"{100 * v['fraction_of_peak']:.1f}% of peak{vs}.")
    if "vllm" in e:
        lines.append(f"- end to end with vLLM generating (its start-ups included): {e['vllm']} s"
                     + (f", {r['end_to_end_speedup_vllm']}× the paper-style loop" if "end_to_end_speedup_vllm" in r
                        else "") + (f"; {r['vllm_labels_equal_to_hf']} of {r['samples']} teacher labels equal to HF's."
                                    if "vllm_labels_equal_to_hf" in r else "."))
    tr = r["stages"].get("train", {})
    for side in ("paper", "ours"):
        if side in tr:
            lines.append(f"- train, {side}: {tr[side]['steps']} steps, {tr[side]['tokens_per_s']} tokens/s, "
                         f"final loss {tr[side]['loss']}.")
    return "\n".join(lines)


def _versions() -> dict:
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "python": platform.python_version(), "machine": platform.processor() or platform.machine()}


if __name__ == "__main__":
    main()
