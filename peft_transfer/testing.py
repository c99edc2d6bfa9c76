"""Tiny local model families and a built-in task, for tests and the demo.

No test or demo may download weights, so this module *builds* two small model families that differ the way real
transfer pairs do: a Llama-style model with a byte-level BPE tokenizer and a Gemma-style model with a
differently trained Metaspace BPE tokenizer (different vocabularies, different ids). Both are saved with
`save_pretrained` and are meant to be loaded back through the ordinary `from_pretrained` path that a Hub id takes.

`pretrain_steps` optionally trains a base on a generated generic corpus (filler text, numbered lists of inputs and
question/answer demos of *generic* variants of the demo task) so that it can continue a numbered list and has some
partial skill, the way a real pretrained base does.
"""

from __future__ import annotations

import json
import os
import random
import string
from dataclasses import dataclass, field

import torch

DEMO_TASK_NAME = "letter sorting"
_WORDS = (
    "the a model data task input answer small large river stone light quick blue green cold warm city road "
    "paper window morning evening garden number letter story question simple clear open close early late"
).split()


@dataclass
class TinyFamily:
    """How to build one tiny model family."""

    name: str
    architecture: str  # "llama" or "gemma"
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 384
    tokenizer_kind: str = "byte_bpe"  # "byte_bpe" or "metaspace_bpe"
    max_position_embeddings: int = 512
    extra: dict = field(default_factory=dict)


