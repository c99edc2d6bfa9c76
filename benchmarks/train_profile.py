"""Where a training step's time goes on CPU: the LoRA step of Gemma-3-270M without the Trainer, the same under
`torch.compile`, the operator profile of `DistillationTrainer` on the speed benchmark's rows, and the chunked loss
alone. What `benchmarks/results/speed/README.md` says stands between the training stage and the machine's peak.

    python benchmarks/train_profile.py --what eager      # fwd + bwd of the body, output layer at the last C positions
    python benchmarks/train_profile.py --what compile    # the same with the body under torch.compile
    python benchmarks/train_profile.py --what trainer    # DistillationTrainer on 64 addition rows, 2 epochs, profiled
    python benchmarks/train_profile.py --what loss       # chunked_token_divergence alone and its parts

Needs the `real` extra. Prints what it measured; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
TARGET = "packaged:gemma-3-270m"


def _model():
    from peft import LoraConfig, get_peft_model

    from peft_transfer.modeling import load_base

    model = load_base(TARGET, dtype="bfloat16")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    model.train()
    return model


def raw_steps(compile_body: bool, batch: int, length: int, completion: int, steps: int) -> None:
    model = _model()
    body, head = model.base_model.model.model, model.base_model.model.lm_head
    if compile_body:
        body = torch.compile(body)
    ids = torch.randint(0, 20000, (batch, length))

    def step():
        hidden = body(input_ids=ids).last_hidden_state[:, -completion:]
        logits = head(hidden).float()
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, -completion:].reshape(-1)).backward()

    start = time.perf_counter()
    step()
    print(f"first step {time.perf_counter() - start:.1f} s", flush=True)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(f"{'compiled' if compile_body else 'eager'} steps {[round(t, 2) for t in times]} s; "
          f"{batch * length / min(times):.1f} tokens/s at {batch} x {length}", flush=True)


def trainer_profile(rows: int, epochs: int) -> None:
    import speed
    from torch.profiler import profile

    from peft_transfer.modeling import load_base, load_tokenizer

    rng = random.Random(0)
    data = [{"prompt": f"What is {rng.randint(100, 999)} + {rng.randint(100, 999)}?\nAnswer:",
             "completion": f" {rng.randint(100, 1999)}\n"} for _ in range(rows)]
    tokenizer, model = load_tokenizer(TARGET), load_base(TARGET, dtype="bfloat16")
    start = time.perf_counter()
    with profile() as prof:
        info, _ = speed.train_both("ours", model, tokenizer, data, {"learning_rate": 2e-4, "batch_size": 16}, epochs,
                                   "/tmp/train-profile")
    print(info, f"{time.perf_counter() - start:.1f} s (profiled)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def loss_parts(positions: int) -> None:
    from peft_transfer.distillation.chunked import chunked_token_divergence

    hidden_size, vocab = 640, 262_144
    weight = torch.randn(vocab, hidden_size, dtype=torch.bfloat16) * 0.02
    hidden = torch.randn(1, positions, hidden_size, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, vocab, (1, positions))

    def best(fn, n=5):
        fn()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return f"{1000 * min(times):.1f} ms"

    def chunked():
        loss = chunked_token_divergence(hidden, weight, None, None, labels, kind="forward_kl", sequence_weight=1.0)
        (loss[0] if isinstance(loss, tuple) else loss).backward()

    x = hidden.detach()[0]
    logits = F.linear(x, weight)
    upcast = logits.float()
    grad = torch.softmax(upcast, -1).to(torch.bfloat16)
    print(f"{positions} positions x {vocab} vocabulary, {torch.get_num_threads()} threads")
    print("chunked loss, forward and backward", best(chunked))
    print("  output layer matmul (bf16)", best(lambda: F.linear(x, weight)))
    print("  upcast to fp32", best(lambda: logits.float()))
    print("  log_softmax fp32", best(lambda: torch.log_softmax(upcast, -1)))
    print("  gradient to bf16", best(lambda: torch.softmax(upcast, -1).to(torch.bfloat16)))
    print("  gradient matmul (bf16)", best(lambda: grad @ weight))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", choices=("eager", "compile", "trainer", "loss"), default="eager")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--completion", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--positions", type=int, default=52, help="completion positions of one step (loss)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.what in ("eager", "compile"):
        raw_steps(args.what == "compile", args.batch, args.length, args.completion, args.steps)
    elif args.what == "trainer":
        trainer_profile(64, 2)
    else:
        loss_parts(args.positions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
