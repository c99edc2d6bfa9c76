"""Memory and speed of token-level KD: full logits (naive) against `peft_transfer.distillation.chunked.chunked_token_divergence`.

Each variant runs forward + backward of the same loss on the same random inputs (student/teacher final hidden states,
their lm_head weights, labels with a masked prompt) in its own subprocess, so each peak is measured from a clean
process and an out-of-memory naive run cannot disturb the chunked one. Reported per variant: peak memory above the
inputs (CUDA: `torch.cuda.max_memory_allocated`; CPU: peak RSS from `getrusage` minus the RSS before the first
step), median time per step after warm-up, and the max abs difference of the loss and of the student gradients
between the two variants.

    # what a 7B-class Gemma vocabulary costs on one GPU
    python benchmarks/kd_memory.py --vocab 256000 --seq 512 --batch 8 --hidden 4096 --dtype bf16 --device cuda \\
        --out benchmarks/results/kd_memory_h100.json
    # CPU smoke run
    python benchmarks/kd_memory.py --vocab 32000 --seq 128 --batch 2 --hidden 256 --dtype fp32 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script (`python benchmarks/kd_memory.py`) as well as a module: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from peft_transfer.distillation.chunked import chunked_token_divergence  # noqa: E402
from peft_transfer.distillation.losses import mixed_loss  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
VARIANTS = ("naive", "chunked")
_OOM_ERRORS = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=256000)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=4096, help="student hidden size")
    parser.add_argument("--teacher-hidden", type=int, default=None, help="teacher hidden size (default: --hidden)")
    parser.add_argument("--chunk-size", type=int, default=256, help="completion positions per chunk")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after --warmup")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--kind", choices=["forward_kl", "reverse_kl", "jsd"], default="jsd")
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--sequence-weight", type=float, default=0.0, help="alpha in alpha*CE + (1-alpha)*divergence")
    parser.add_argument("--prompt-fraction", type=float, default=0.25, help="leading positions masked with -100")
    parser.add_argument("--train-lm-head", action="store_true", help="student lm_head requires grad (not LoRA-like)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--result-file", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def make_inputs(args):
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    teacher_hidden_size = args.teacher_hidden or args.hidden

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype).mul_(scale)

    # Scaled so that logits have a standard deviation of about 3, like a trained LM's, not 60.
    student_hidden = randn(args.batch, args.seq, args.hidden).requires_grad_(True)
    student_weight = randn(args.vocab, args.hidden, scale=3 / args.hidden**0.5).requires_grad_(args.train_lm_head)
    teacher_hidden = randn(args.batch, args.seq, teacher_hidden_size)
    teacher_weight = randn(args.vocab, teacher_hidden_size, scale=3 / teacher_hidden_size**0.5)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator, device=device)
    labels[:, : int(args.prompt_fraction * args.seq)] = -100
    return student_hidden, student_weight, teacher_hidden, teacher_weight, labels


def step(variant, args, student_hidden, student_weight, teacher_hidden, teacher_weight, labels):
    loss_kwargs = dict(kind=args.kind, beta=args.beta, temperature=args.temperature)
    if variant == "naive":
        # What a trainer does by default: both models' full (batch, length, vocab) logits, then the loss.
        student_logits = F.linear(student_hidden, student_weight)
        with torch.no_grad():
            teacher_logits = F.linear(teacher_hidden, teacher_weight)
        loss = mixed_loss(student_logits, teacher_logits, labels, sequence_weight=args.sequence_weight, **loss_kwargs)
    else:
        loss = chunked_token_divergence(
            student_hidden, student_weight, teacher_hidden, teacher_weight, labels, chunk_size=args.chunk_size,
            sequence_weight=args.sequence_weight, **loss_kwargs,
        )
    loss.backward()
    return loss.detach()


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_variant(args) -> dict:
    """Child process: time `args.variant` and record its peak memory, loss and gradients."""
    device = torch.device(args.device)
    is_cuda = device.type == "cuda"

    def sync():
        if is_cuda:
            torch.cuda.synchronize(device)

    # One tiny step first, so that one-off costs (kernel libraries, thread pools, cuBLAS workspaces) are paid before
    # the baseline and do not count as the loss's memory.
    tiny = argparse.Namespace(**{**vars(args), "vocab": 64, "seq": 4, "batch": 1})
    step(args.variant, args, *make_inputs(tiny))
    tensors = make_inputs(args)
    student_hidden, student_weight = tensors[0], tensors[1]
    sync()
    if is_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = current_rss_bytes()
    result = {"variant": args.variant, "status": "ok", "baseline_bytes": baseline}
    times = []
    try:
        for index in range(args.warmup + args.steps):
            student_hidden.grad = None
            student_weight.grad = None
            sync()
            start = time.perf_counter()
            loss = step(args.variant, args, *tensors)
            sync()
            if index >= args.warmup:
                times.append(time.perf_counter() - start)
    except _OOM_ERRORS as error:
        result.update(status="OOM", error=str(error).splitlines()[0])
    except RuntimeError as error:  # the CPU allocator raises a plain RuntimeError
        if "memory" not in str(error).lower():
            raise
        result.update(status="OOM", error=str(error).splitlines()[0])

    if is_cuda:
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - baseline
        result["memory_source"] = "torch.cuda.max_memory_allocated - allocated inputs"
    else:
        # ru_maxrss is in KiB on Linux. It is the process's lifetime peak, so an earlier setup peak above the
        # steps' peak would hide the latter; the inputs are allocated once, without temporaries, to avoid that.
        result["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
        result["memory_source"] = "peak RSS (getrusage) - RSS before the first step"
    if result["status"] == "ok":
        result["step_seconds"] = times
        result["median_step_seconds"] = statistics.median(times) if times else None
        grads = {"student_hidden": student_hidden.grad.detach().float().cpu()}
        if student_weight.grad is not None:
            grads["student_lm_head"] = student_weight.grad.detach().float().cpu()
        torch.save({"loss": loss.float().cpu(), "grads": grads}, args.result_file.with_suffix(".pt"))
    args.result_file.write_text(json.dumps(result))
    return result


def launch(variant, argv, workdir) -> tuple[dict, dict | None]:
    result_file = Path(workdir) / f"{variant}.json"
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--variant", variant, "--result-file",
               str(result_file)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if not result_file.exists():
        # Killed (the CPU OOM killer) or crashed before writing: say so instead of dying with it.
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return {"variant": variant, "status": f"failed (exit {completed.returncode})", "error": " | ".join(tail)}, None
    result = json.loads(result_file.read_text())
    tensors = torch.load(result_file.with_suffix(".pt")) if result["status"] == "ok" else None
    return result, tensors


def fmt_bytes(value) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f} MiB"


def main(args, argv):
    if args.variant is not None:
        run_variant(args)
        return None

    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    config.pop("variant"), config.pop("result_file")
    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for variant in VARIANTS:
            results[variant], outputs[variant] = launch(variant, argv, workdir)

    differences = None
    if outputs["naive"] is not None and outputs["chunked"] is not None:
        naive, chunked = outputs["naive"], outputs["chunked"]
        differences = {"loss": (naive["loss"] - chunked["loss"]).abs().item()}
        for name in naive["grads"]:
            differences[f"grad_{name}"] = (naive["grads"][name] - chunked["grads"][name]).abs().max().item()
            differences[f"grad_{name}_max_abs"] = naive["grads"][name].abs().max().item()
        differences["loss_value"] = naive["loss"].item()

    tokens = args.batch * args.seq
    completion = args.batch * (args.seq - int(args.prompt_fraction * args.seq))
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(
        f"token-level KD ({args.kind}, beta={args.beta}, T={args.temperature}, CE weight={args.sequence_weight}), "
        f"forward + backward on {device_name}, {args.dtype}: batch {args.batch} x seq {args.seq} = {tokens} tokens "
        f"({completion} completion), vocab {args.vocab}, hidden {args.hidden}, chunk {args.chunk_size}, "
        f"lm_head {'trained' if args.train_lm_head else 'frozen'}, torch {torch.__version__}"
    )
    print(f"memory: {results['chunked'].get('memory_source', 'n/a')}")
    header = f"{'variant':<9} {'status':<22} {'peak memory':>14} {'median step':>12}"
    print(header)
    print("-" * len(header))
    for variant in VARIANTS:
        result = results[variant]
        median = result.get("median_step_seconds")
        step_text = "n/a" if median is None else f"{median * 1000:,.1f} ms"
        peak = result.get("peak_bytes") if result["status"] in ("ok", "OOM") else None
        print(f"{variant:<9} {result['status']:<22} {fmt_bytes(peak):>14} {step_text:>12}")
    if results["naive"].get("median_step_seconds") and results["chunked"].get("median_step_seconds"):
        ratio_memory = results["naive"]["peak_bytes"] / max(results["chunked"]["peak_bytes"], 1)
        ratio_time = results["chunked"]["median_step_seconds"] / results["naive"]["median_step_seconds"]
        print(f"chunked uses {ratio_memory:.1f}x less peak memory and takes {ratio_time:.2f}x the naive time")
    if differences is None:
        print("max abs difference: n/a (a variant did not finish)")
    else:
        print(f"loss {differences['loss_value']:.6f}; max abs difference naive vs chunked: "
              f"loss {differences['loss']:.3e}"
              + "".join(f", {name} {value:.3e} (of max {differences[name + '_max_abs']:.3e})"
                        for name, value in differences.items() if name.startswith("grad_") and "max_abs" not in name))
    for variant in VARIANTS:
        if "error" in results[variant]:
            print(f"{variant}: {results[variant]['error']}")

    report = {"config": config, "device": device_name, "torch": torch.__version__, "results": results,
              "differences": differences}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main(make_parser().parse_args(), sys.argv[1:])
