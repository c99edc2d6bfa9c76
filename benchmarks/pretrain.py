"""Build and pretrain the two tiny base-model families of the trained-here world (DESIGN.md §4).

    python benchmarks/pretrain.py --out peft_transfer/demo_models --size cpu      # the committed demo bases, 2 CPU cores
    python benchmarks/pretrain.py --out runs/bases --size gpu                     # larger bases, one H100 (bf16 autocast)
    python benchmarks/pretrain.py --probe-only --out peft_transfer/demo_models    # re-run the probes on saved bases

A transfer only shows something when the target base can do what the generator prompt asks of it: continue a
numbered list of task inputs *in the format of the listed items* (stage 3 of the method). The specific formats of
the tasks never occur in the pretraining corpus (`peft_transfer/worlds/corpus.py` only holds generic variants), so this
is in-context format copying, an induction-style skill. The corpus's own lists cover only a few dozen formats, which
a small model can simply memorize; this script therefore adds lists drawn from *random templates* (random fixed
words and punctuation around random slots: letters, numbers, pseudo-words, brackets, ...), every list homogeneous in
format, so the cheapest way to predict item k+1 is to copy the fixed parts of items 1..k. Items that happen to match a
task's `specific_pattern` are dropped, so no specific format leaks in. Template lists alone did not teach the tiny
bases to copy; *copy lines* do: a line of random text written 2-4 times, which only the context predicts (`MIXTURE`).

Training is a plain full-parameter causal-LM loop over documents packed into fixed-length token blocks (no padding
is wasted). `probe` measures what a transfer needs of a base: its loss on a random line and on the line's repeat (copying),
the format-copy rate of item 6, and the zero-shot accuracy of each task family's specific variant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import string
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from peft_transfer.data import generator_prompt, parse_candidate
from peft_transfer.worlds.corpus import generic_corpus
from peft_transfer.worlds.samplers import WEEKDAYS, WORDS, pseudo_word
from peft_transfer.worlds.tasks import TASKS, make_task
from peft_transfer.worlds.tiny_models import TinyFamily, build_model, build_tokenizer, save_family

PROBE_TASKS = tuple(TASKS)  # every family


@dataclass
class BaseSpec:
    """One base to build: its family's architecture and tokenizer, its size and its training budget."""

    name: str
    architecture: str  # "llama" or "gemma"
    tokenizer_kind: str  # "byte_bpe" or "metaspace_bpe"
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_dim: int
    steps: int
    batch_size: int  # blocks of `seq_len` tokens per step
    lr: float


# Shares of the corpus's characters: random-template lists and copied random lines; the rest is the generic corpus.
# Without the copy lines the bases never learned to copy (the committed bases of the first round: 0 of 50 probed
# item-6 continuations in a task's format, and no lower loss on the repeat of a random token string).
MIXTURE = dict(template_share=0.3, copy_share=0.4)

