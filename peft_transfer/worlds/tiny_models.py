"""Tiny local model families and the demo's assets, for tests and the demo.

No test or demo may download weights, so this module *builds* two small model families that differ the way real
transfer pairs do: a Llama-style model with a byte-level BPE tokenizer and a Gemma-style model with a
differently trained Metaspace BPE tokenizer (different vocabularies, different ids). Both are saved with
`save_pretrained` and are meant to be loaded back through the ordinary `from_pretrained` path that a Hub id takes.

`pretrain_steps` optionally trains a base on the generic corpus of `peft_transfer.worlds.corpus` (filler text, numbered
lists and question/answer demos of *generic* task variants) so that it can continue a numbered list and has some
partial skill, the way a real pretrained base does. The tasks themselves live in `peft_transfer.worlds.tasks`.
"""

from __future__ import annotations

import json
import os
import random
import string
from dataclasses import dataclass, field

import torch

DEMO_TASK = "sort_letters"  # a family of `peft_transfer.worlds.tasks`
DEMO_MODELS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "demo_models")  # committed, pretrained bases (if present)

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
    tie_word_embeddings: bool = False
    extra: dict = field(default_factory=dict)  # more config fields (e.g. head_dim)


FAMILIES = {
    "tiny-llama": TinyFamily("tiny-llama", "llama", hidden_size=64, num_hidden_layers=2, vocab_size=384),
    "tiny-gemma": TinyFamily(
        "tiny-gemma", "gemma", hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=192, vocab_size=448, tokenizer_kind="metaspace_bpe", extra={"head_dim": 24},
    ),
    # tiny-llama with head size 32, the smallest that vLLM's CPU attention takes (the vLLM backend's tests).
    "tiny-llama-hd32": TinyFamily("tiny-llama-hd32", "llama", hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=2, vocab_size=384),
}


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
        tie_word_embeddings=family.tie_word_embeddings,
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
    """Build (and optionally pretrain) one tiny family on the generic corpus; saves it under `path`, returns `path`."""
    from .corpus import generic_corpus

    family = FAMILIES[name]
    docs = generic_corpus(num_docs=num_docs, seed=seed, doc_chars=300)
    tokenizer = build_tokenizer(family.tokenizer_kind, family.vocab_size, docs)
    model = build_model(family, tokenizer, seed=seed)
    if pretrain_steps:
        pretrain(model, tokenizer, docs, steps=pretrain_steps, seed=seed)
    return save_family(model, tokenizer, path)


def save_family(model, tokenizer, path: str) -> str:
    """`save_pretrained` of model (safetensors) and tokenizer, loadable by every transformers 5.x release."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    # Name the portable class: releases differ in the class name they write for a locally trained tokenizer.
    cfg_path = os.path.join(path, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):  # how this copy was loaded (transformers 5.23), not a setting
        cfg.pop(key, None)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def build_demo_assets(folder: str, *, pretrain_steps: int = 300, seed: int = 0, task: str = DEMO_TASK) -> dict:
    """The demo's models and task files.

    The bases are the committed pretrained ones in `peft_transfer/demo_models/` when they are there; otherwise both
    families are built and pretrained for `pretrain_steps` under `folder`. The task's train, test and seed files
    are written under `folder/task` (skipped when they exist).

    Returns:
        `dict`: paths keyed `source_model`, `target_model`, `train_file`, `eval_file`, `seed_file`, and the task's
        `task_name`.
    """
    from .tasks import TASKS, make_task

    paths = {key: demo_base(name, folder, pretrain_steps=pretrain_steps, seed=seed)
             for key, name in (("source_model", "tiny-llama"), ("target_model", "tiny-gemma"))}
    task_dir = os.path.join(folder, "task")
    if os.path.exists(os.path.join(task_dir, "seeds.jsonl")):
        return {**paths, **task_paths(task_dir), "task_name": TASKS[task].description}
    return {**paths, **task_files(make_task(task, seed=seed), task_dir)}


def demo_base(name: str, folder: str, *, pretrain_steps: int, seed: int = 0) -> str:
    """The committed pretrained base `name` when it is there, else one built and pretrained under `folder/name`."""
    committed = os.path.join(DEMO_MODELS, name)
    if os.path.exists(os.path.join(committed, "config.json")):
        return committed
    path = os.path.join(folder, name)
    if not os.path.exists(os.path.join(path, "config.json")):
        build_family(name, path, pretrain_steps=pretrain_steps, seed=seed)
    return path


def task_paths(folder: str) -> dict:
    """The `train_file`, `eval_file` and `seed_file` settings of a task folder written by `tasks.write_task`."""
    return {key: os.path.join(folder, f"{split}.jsonl")
            for key, split in (("train_file", "train"), ("eval_file", "test"), ("seed_file", "seeds"))}


def task_files(task, folder: str) -> dict:
    """Write `task` (a `tasks.Task`) under `folder`; returns its file settings and `task_name`."""
    from .tasks import write_task

    write_task(task, folder)
    return {**task_paths(str(folder)), "task_name": task.description}
