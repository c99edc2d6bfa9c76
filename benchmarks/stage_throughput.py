"""Per-stage throughput of a transfer on a randomly initialised Llama-architecture model.

Each stage of a transfer is timed through the function the pipeline itself calls, on synthetic prompts of controlled
token lengths (random weights write garbage, so nothing here can rely on parsing the model's output):

    generate        `generation.generate` with the sampling settings and stop string of `synthesis.synthesize`
                    (numbered-list prompts from `data.generator_prompt`, 5 seeds shuffled per prompt); the first call
                    of a shape and the steady state are reported apart; optionally at batch 1 (the paper's loop) and
                    with `cache_implementation="static"` (transformers compiles the decode step on CUDA)
    score           `discriminator.score` on a LoRA-adapted model: one forward pass per candidate, batched
    label           `labelling.label`: the teacher (base + LoRA) answers greedily, with the answer stop string
    train           `DistillationTrainer` (sequence-level KD, LoRA r=8 alpha=8 on q_proj/v_proj) for a few steps

Model FLOPs utilisation of the training stage. The base is frozen: its weight-gradient GEMMs are never run, only the
gradients with respect to activations flow back through it, so per token

    forward 2·N + 2·N_lora + A,   backward 2·N + 4·N_lora + 2·A,   total 4·N + 6·N_lora + 3·A

where N counts the weights of every matrix multiply (all parameters but the input embedding, lm_head included),
N_lora the adapter's, and A = 2·L·d·(T+1) the causal attention scores and values (L layers, width d, sequence T).
Recomputation under gradient checkpointing is not counted (MFU, not hardware FLOPs). The 6·N·tokens convention of full
fine-tuning is reported next to it (`mfu_6n`) for comparison only. MFU divides by `--peak-tflops` (dense bf16), which
defaults to the device's datasheet value where the device is known (989 for H100 SXM / H200).

Numbers of DESIGN.md §5 (one H100, a 7B model, the design's own measurements) are printed as reference columns; every
other number is measured by this run.

    # 7B shapes on one GPU (bf16), with the compiled static-cache generation as well
    python benchmarks/stage_throughput.py --preset 7b --static-cache --out benchmarks/results/stage_throughput_7b_h100.json
    # the training stage under DeepSpeed ZeRO-3, one process
    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 1 \\
        benchmarks/stage_throughput.py --preset 7b --deepspeed zero3 --out benchmarks/results/stage_throughput_7b_zero3.json
    # CPU smoke run (well under a minute; on an oversubscribed CPU, --threads 1 is far steadier than 2)
    python benchmarks/stage_throughput.py --preset tiny --threads 2 --static-cache --out /tmp/stage_throughput_tiny.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

# Run as a script (`python benchmarks/stage_throughput.py`) as well as a module: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

STAGES = ("generate_batch1", "generate", "generate_static", "score", "label", "train")
TASK_NAME = "synthetic benchmark"


@dataclass
class Preset:
    """Model shapes and the default work of one benchmark size."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    generation_batch_size: int  # prompts per generate call (stages generate and label)
    filter_batch_size: int  # candidates per discriminator forward
    calls: int  # steady-state calls per inference stage, after the first
    train_steps: int  # timed training steps, after --train-warmup
    corpus_docs: int  # documents the tokenizer is trained on


PRESETS = {
    # Llama-2-7b shapes.
    "7b": Preset(4096, 32, 32, 32, 11008, 32000, 4096, generation_batch_size=256, filter_batch_size=256, calls=4,
                 train_steps=20, corpus_docs=8000),
    # TinyLlama-1.1B shapes (grouped-query attention).
    "1b": Preset(2048, 22, 32, 4, 5632, 32000, 2048, generation_batch_size=256, filter_batch_size=256, calls=4,
                 train_steps=20, corpus_docs=8000),
    # Small enough for a CPU smoke run.
    "tiny": Preset(64, 2, 4, 4, 172, 512, 512, generation_batch_size=8, filter_batch_size=32, calls=2,
                   train_steps=3, corpus_docs=600),
}