FAMILIES = {
    "tiny-llama": TinyFamily("tiny-llama", "llama", hidden_size=64, num_hidden_layers=2, vocab_size=384),
    "tiny-gemma": TinyFamily(
        "tiny-gemma", "gemma", hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=192, vocab_size=448, tokenizer_kind="metaspace_bpe", extra={"head_dim": 24},
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# The built-in task: sort the letters of a short word. The "specific" format (what real task inputs look like) is
# `Sort the letters: dbca`; generic variants of the skill in other phrasings go into the pretraining corpus.


def demo_example(rng: random.Random) -> dict:
    n = rng.randint(3, 5)
    letters = "".join(rng.choice("abcdefghij") for _ in range(n))
    return {"input": f"Sort the letters: {letters}", "target": "".join(sorted(letters))}


def demo_task(n_train: int = 250, n_test: int = 100, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint train and test examples of the built-in task (`{"input", "target"}` dicts)."""
    rng = random.Random(seed)
    seen, train, test = set(), [], []
    while len(train) < n_train or len(test) < n_test:
        ex = demo_example(rng)
        if ex["input"] in seen:
            continue
        seen.add(ex["input"])
        (train if len(train) < n_train else test).append(ex)
    return train, test


def _generic_item(rng: random.Random) -> tuple[str, str]:
    """A generic question/answer pair of some skill (never the specific demo format)."""
    kind = rng.randrange(4)
    letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
    if kind == 0:
        return f"Put in order: {' '.join(letters)}", " ".join(sorted(letters))
    if kind == 1:
        return f"Reverse the word {letters}", letters[::-1]
    if kind == 2:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return f"What is {a} plus {b}?", str(a + b)
    return f"Uppercase: {letters}", letters.upper()


def _filler(rng: random.Random, n_words: int = 12) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words)).capitalize() + "."


def generic_corpus(num_docs: int, seed: int = 0) -> list[str]:
    """Documents for pretraining the tiny bases: filler, numbered lists and generic Q/A demos."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        kind = rng.randrange(3)
        if kind == 0:
            docs.append(" ".join(_filler(rng, rng.randint(6, 14)) for _ in range(2)))
        elif kind == 1:
            make = rng.choice([lambda: _generic_item(rng)[0], lambda: _filler(rng, rng.randint(3, 6))])
            items = [make() for _ in range(rng.randint(3, 7))]
            docs.append("Here are 10 examples:\n" + "\n".join(f"{i + 1}. {x}" for i, x in enumerate(items)))
        else:
            q, a = _generic_item(rng)
            docs.append(f"{q}\nAnswer: {a}")
    return docs


# ----------------------------------------------------------------------------------------------------------------
# Building and saving.


def build_tokenizer(kind: str, vocab_size: int, corpus: list[str]):
    """Train a BPE tokenizer locally and wrap it as a `transformers` fast tokenizer (with pad/bos/eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    if kind == "byte_bpe":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "metaspace_bpe":
        # Split digits and punctuation too, so this vocabulary differs from the byte-level one in more than ids.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(prepend_scheme="never", split=True), pre_tokenizers.Digits(individual_digits=True)]
        )
        tok.decoder = decoders.Metaspace(prepend_scheme="never", split=True)
        alphabet = sorted(set("".join(corpus)) | set(string.printable))
    else:
        raise ValueError(f"Unknown tokenizer kind {kind!r}: use 'byte_bpe' or 'metaspace_bpe'.")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_model(family: TinyFamily, tokenizer, seed: int = 0):
    from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    common = dict(
        hidden_size=family.hidden_size,
        num_hidden_layers=family.num_hidden_layers,
        num_attention_heads=family.num_attention_heads,
        num_key_value_heads=family.num_key_value_heads,
        intermediate_size=family.intermediate_size,
        vocab_size=len(tokenizer),
        max_position_embeddings=family.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **family.extra,
    )
    if family.architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if family.architecture == "gemma":
        return GemmaForCausalLM(GemmaConfig(**common))
    raise ValueError(f"Unknown architecture {family.architecture!r}.")


def pretrain(model, tokenizer, docs: list[str], *, steps: int, batch_size: int = 16, lr: float = 3e-3, seed: int = 0):
    """Full-parameter causal-LM training on `docs` (a plain loop: the bases are tiny)."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    model.train()
    for _ in range(steps):
        batch = [d + tokenizer.eos_token for d in rng.sample(docs, batch_size)]
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=256)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return model


def build_family(name: str, path: str, *, pretrain_steps: int = 0, seed: int = 0, num_docs: int = 4000) -> str:
    """Build (and optionally pretrain) one tiny family and save it under `path`; returns `path`."""
    family = FAMILIES[name]
    docs = generic_corpus(num_docs, seed=seed)
    task_train, _ = demo_task(n_train=50, n_test=0, seed=seed + 1000)
    # The tokenizer sees task-like text so that its merges are sensible, as a real tokenizer would.
    tokenizer = build_tokenizer(family.tokenizer_kind, family.vocab_size, docs + [e["input"] for e in task_train])
    model = build_model(family, tokenizer, seed=seed)
    if pretrain_steps:
        pretrain(model, tokenizer, docs, steps=pretrain_steps, seed=seed)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    # Name the portable class so that older transformers 5.x releases load the tokenizer too.
    cfg_path = os.path.join(path, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def write_jsonl(path: str, rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def build_demo_assets(folder: str, *, pretrain_steps: int = 300, seed: int = 0) -> dict:
    """Build both families and the built-in task's files under `folder` (skipping what already exists).

    Returns:
        `dict`: paths keyed `source_model`, `target_model`, `train_file`, `eval_file`, `seed_file`.
    """
    paths = {
        "source_model": os.path.join(folder, "tiny-llama"),
        "target_model": os.path.join(folder, "tiny-gemma"),
        "train_file": os.path.join(folder, "task", "train.jsonl"),
        "eval_file": os.path.join(folder, "task", "test.jsonl"),
        "seed_file": os.path.join(folder, "task", "seeds.jsonl"),
    }
    for key, name in (("source_model", "tiny-llama"), ("target_model", "tiny-gemma")):
        if not os.path.exists(os.path.join(paths[key], "config.json")):
            build_family(name, paths[key], pretrain_steps=pretrain_steps, seed=seed)
    if not os.path.exists(paths["seed_file"]):
        train, test = demo_task(seed=seed)
        write_jsonl(paths["train_file"], train)
        write_jsonl(paths["eval_file"], test)
        write_jsonl(paths["seed_file"], train[:5])
    return paths