# The source (tiny-llama) is the smaller family, the target (tiny-gemma) the larger; the target also gets the
# larger training budget because its format copying is what the generator stage depends on.
SIZES = {
    "cpu": dict(
        seq_len=256,
        corpus_chars=10_000_000,
        bases=[
            BaseSpec("tiny-llama", "llama", "byte_bpe", 768, 128, 4, 4, 2, 384, 32, steps=2000, batch_size=8, lr=2e-3),
            BaseSpec("tiny-gemma", "gemma", "metaspace_bpe", 1024, 192, 4, 6, 2, 512, 32, steps=1800, batch_size=8,
                     lr=2e-3),
        ],
    ),
    "gpu": dict(
        seq_len=512,
        corpus_chars=50_000_000,  # ~3 min to generate and tokenize per base on one core
        bases=[
            BaseSpec("tiny-llama", "llama", "byte_bpe", 1024, 256, 4, 8, 4, 768, 32, steps=4000, batch_size=64,
                     lr=2e-3),
            BaseSpec("tiny-gemma", "gemma", "metaspace_bpe", 1536, 384, 6, 8, 4, 1024, 48, steps=5000, batch_size=64,
                     lr=1.5e-3),
        ],
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# The corpus: the package's generic corpus plus random-template lists.

_TEMPLATE_WORDS = list(WORDS) + (
    "the a of in to is what how many which find write take give list check compute solve evaluate complete "
    "each every all first last next word words letter letters number numbers value answer result total order "
    "from and or not with after before then now day days item items code name key step steps point move moves "
    "start end left right up down new old show tell make put get count sum add read say turn"
).split()
# First words of the corpus's own formats ("Sort descending:", "Spell ..."): anneal-phase templates start with
# them and then diverge, so that the context, not the memorized format that shares the first word, decides item 6.
_FORMAT_FIRST_WORDS = (
    "Sort Spell Is What Evaluate Compute Count Today Robot Take Complete In Which Order Largest Smallest Close "
    "Finish Arrange Alphabetical Write Uppercase Double Capitalize Start After One Walk First Last Initials Join "
    "Number Length How If Here reverse sort"
).split()
_SEPARATORS = (" ", ", ", ",", "", "-", " | ", "; ")
_ENDINGS = ("", "", "?", ".", ":", " =", " ->", " is", "!")


def _slot(rng: random.Random):
    """A random slot type with fixed parameters: returns a function that draws one value of it."""
    kind = rng.randrange(9)
    sep = rng.choice(_SEPARATORS)
    lo = rng.randint(1, 5)
    hi = lo + rng.randint(0, 4)
    upper = rng.random() < 0.25
    if kind == 0:  # letters
        return lambda r: sep.join(c.upper() if upper else c for c in r.sample(string.ascii_lowercase, r.randint(lo, hi)))
    if kind == 1:  # numbers in a fixed range
        a = rng.choice((0, 1, 10, 100, -9))
        b = a + rng.choice((9, 20, 89, 899))
        return lambda r: sep.join(str(r.randint(a, b)) for _ in range(r.randint(lo, hi)))
    if kind == 2:  # one number
        b = rng.choice((9, 30, 99, 365, 1000))
        return lambda r: str(r.randint(0, b))
    if kind == 3:  # pseudo-word, maybe quoted
        q = rng.choice(("", "", "'", '"'))
        return lambda r: q + pseudo_word(r, 1, 4) + q
    if kind == 4:  # words
        q = rng.choice(("", "'"))
        return lambda r: q + sep.join(r.choice(WORDS) for _ in range(r.randint(min(lo, 3), min(hi, 4)))) + q
    if kind == 5:  # brackets
        return lambda r: sep.join(r.choice("()[]{}<>") for _ in range(r.randint(lo + 1, hi + 4)))
    if kind == 6:  # weekday
        return lambda r: r.choice(WEEKDAYS)
    if kind == 7:  # a symbol string over a small alphabet
        alphabet = "".join(rng.sample("abcdxyzNESWUDLR01TF+-*", rng.randint(2, 4)))
        return lambda r: sep.join(r.choice(alphabet) for _ in range(r.randint(lo + 2, hi + 8)))
    ops = rng.sample("+-*", rng.randint(1, 3))  # a small expression
    return lambda r: f"{r.randint(-9, 20)} {r.choice(ops)} {r.randint(-9, 20)}"


def _phrase(rng: random.Random, format_first_words: bool = False) -> str:
    words = [rng.choice(_TEMPLATE_WORDS) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.6:
        words[0] = words[0].capitalize()
    if format_first_words and rng.random() < 0.6:
        words.insert(0, rng.choice(_FORMAT_FIRST_WORDS))
    return " ".join(words)


def random_template(rng: random.Random, format_first_words: bool = False):
    """A random item format: fixed phrases and punctuation around one or two slots. Returns a drawing function."""
    head = _phrase(rng, format_first_words) + rng.choice((" ", ": ", " (", " '"))
    slots = [_slot(rng) for _ in range(rng.choice((1, 1, 2)))]
    joiner = rng.choice((" ", ", ", " and ", " to ", ". ", " in "))
    close = {"(": ")", "'": "'"}.get(head[-1], "")
    ending = rng.choice(_ENDINGS)
    tail = (" " + _phrase(rng).lower()) if rng.random() < 0.3 else ""

    def draw(r: random.Random) -> str:
        return head + joiner.join(s(r) for s in slots) + close + tail + ending

    return draw


def _is_specific(text: str) -> bool:
    return any(fam.is_specific(text) for fam in TASKS.values())


def template_list_block(rng: random.Random, exclude: set[str], n: int = 10, format_first_words: bool = False) -> str:
    """`Here are {n} examples:` and `n` distinct items of one random template (none a specific input)."""
    while True:
        draw = random_template(rng, format_first_words)
        items: list[str] = []
        for _ in range(10 * n):
            item = draw(rng)
            if len(item) <= 80 and item not in items and item not in exclude and not _is_specific(item):
                items.append(item)
                if len(items) == n:
                    return "\n".join([f"Here are {n} examples:"] + [f"{i}. {x}" for i, x in enumerate(items, 1)])


_COPY_PUNCTUATION = list(".,:;?!()'\"-=+*/<>[]{}|#")


def _copy_token(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        return rng.choice(_TEMPLATE_WORDS)
    if kind < 0.55:
        return pseudo_word(rng, 1, 3)
    if kind < 0.7:
        return str(rng.randint(0, rng.choice((9, 99, 999))))
    if kind < 0.85:
        return rng.choice(string.ascii_letters)
    return rng.choice(_COPY_PUNCTUATION)


def copy_block(rng: random.Random) -> str:
    """A line of random text (words, pseudo-words, numbers, letters, punctuation) written 2-4 times: nothing but
    the context predicts its repeats, so a base learns to copy (induction), which stage 3's format copying needs."""
    tokens = [_copy_token(rng) for _ in range(rng.randint(4, 24))]
    line = "".join(t if i == 0 or rng.random() < 0.2 else " " + t for i, t in enumerate(tokens))
    return "\n".join([line] * rng.randint(2, 4))


def pretraining_corpus(num_chars: int, seed: int = 0, template_share: float = 0.4,
                       format_first_words: bool = False, copy_share: float = 0.0) -> list[str]:
    """The package's generic corpus (qa/list/filler) plus documents of random-template lists and of copied
    random lines (`copy_share` of the characters), shuffled."""
    exclude = set()
    for name in TASKS:
        task = make_task(name, seed=seed)
        exclude.update(s["input"] for s in task.train + task.test)
    docs = generic_corpus(num_chars=int(num_chars * (1 - template_share - copy_share)), seed=seed,
                          exclude=exclude, weights=(0.5, 0.3, 0.2))
    rng = random.Random(f"template_lists:{seed}")
    total = 0
    while total < num_chars * template_share:
        doc = "\n\n".join(template_list_block(rng, exclude, format_first_words=format_first_words)
                          for _ in range(rng.randint(1, 3)))
        docs.append(doc)
        total += len(doc)
    total = 0
    while total < num_chars * copy_share:
        doc = "\n\n".join(copy_block(rng) for _ in range(rng.randint(1, 4)))
        docs.append(doc)
        total += len(doc)
    rng.shuffle(docs)
    return docs


# ---------------------------------------------------------------------------------------------------------------
# Models and training.


def build_base(spec: BaseSpec, tokenizer, max_positions: int, seed: int = 0):
    """`peft_transfer.worlds.tiny_models.build_model` with the spec's shapes; Gemma ties its embeddings, as the real Gemma models
    do (and it keeps the file small)."""
    family = TinyFamily(spec.name, spec.architecture, hidden_size=spec.hidden_size,
                        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
                        num_key_value_heads=spec.num_key_value_heads, intermediate_size=spec.intermediate_size,
                        vocab_size=spec.vocab_size, tokenizer_kind=spec.tokenizer_kind,
                        max_position_embeddings=max_positions, tie_word_embeddings=spec.architecture == "gemma",
                        extra={"head_dim": spec.head_dim})
    return build_model(family, tokenizer, seed=seed)


def pack(tokenizer, docs: list[str], seq_len: int) -> torch.Tensor:
    """All documents, each followed by EOS, concatenated and cut into `[num_blocks, seq_len]` blocks."""
    ids: list[int] = []
    for i in range(0, len(docs), 1000):
        for row in tokenizer(docs[i:i + 1000], add_special_tokens=False).input_ids:
            ids.extend(row)
            ids.append(tokenizer.eos_token_id)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def train(model, blocks: torch.Tensor, spec: BaseSpec, device: str, seed: int = 0, log_every: int = 50) -> dict:
    """AdamW, linear warm-up then cosine decay to 10%; returns the loss curve summary and the wall time."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, spec.steps // 20)

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext())
    model.train()
    order = torch.randperm(len(blocks), generator=gen)
    pos, start, recent, curve = 0, time.time(), [], []
    for step in range(spec.steps):
        if pos + spec.batch_size > len(order):
            order, pos = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[order[pos:pos + spec.batch_size]].to(device)
        pos += spec.batch_size
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        recent.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == spec.steps:
            mean = sum(recent) / len(recent)
            curve.append((step + 1, round(mean, 4)))
            tok_s = (step + 1) * spec.batch_size * blocks.shape[1] / (time.time() - start)
            print(f"[{spec.name}] step {step + 1}/{spec.steps} loss {mean:.3f} ({tok_s:,.0f} tokens/s)", flush=True)
            recent = []
    model.eval()
    return {"final_loss": curve[-1][1], "wall_s": round(time.time() - start, 1), "curve": curve,
            "epochs": round(spec.steps * spec.batch_size / len(blocks), 2)}


def save_base(model, tokenizer, path: str) -> None:
    os.makedirs(path, exist_ok=True)
    n_bytes = sum(p.numel() for p in model.parameters()) * 4
    # float32 when it fits in 8 MB, else bfloat16 (loading with dtype=torch.float32 upcasts).
    model = model.to(torch.float32 if n_bytes <= 8_000_000 else torch.bfloat16)
    save_family(model, tokenizer, path)
    model.to(torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Probes.


@torch.no_grad()
def format_copy_rate(model, tokenizer, task_name: str, *, num: int = 50, seed: int = 0, max_new_tokens: int = 48,
                     device: str = "cpu") -> dict:
    """Item 6 of the generator prompt with 5 specific seeds (temperature 1.0): how often it is well-formed
    (parsed the way stage 3 parses it) and how often it matches the family's `specific_pattern`."""
    task = make_task(task_name, seed=seed)
    seeds = [s["input"] for s in task.seeds]
    rng = random.Random(f"probe:{task_name}:{seed}")
    prompts = [generator_prompt(seeds, rng) for _ in range(num)]
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new = out[:, enc.input_ids.shape[1]:]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    finished = [(row == tokenizer.eos_token_id).any().item() for row in new]
    items = [parse_candidate(t, finished=f) for t, f in zip(texts, finished)]
    pattern = TASKS[task_name].specific_pattern
    match = [x is not None and re.fullmatch(pattern, x) is not None for x in items]
    novel = [m and x not in seeds for m, x in zip(match, items)]
    return {"parsed": sum(x is not None for x in items) / num, "format": sum(match) / num,
            "novel": sum(novel) / num, "examples": [x for x in items if x][:3]}


@torch.no_grad()
def copy_nll(model, tokenizer, *, num: int = 32, seed: int = 0, device: str = "cpu") -> dict:
    """Mean next-token loss (nats) over a random text line and over its verbatim repeat on the next line: a base
    that copies from its context (induction) predicts the repeat far better than the first occurrence."""
    rng = random.Random(f"copy_probe:{seed}")
    first, repeat = [], []
    for _ in range(num):
        line = copy_block(rng).split("\n")[0]
        a = tokenizer(line, add_special_tokens=False).input_ids
        b = tokenizer("\n" + line, add_special_tokens=False).input_ids
        ids = torch.tensor([[tokenizer.bos_token_id] + a + b], device=device)
        nll = -model(ids).logits[0, :-1].float().log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
        first.append(nll[: len(a)].mean().item())
        repeat.append(nll[len(a) + 1:].mean().item())  # from the repeat's second token on
    return {"first": sum(first) / num, "repeat": sum(repeat) / num}


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, task_name: str, *, num: int = 100, seed: int = 0, device: str = "cpu",
                       batch_size: int = 50) -> float:
    """Exact match of the greedy answer (cut at the first newline) to `"{input}\\nAnswer:"` on specific test inputs."""
    test = make_task(task_name, seed=seed).test[:num]
    tokenizer.padding_side = "left"
    correct = 0
    for i in range(0, len(test), batch_size):
        rows = test[i:i + batch_size]
        enc = tokenizer([f"{r['input']}\nAnswer:" for r in rows], return_tensors="pt", padding=True).to(device)
        out = model.generate(**enc, do_sample=False, max_new_tokens=16, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        for r, text in zip(rows, tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)):
            correct += text.split("\n")[0].strip() == r["target"]
    return correct / len(test)


def probe(path: str, tasks=PROBE_TASKS, device: str = "cpu") -> dict:
    """Probe every saved base under `path`; prints a table and returns `{base: {task: {...}}}`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = {}
    for name in sorted(os.listdir(path)):
        if not os.path.exists(os.path.join(path, name, "config.json")):
            continue
        model = AutoModelForCausalLM.from_pretrained(os.path.join(path, name), dtype=torch.float32).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(path, name))
        results[name] = {}
        copy = copy_nll(model, tokenizer, device=device)
        print(f"{name}: loss on a random line {copy['first']:.2f} nats/token, on its repeat {copy['repeat']:.2f}")
        for task in tasks:
            fc = format_copy_rate(model, tokenizer, task, device=device)
            acc = zero_shot_accuracy(model, tokenizer, task, device=device)
            results[name][task] = {**fc, "zero_shot": acc}
    print("\n| base | task | item 6 parsed | format copy | novel + format | zero-shot EM |")
    print("|---|---|---|---|---|---|")
    for name, per_task in results.items():
        for task, r in per_task.items():
            print(f"| {name} | {task} | {r['parsed']:.2f} | {r['format']:.2f} | {r['novel']:.2f} | {r['zero_shot']:.2f} |")
    for name, per_task in results.items():
        for task, r in per_task.items():
            print(f"{name} {task} examples: {r['examples']}")
    return results


# ---------------------------------------------------------------------------------------------------------------


def build_one(spec: BaseSpec, size_name: str, out: str, seed: int, device: str, threads: int,
              mixture: dict) -> dict:
    """Corpus, tokenizer, model, training and saving of one base; returns (and writes) its training report."""
    if device == "cpu":
        torch.set_num_threads(threads)
    size = SIZES[size_name]
    t0 = time.time()
    docs = pretraining_corpus(size["corpus_chars"], seed=seed, **mixture)
    tokenizer = build_tokenizer(spec.tokenizer_kind, spec.vocab_size, docs[:4000])  # ~3 MB: every format
    blocks = pack(tokenizer, docs, size["seq_len"])
    model = build_base(spec, tokenizer, max_positions=max(512, size["seq_len"]), seed=seed).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{spec.name}] {len(docs)} docs, {sum(map(len, docs)):,} chars, {blocks.numel():,} tokens "
          f"({sum(map(len, docs)) / blocks.numel():.2f} chars/token); {n_params:,} parameters, vocab "
          f"{len(tokenizer)}; prep {time.time() - t0:.0f} s", flush=True)
    stats = train(model, blocks, spec, device, seed=seed)
    path = os.path.join(out, spec.name)
    save_base(model, tokenizer, path)
    report = {"parameters": n_params, "vocab": len(tokenizer), "steps": spec.steps,
              "batch": f"{spec.batch_size} x {size['seq_len']} tokens", "lr": spec.lr, "threads": threads, **mixture,
              "corpus_tokens": blocks.numel(), **stats}
    print(json.dumps({k: v for k, v in report.items() if k != "curve"}), flush=True)
    with open(os.path.join(path, "pretraining.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def anneal_one(spec: BaseSpec, size_name: str, src: str, out: str, seed: int, device: str, threads: int,
               steps: int, lr: float, num_chars: int | None = None, template_share: float = 0.7,
               copy_share: float = 0.0) -> dict:
    """A second, list-heavy phase from a saved base: 70% random-template lists whose first words are those of the
    corpus's own formats, so that in-context copying has to win over a memorized format's first-word prior."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "cpu":
        torch.set_num_threads(threads)
    size = SIZES[size_name]
    docs = pretraining_corpus(num_chars or size["corpus_chars"] // 3, seed=seed + 1, template_share=template_share,
                              format_first_words=True, copy_share=copy_share)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(src, spec.name))
    model = AutoModelForCausalLM.from_pretrained(os.path.join(src, spec.name), dtype=torch.float32).to(device)
    blocks = pack(tokenizer, docs, size["seq_len"])
    stats = train(model, blocks, replace(spec, steps=steps, lr=lr), device, seed=seed + 1)
    path = os.path.join(out, spec.name)
    with open(os.path.join(src, spec.name, "pretraining.json")) as f:
        report = json.load(f)
    save_base(model, tokenizer, path)
    phase = {"steps": steps, "lr": lr, "template_share": template_share, "copy_share": copy_share,
             "corpus_tokens": blocks.numel(), **stats}
    report.setdefault("anneal_phases", []).append(phase)
    print(json.dumps({k: v for k, v in phase.items() if k != "curve"}), flush=True)
    with open(os.path.join(path, "pretraining.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="peft_transfer/demo_models")
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="build only these bases (names)")
    parser.add_argument("--steps", type=int, help="override the steps of every base (for measuring)")
    parser.add_argument("--template-share", type=float, default=MIXTURE["template_share"],
                        help="share of random-template lists in the main phase's corpus")
    parser.add_argument("--copy-share", type=float, default=MIXTURE["copy_share"],
                        help="share of copied random lines in the main phase's corpus")
    parser.add_argument("--probe-only", action="store_true")
    parser.add_argument("--anneal-from", help="skip the main phase: run the list-heavy phase on the bases saved here")
    parser.add_argument("--anneal-steps", type=int, default=0)
    parser.add_argument("--anneal-lr", type=float, default=1.5e-3)
    parser.add_argument("--anneal-chars", type=int, help="corpus size of the list-heavy phase (default: a third of the main phase's)")
    parser.add_argument("--anneal-template-share", type=float, default=0.7)
    parser.add_argument("--anneal-copy-share", type=float, default=0.0)
    parser.add_argument("--no-probe", action="store_true")
    args = parser.parse_args(argv)
    if args.anneal_from and args.anneal_steps <= 0:
        parser.error("--anneal-from needs --anneal-steps > 0.")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = SIZES[args.size]
    specs = [s for s in size["bases"] if not args.only or s.name in args.only]
    mixture = dict(template_share=args.template_share, copy_share=args.copy_share)
    for spec in specs:
        spec.steps = args.steps or spec.steps
    if args.anneal_from:
        for spec in specs:
            anneal_one(spec, args.size, args.anneal_from, args.out, args.seed, device, 1 if device == "cpu" else 0,
                       args.anneal_steps, args.anneal_lr, args.anneal_chars, args.anneal_template_share,
                       args.anneal_copy_share)
    elif not args.probe_only:
        os.makedirs(args.out, exist_ok=True)
        if device == "cpu" and len(specs) > 1 and (os.cpu_count() or 1) >= len(specs):
            # One single-threaded process per base: two-thread processes on two shared cores stall each other in
            # OpenMP barriers (measured: 15x slower per step when another job holds a core), one thread each does not.
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(len(specs)) as pool:
                pool.starmap(build_one, [(spec, args.size, args.out, args.seed, device, 1, mixture) for spec in specs])
        else:
            for spec in specs:
                build_one(spec, args.size, args.out, args.seed, device, min(2, os.cpu_count() or 1), mixture)
    if device == "cpu":
        torch.set_num_threads(1)  # generation of tiny models gains little from a second thread, and may stall
    if not args.no_probe:
        t0 = time.time()
        probe(args.out, device=device)
        print(f"probes: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