# DESIGN.md §5: measured by the design's authors on one H100 with a 7B model (random weights, bf16), 2026-11-24.
# Reference columns only; never reported as this run's results.
DESIGN_REFERENCE = {
    "generate_batch1": {"per_s": 1 / 5.1, "per_call_s": 5.1, "note": "5.1 s per candidate (batch 1)"},
    "generate": {"per_s": 70.0, "per_call_s": 3.7, "first_call_s": 9.7,
                 "note": "70 cand/s, 3.7 s/batch; first call 9.7 s; floor ~200 cand/s"},
    "generate_static": {"per_s": 109.0, "per_call_s": 2.35, "first_call_s": 41.0,
                        "note": "109 cand/s, 2.35 s/batch after a 41 s compile"},
    "score": {"per_s": 351.0, "per_call_s": 0.73, "note": "351 cand/s, 0.73 s/batch, ~450 TFLOP/s"},
    "label": {"note": "(not measured in DESIGN)"},
    "train": {"per_s": 11_700.0, "per_call_s": 0.17, "note": "11.7k tok/s, 0.17 s/step, ~40% of bf16 peak"},
}

# Dense bf16 peak of known devices (datasheet, without sparsity), matched on the CUDA device name.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=None,
                        help="stages to run (default: all; generate_static only with --static-cache)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--attn-implementation", default=None, help="e.g. sdpa, eager, flash_attention_2")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--seed", type=int, default=0)
    # generation / labelling
    parser.add_argument("--generation-batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="generator prompt length")
    parser.add_argument("--new-tokens", type=int, default=64, help="new tokens per candidate")
    parser.add_argument("--static-cache", action="store_true",
                        help="also time generate with cache_implementation='static' (compiled decoding on CUDA)")
    parser.add_argument("--batch1-calls", type=int, default=1,
                        help="steady-state calls of batch-1 generation after its first (0: skip the stage)")
    parser.add_argument("--label-prompt-tokens", type=int, default=96, help="teacher prompt length")
    parser.add_argument("--label-new-tokens", type=int, default=64, help="new tokens per teacher answer")
    # discriminator
    parser.add_argument("--filter-batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--score-tokens", type=int, default=96, help="tokens per scored discriminator question")
    parser.add_argument("--calls", type=int, default=None, help="steady-state calls per inference stage")
    # training
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--train-seq-len", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=None, help="timed steps after the warm-up ones")
    parser.add_argument("--train-warmup", type=int, default=2, help="untimed steps first (the first is reported)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=8)
    parser.add_argument("--deepspeed", choices=["zero3"], default=None,
                        help="run the training stage under accelerate/DeepSpeed (start with `accelerate launch "
                             "--config_file recipes/accelerate/zero3.yaml --num_processes 1`)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak of the device in TFLOP/s for MFU (default: known devices only)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser


# ---------------------------------------------------------------------------------------------------------------
# Synthetic text of controlled token length.


class Words:
    """Pronounceable pseudo-words: the tokenizer's corpus and the benchmark's texts (no newlines in the corpus, so
    random weights rarely write the answer stop string)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        cons, vow = "bcdfghjklmnprstvwz", "aeiou"
        self.syllables = [c + v for c in cons for v in vow] + [c + v + e for c in cons for v in vow for e in "nrst"]

    def word(self) -> str:
        return "".join(self.rng.choice(self.syllables) for _ in range(self.rng.randint(1, 4)))

    def text(self, n: int) -> str:
        return " ".join(self.word() for _ in range(n))

    def fit(self, measure, target: int) -> str:
        """A text whose `measure` (a token count) is the smallest at or above `target` that adding words reaches."""
        words = [self.word()]
        while measure(" ".join(words)) < target:
            # Add several words at a time while far away: each measure tokenizes the whole text.
            gap = target - measure(" ".join(words))
            words += [self.word() for _ in range(max(1, gap // 3))]
        while len(words) > 1 and measure(" ".join(words[:-1])) >= target:
            words.pop()
        return " ".join(words)


def lengths(values: list[int]) -> dict:
    return {"min": min(values), "mean": round(statistics.fmean(values), 2), "max": max(values)}


# ---------------------------------------------------------------------------------------------------------------
# Model and tokenizer.


def build_tokenizer(preset: Preset, words: Words):
    from peft_transfer.worlds.tiny_models import build_tokenizer as train_bpe

    corpus = [words.text(60) for _ in range(preset.corpus_docs)]
    return train_bpe("byte_bpe", preset.vocab_size, corpus)


def build_base(preset: Preset, tokenizer, *, dtype, device, attn_implementation=None, seed=0):
    """A randomly initialised `LlamaForCausalLM` of the preset's shapes, built directly on `device` (or, with
    `device=None`, wherever DeepSpeed's ZeRO-3 init puts it)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        hidden_size=preset.hidden_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        intermediate_size=preset.intermediate_size,
        vocab_size=preset.vocab_size,
        max_position_embeddings=preset.max_position_embeddings,
        rms_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.eval()
    return model


def count_params(model) -> dict:
    """Parameters by role; ZeRO-3 partitions hold `ds_numel` (their full size) on an empty tensor."""
    total = matmul = lora = 0
    embed = model.get_input_embeddings().weight
    embed_ids = {id(embed)}
    for name, p in model.named_parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        if "lora_" in name:
            lora += n
        elif id(p) not in embed_ids and p.dim() >= 2:
            matmul += n
    return {"total": total, "matmul": matmul, "lora": lora}


def lora_config(args):
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


# ---------------------------------------------------------------------------------------------------------------
# Timing.


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def summarize(times: list[float], items_per_call: int) -> dict:
    """First call apart (a new shape: allocation, kernel selection, compilation), steady state as the median."""
    first, steady = times[0], times[1:]
    median = statistics.median(steady) if steady else None
    return {
        "first_call_s": first,
        "steady_call_s": steady,
        "steady_median_s": median,
        "first_call_per_s": items_per_call / first,
        "per_s": items_per_call / median if median else None,
    }


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float | None:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return None


# ---------------------------------------------------------------------------------------------------------------
# Stages.


def transfer_config(args, preset: Preset):
    """A `TransferConfig` with the pipeline's defaults and this run's batch sizes (placeholder model names: the
    stage functions receive the models themselves)."""
    from peft_transfer import TransferConfig

    return TransferConfig(
        source_model="random-init", target_model="random-init", source_adapter="random-init",
        discriminator_adapter="random-init", seed_file="synthetic", task_name=TASK_NAME,
        generation_batch_size=args.generation_batch_size or preset.generation_batch_size,
        filter_batch_size=args.filter_batch_size or preset.filter_batch_size,
        max_candidate_tokens=args.new_tokens, label_max_new_tokens=args.label_new_tokens,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha,
    )


def generator_prompts(cfg, tokenizer, target: int, count: int, seed: int):
    """Numbered-list prompts as `synthesize` builds them: fixed seeds, shuffled per prompt, about `target` tokens."""
    from peft_transfer.data import generator_prompt

    words = Words(seed + 1)  # the same seeds for every generate stage, so that their rows compare like for like
    seeds = [words.word() for _ in range(cfg.num_seeds)]

    def measure(_text=None):
        return len(tokenizer(generator_prompt(seeds, random.Random(0), cfg.num_seeds))["input_ids"])

    # Grow the seeds in turn until the whole prompt reaches the target.
    i = 0
    while measure() < target:
        seeds[i % len(seeds)] += " " + words.word()
        i += 1
    rng = random.Random(seed)
    prompts = [generator_prompt(seeds, rng, cfg.num_seeds) for _ in range(count)]
    return prompts, seeds


def run_generate(name, model, tokenizer, cfg, args, batch_size, calls, *, static=False) -> dict:
    from peft_transfer.data import generator_stop_strings
    from peft_transfer.generation import generate

    prompts, seeds = generator_prompts(cfg, tokenizer, args.prompt_tokens, batch_size * (calls + 1), args.seed)
    stop = generator_stop_strings(seeds, cfg.num_seeds)  # what synthesize stops at
    tokens = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    gen_config = model.generation_config
    old_cache = getattr(gen_config, "cache_implementation", None)
    if static:
        gen_config.cache_implementation = "static"
    times, ended = [], 0
    reset_peak(args.device)
    try:
        for c in range(calls + 1):
            torch.manual_seed(args.seed + c)
            batch = prompts[c * batch_size : (c + 1) * batch_size]
            seconds, out = timed(lambda: generate(
                model, tokenizer, batch, batch_size=batch_size, max_new_tokens=args.new_tokens,
                do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                stop_strings=stop, show_progress=False), args.device)
            times.append(seconds)
            ended += sum(finished for _, finished in out)
    finally:
        gen_config.cache_implementation = old_cache
    result = {
        "stage": name, "unit": "candidates/s", "function": "peft_transfer.generation.generate",
        "batch_size": batch_size, "calls": calls + 1, "prompt_tokens": lengths(tokens), "new_tokens": args.new_tokens,
        "do_sample": cfg.do_sample, "stop_strings": stop,
        "cache_implementation": "static" if static else "dynamic",
        # A row that ends early (EOS or the stop string) still waits for its batch; a batch ends early only if all
        # its rows do, which random weights make unlikely: this count says how far new_tokens is nominal.
        "rows_ended_early": ended,
        **summarize(times, batch_size),
        "peak_memory_gib": peak_gib(args.device),
    }
    result["new_tokens_per_s"] = result["per_s"] * args.new_tokens if result["per_s"] else None
    return result


def run_score(model, tokenizer, cfg, args, words, params, calls) -> tuple[dict, object]:
    from peft import get_peft_model

    from peft_transfer.discriminator import encode_question, score

    batch_size = cfg.filter_batch_size

    def measure(text):
        return len(encode_question(tokenizer, text, cfg.task_name).prefix_ids)

    texts = [words.fit(measure, args.score_tokens) for _ in range(batch_size * (calls + 1))]
    discriminator = get_peft_model(model, lora_config(args))
    discriminator.eval()
    times, widths, real = [], [], []
    reset_peak(args.device)
    try:
        for c in range(calls + 1):
            batch = texts[c * batch_size : (c + 1) * batch_size]
            sizes = [measure(t) for t in batch]
            widths.append(max(sizes))
            real.append(sum(sizes))
            seconds, _ = timed(lambda: score(discriminator, tokenizer, batch, cfg.task_name, batch_size=batch_size,
                                             show_progress=False), args.device)
            times.append(seconds)
    finally:
        model = discriminator.unload()  # back to the bare base for the next stage
    result = {
        "stage": "score", "unit": "candidates/s", "function": "peft_transfer.discriminator.score",
        "batch_size": batch_size, "calls": calls + 1,
        "question_tokens": lengths([measure(t) for t in texts]), "adapter": f"LoRA r={args.lora_r} q_proj,v_proj",
        **summarize(times, batch_size),
        "peak_memory_gib": peak_gib(args.device),
    }
    # Work done per call: every padded position goes through the body; lm_head runs on the last position only.
    head = params["lm_head"]
    flops = [2 * (params["matmul"] - head) * batch_size * w + 2 * head * batch_size for w in widths]
    if result["steady_median_s"]:
        result["tflops_per_s"] = statistics.median(f / t for f, t in zip(flops[1:], times[1:])) / 1e12
    result["padding_fraction"] = 1 - sum(real) / sum(w * batch_size for w in widths)
    return result, model


def run_label(model, tokenizer, cfg, args, words, calls) -> tuple[dict, object]:
    from peft import get_peft_model

    from peft_transfer.data import task_prompt
    from peft_transfer.labelling import label

    batch_size = cfg.generation_batch_size

    def measure(text):
        return len(tokenizer(task_prompt(tokenizer, text, cfg.prompt_template))["input_ids"])

    inputs = [words.fit(measure, args.label_prompt_tokens) for _ in range(batch_size * (calls + 1))]
    teacher = get_peft_model(model, lora_config(args))
    teacher.eval()
    times = []
    reset_peak(args.device)
    try:
        for c in range(calls + 1):
            batch = inputs[c * batch_size : (c + 1) * batch_size]
            seconds, rows = timed(lambda: label(cfg, teacher, tokenizer, batch, show_progress=False), args.device)
            assert len(rows) == len(batch)
            times.append(seconds)
    finally:
        model = teacher.unload()
    result = {
        "stage": "label", "unit": "samples/s", "function": "peft_transfer.labelling.label",
        "batch_size": batch_size, "calls": calls + 1, "prompt_tokens": lengths([measure(x) for x in inputs]),
        "new_tokens": cfg.label_max_new_tokens, "do_sample": cfg.label_do_sample, "answer_stop": cfg.answer_stop,
        "adapter": f"LoRA r={args.lora_r} q_proj,v_proj",
        **summarize(times, batch_size),
        "peak_memory_gib": peak_gib(args.device),
    }
    return result, model


def run_train(model, tokenizer, cfg, args, words, preset, peak_tflops) -> dict:
    """`DistillationTrainer` with the arguments the pipeline gives the target adapter (sequence-level KD)."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from peft_transfer.data import task_prompt
    from peft_transfer.distillation import DistillationTrainer
    from peft_transfer.stages import training_args

    cuda = torch.device(args.device).type == "cuda"
    steps = args.train_warmup + (args.train_steps if args.train_steps is not None else preset.train_steps)
    batch, seq = args.train_batch_size, args.train_seq_len
    out_dir = tempfile.mkdtemp(prefix="stage_throughput_")
    # The pipeline's own training arguments, with this benchmark's step count, batch and length.
    train_args = training_args(
        cfg, out_dir, show_progress=False, max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, max_length=seq, gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=10**6, report_to=[], seed=args.seed, bf16=cuda and args.dtype in ("auto", "bfloat16"),
        use_cpu=not cuda, kd_loss="sequence",
    )
    if model is None:  # ZeRO-3: built after the DeepSpeed config exists, so that weights are partitioned at init
        model = build_base(preset, tokenizer, dtype=resolve_dtype(args), device=None,
                           attn_implementation=args.attn_implementation, seed=args.seed)

    # Prompt + a completion longer than the sequence: every row is cut at max_length, so each step sees batch × seq.
    def measure(text):
        return len(tokenizer(text)["input_ids"])

    rows = [{"prompt": task_prompt(tokenizer, words.fit(measure, seq // 4), cfg.prompt_template),
             "completion": " " + words.fit(measure, seq)} for _ in range(batch * steps)]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, *_, **__):
            sync(args.device)
            self.marks.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            sync(args.device)
            self.marks.append(time.perf_counter())

    clock = StepClock()
    reset_peak(args.device)
    trainer = DistillationTrainer(model=model, args=train_args, train_dataset=Dataset.from_list(rows),
                                  processing_class=tokenizer, peft_config=lora_config(args), callbacks=[clock])
    row_tokens = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    trainer.train()
    step_s = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    timed_steps = step_s[args.train_warmup :]
    median = statistics.median(timed_steps) if timed_steps else None
    tokens_per_step = batch * statistics.fmean(row_tokens)

    params = count_params(trainer.model)
    cfg_model = trainer.model.config
    layers, width = cfg_model.num_hidden_layers, cfg_model.hidden_size
    attention = 2 * layers * width * (seq + 1)  # causal QK^T and AV per token, forward
    flops_per_token = 4 * params["matmul"] + 6 * params["lora"] + 3 * attention
    tokens_per_s = tokens_per_step / median if median else None
    result = {
        "stage": "train", "unit": "tokens/s", "function": "peft_transfer.distillation.DistillationTrainer.train",
        "batch_size": batch, "seq_len": seq, "row_tokens": lengths(row_tokens), "tokens_per_step": tokens_per_step,
        "steps": len(step_s), "warmup_steps": args.train_warmup, "kd_loss": "sequence",
        "adapter": f"LoRA r={args.lora_r} alpha={args.lora_alpha} q_proj,v_proj",
        "gradient_checkpointing": args.gradient_checkpointing, "deepspeed": args.deepspeed,
        "first_call_s": step_s[0], "steady_call_s": timed_steps, "steady_median_s": median,
        "first_call_per_s": tokens_per_step / step_s[0], "per_s": tokens_per_s,
        "matmul_params": params["matmul"], "lora_params": params["lora"],
        "flops_per_token": flops_per_token,
        "flops_formula": "4*N_matmul + 6*N_lora + 3*2*L*d*(T+1) per token (frozen base: no weight gradients)",
        "achieved_tflops_per_s": flops_per_token * tokens_per_s / 1e12 if tokens_per_s else None,
        "peak_tflops": peak_tflops,
        "peak_memory_gib": peak_gib(args.device),
    }
    if peak_tflops and tokens_per_s:
        result["mfu"] = result["achieved_tflops_per_s"] / peak_tflops
        result["mfu_6n"] = 6 * params["matmul"] * tokens_per_s / 1e12 / peak_tflops
    return result


# ---------------------------------------------------------------------------------------------------------------
# Environment and report.


def resolve_dtype(args):
    if args.dtype == "auto":
        return torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32
    return getattr(torch, args.dtype)


def device_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    return None


def environment(args, name: str) -> dict:
    import peft
    import transformers
    import trl

    env = {
        "device": name, "device_type": torch.device(args.device).type, "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__, "trl": trl.__version__,
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
    try:
        import deepspeed

        env["deepspeed"] = deepspeed.__version__
    except ImportError:
        pass
    return env


def _fmt(value, unit=""):
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.1f}k{unit}"
    return f"{value:.3g}{unit}"


def format_table(report: dict) -> str:
    design = report["design_reference"]
    same_setting = report["preset"] == "7b"
    head = ("stage", "batch", "first call", "steady/call", "throughput (steady)", "extra",
            "DESIGN §5 (7B, H100: the design's measurement)")
    lines = []
    for name, r in report["stages"].items():
        if name == "train":
            batch = f"{r['batch_size']}x{r['seq_len']}"
            extra = f"{_fmt(r['achieved_tflops_per_s'])} TFLOP/s"
            if r.get("mfu") is not None:
                extra += f", MFU {r['mfu']:.1%} (6N: {r['mfu_6n']:.1%})"
        else:
            tokens = r.get("prompt_tokens") or r.get("question_tokens")
            batch = f"{r['batch_size']}x{tokens['mean']:.0f}" + (f"+{r['new_tokens']}" if "new_tokens" in r else "")
            extra = f"{_fmt(r['tflops_per_s'])} TFLOP/s" if r.get("tflops_per_s") is not None else ""
            if r.get("new_tokens_per_s"):
                extra = f"{_fmt(r['new_tokens_per_s'])} new tok/s"
        ref = design.get(name, {})
        ref_text = ref.get("note", "")
        if same_setting and ref.get("per_s") and r.get("per_s"):
            ref_text += f"  [ours/ref {r['per_s'] / ref['per_s']:.2f}x]"
        lines.append((name, batch, f"{r['first_call_s']:.3g} s",
                      f"{r['steady_median_s']:.3g} s" if r["steady_median_s"] else "-",
                      f"{_fmt(r['per_s'])} {r['unit']}", extra, ref_text))
    widths = [max(len(str(row[i])) for row in [head] + lines) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the report (also printed, and written to `--out`)."""
    import datasets
    from transformers.utils import logging as hf_logging

    args = make_parser().parse_args(argv)
    # Process-wide settings, put back afterwards so that an in-process caller (a test) is left as it was.
    threads, verbosity, bars = torch.get_num_threads(), hf_logging.get_verbosity(), datasets.is_progress_bar_enabled()
    if args.threads and torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecation notices of transformers 5.x, not results
            return _run(args, argv)
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bar()


def _run(args, argv) -> dict:
    preset = PRESETS[args.preset]
    stages = list(args.stages or [s for s in STAGES if s != "generate_static" or args.static_cache])
    if args.batch1_calls == 0 and args.stages is None:
        stages.remove("generate_batch1")
    if args.deepspeed:
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() not in ("1", "true"):
            raise SystemExit(
                "--deepspeed zero3 runs under accelerate's DeepSpeed launcher: start it with\n  accelerate launch "
                "--config_file recipes/accelerate/zero3.yaml --num_processes 1 benchmarks/stage_throughput.py "
                + " ".join(argv if argv is not None else sys.argv[1:])
            )
        if set(stages) - {"train"}:
            if args.stages:
                raise SystemExit("--deepspeed zero3 times the training stage only: use --stages train.")
            stages = ["train"]

    name = device_name(args.device)
    peak = args.peak_tflops or (default_peak_tflops(name) if torch.device(args.device).type == "cuda" else None)
    words = Words(args.seed)
    t0 = time.perf_counter()
    tokenizer = build_tokenizer(preset, words)
    tokenizer_s = time.perf_counter() - t0
    cfg = transfer_config(args, preset)
    dtype = resolve_dtype(args)
    model = None
    build_s = None
    if stages != ["train"] or not args.deepspeed:
        build_s, model = timed(lambda: build_base(preset, tokenizer, dtype=dtype, device=args.device,
                                                  attn_implementation=args.attn_implementation, seed=args.seed),
                               args.device)
    calls = args.calls if args.calls is not None else preset.calls
    params = None
    if model is not None:
        params = count_params(model)
        params["lm_head"] = model.get_output_embeddings().weight.numel()

    results = {}
    for stage in stages:
        if stage == "generate_batch1":
            results[stage] = run_generate(stage, model, tokenizer, cfg, args, 1, args.batch1_calls)
        elif stage in ("generate", "generate_static"):
            results[stage] = run_generate(stage, model, tokenizer, cfg, args, cfg.generation_batch_size,
                                          calls, static=stage == "generate_static")
        elif stage == "score":
            results[stage], model = run_score(model, tokenizer, cfg, args, words, params, calls)
        elif stage == "label":
            results[stage], model = run_label(model, tokenizer, cfg, args, words, calls)
        elif stage == "train":
            results[stage] = run_train(model, tokenizer, cfg, args, words, preset, peak)
            model = None  # the trainer has wrapped it; nothing runs after training
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    report = {
        "benchmark": "stage_throughput",
        "preset": args.preset,
        "model": {"architecture": "LlamaForCausalLM (random init)", **asdict(preset),
                  "dtype": str(dtype).removeprefix("torch."), "attn_implementation": args.attn_implementation,
                  "params": params},
        "tokenizer": {"kind": "byte-level BPE trained locally on pseudo-words", "size": len(tokenizer),
                      "build_s": tokenizer_s},
        "model_build_s": build_s,
        "environment": environment(args, name),
        "batch_sizes": {"generate": cfg.generation_batch_size, "generate_batch1": 1, "score": cfg.filter_batch_size,
                        "label": cfg.generation_batch_size, "train": args.train_batch_size},
        "args": vars(args),
        "stages": results,
        "design_reference": {k: v for k, v in DESIGN_REFERENCE.items() if k in results},
        "design_reference_note": "DESIGN.md §5: the design's own measurements (7B, one H100, random weights, bf16), "
                                 "not this run's.",
    }
    print(f"\nstage throughput: preset {args.preset}, {name}, {report['model']['dtype']}, "
          f"torch {torch.__version__}, transformers {report['environment']['transformers']}"
          + (f", {torch.get_num_threads()} CPU threads" if report["environment"]["device_type"] == "cpu" else "")
          + (f", peak {peak:g} TFLOP/s (dense bf16)" if peak else ", no peak FLOP/s known: no MFU (--peak-tflops)"))
    print(format_table(report))
    if "train" in results:
        print(f"MFU: {results['train']['flops_formula']}; 6N is the full fine-tuning convention, for comparison.")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
