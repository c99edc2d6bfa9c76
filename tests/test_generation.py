"""Batched generation (`peft_transfer.generation.generate`): each distinct prompt of a batch read once, the rows that
have ended leaving the batch, and the continuations those of one `model.generate` call over the batch."""

import os
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_transfer import generation
from peft_transfer.data import generator_prompt, generator_stop_strings
from peft_transfer.worlds.tiny_models import DEMO_MODELS

SEEDS = ["Sort these letters: q d k", "Sort these letters: m a z f", "Sort these letters: b y", "Sort these letters: e"]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma"])
def tiny_lm(request):
    path = os.path.join(DEMO_MODELS, request.param)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def one_call(model, tokenizer, prompts, **kwargs):
    """What one `model.generate` call over the whole batch gives each prompt (transformers' own stop strings)."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=False, pad_token_id=tokenizer.pad_token_id, tokenizer=tokenizer, **kwargs)
    return [tokenizer.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]


def test_continuations_are_those_of_one_generate_call_with_repeated_prompts_read_once_and_ended_rows_leaving(
        tiny_lm, monkeypatch):
    model, tokenizer = tiny_lm
    rng = random.Random(0)
    # Three of four seeds per prompt: 24 orders, so the 40 prompts repeat (as the paper's 5 seeds of 5 do).
    prompts = [generator_prompt(SEEDS, rng, 3) for _ in range(40)]
    stop = generator_stop_strings(SEEDS, 3)
    calls, prefills = [], []
    real_generate, real_prefill = model.generate, generation.shared_prefill

    def spy_generate(**kwargs):
        calls.append((kwargs["input_ids"].shape[0], kwargs["max_new_tokens"], "cache" in kwargs))
        return real_generate(**kwargs)

    def spy_prefill(m, enc, prompt_cache=None):
        out = real_prefill(m, enc, prompt_cache)
        prefills.append((enc["input_ids"].shape[0], None if out is None else out[0].get_seq_length()))
        return out

    monkeypatch.setattr(model, "generate", spy_generate)
    monkeypatch.setattr(generation, "shared_prefill", spy_prefill)
    monkeypatch.setattr(generation, "SEGMENT_TOKENS", 3)  # these items end after 9 to 13 tokens
    got = generation.generate(model, tokenizer, prompts, batch_size=40, max_new_tokens=24, stop_strings=stop)
    monkeypatch.setattr(model, "generate", real_generate)

    want = one_call(model, tokenizer, prompts, max_new_tokens=24, stop_strings=stop)
    assert [text for text, _ in got] == want
    assert all(ended for text, ended in got if any(s in text for s in stop))
    # One batch: its distinct prompts read once (all but the last token), then 3 tokens at a time.
    assert len(prefills) == 1 and prefills[0][1] is not None
    padded = tokenizer(prompts, padding=True, return_tensors="pt")["input_ids"].shape[1]
    assert prefills[0][1] == padded - 1
    assert calls[0] == (40, 3, True) and all(step == 3 for _, step, _ in calls)
    # Rows that have ended leave: later calls carry fewer rows, each going on from the cache of the one before.
    rows = [n for n, _, _ in calls]
    assert rows == sorted(rows, reverse=True) and rows[-1] < 40 and all(has_cache for _, _, has_cache in calls)


def read_widths(model):
    """The `(batch, length)` of every forward pass of `model` while the context is open."""
    widths = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda m, a: widths.append(tuple(a[0].shape)))
    return widths, hook


def test_distinct_prompts_read_their_shared_opening_once_and_continue_as_one_generate_call(tiny_lm, monkeypatch):
    model, tokenizer = tiny_lm
    # A chat template's kind of opening, then each prompt's own tokens (of different lengths: left padding).
    opening = "System: you sort the letters you are given, in alphabetical order.\nUser: Sort these letters:"
    prompts = [f"{opening} {' '.join('qdkmazfbye'[i:i + n])}\nAssistant:" for i, n in ((0, 3), (2, 6), (4, 2), (1, 4))]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    rows = [tokenizer(p)["input_ids"] for p in prompts]
    shared = next(j for j in range(min(map(len, rows))) if len({r[j] for r in rows}) > 1)
    assert shared >= 10
    widths, hook = read_widths(model)
    try:
        cache, ids, mask = generation.shared_prefill(model, enc)
    finally:
        hook.remove()
    width = enc["input_ids"].shape[1]
    assert widths == [(1, shared), (4, width - 1 - shared)]  # the opening once, then each prompt's own tokens
    assert cache.get_seq_length() == width - 1
    for i, r in enumerate(rows):  # [opening, padding, own tokens]: the padding moved behind the opening
        assert ids[i, mask[i] == 1].tolist() == r
        assert mask[i].tolist() == [1] * shared + [0] * (width - len(r)) + [1] * (len(r) - shared)

    monkeypatch.setattr(generation, "SEGMENT_TOKENS", 3)
    got = generation.generate(model, tokenizer, prompts, batch_size=4, max_new_tokens=12)
    assert [text for text, _ in got] == one_call(model, tokenizer, prompts, max_new_tokens=12)
    for (text, _), prompt in zip(got, prompts):  # and what each prompt gets alone
        assert text == one_call(model, tokenizer, [prompt], max_new_tokens=12)[0]


def test_a_prompt_cache_reads_each_prompt_once_across_calls_and_gives_the_same_continuations(tiny_lm):
    model, tokenizer = tiny_lm
    rng = random.Random(1)
    rounds = [[generator_prompt(SEEDS, rng, 3) for _ in range(12)] for _ in range(3)]  # 24 orders: rounds overlap
    kwargs = dict(batch_size=8, max_new_tokens=16, stop_strings=generator_stop_strings(SEEDS, 3), show_progress=False)
    store = generation.PromptCache()
    widths, hook = read_widths(model)
    try:
        got = [generation.generate(model, tokenizer, prompts, prompt_cache=store, **kwargs) for prompts in rounds]
    finally:
        hook.remove()
    for prompts, texts in zip(rounds, got):
        assert texts == generation.generate(model, tokenizer, prompts, **kwargs)
    distinct = {p for prompts in rounds for p in prompts}
    assert store.reads == len(distinct) == len(store.entries)  # each prompt read once over the three calls
    assert store.hits > 0
    # Forward passes wider than one token read prompts: one per batch that had a prompt not read before, at most.
    batches = sum(-(-len(set(prompts)) // 8) for prompts in rounds)
    assert sum(w > 1 for _, w in widths) <= 2 * batches
    # A cache too small for every prompt forgets the oldest, and the continuations stay the same.
    small = generation.PromptCache(max_bytes=2 * max(sum(k.nbytes + v.nbytes for k, v in layers)
                                                     for layers in store.entries.values()))
    again = [generation.generate(model, tokenizer, prompts, prompt_cache=small, **kwargs) for prompts in rounds]
    assert again == got and len(small.entries) <= 2 and small.reads > len(distinct)


def test_distinct_prompts_without_an_opening_and_models_that_cannot_start_from_a_cache_take_one_call(
        tiny_lm, monkeypatch):
    from peft import PromptTuningConfig, get_peft_model

    model, tokenizer = tiny_lm
    prompts = [f"{w} these letters: {' '.join('abcdefgh'[i:i + 3])}\n" for i, w in enumerate(("Sort", "Order", "Rank"))]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    assert generation.shared_prefill(model, enc) is None  # nothing repeats, no opening in common

    fresh = AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=torch.float32)
    tuned = get_peft_model(fresh, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    assert not generation._reads_a_ready_cache(tuned)
    repeated = prompts[:2] * 3
    assert generation.shared_prefill(tuned, tokenizer(repeated, return_tensors="pt", padding=True)) is None
    calls = []
    real_generate = tuned.generate
    monkeypatch.setattr(tuned, "generate", lambda **kw: calls.append(kw["max_new_tokens"]) or real_generate(**kw))
    got = generation.generate(tuned, tokenizer, repeated, batch_size=8, max_new_tokens=20)
    assert calls == [20] and len(got) == 6
    assert got[0] == got[2] == got[4]  # greedy: a prompt asked three times gets the same answer


def test_logits_at_reads_the_shared_opening_once_and_gives_each_rows_own_logits(tiny_lm):
    model, tokenizer = tiny_lm
    texts = [f"Sort these letters: {' '.join('qdkmazfbye'[i:i + n])}\nAnswer:" for i, n in ((0, 3), (2, 5), (4, 2))]
    rows = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((3, width), tokenizer.pad_token_id)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    shared = next(j for j in range(width) if len({r[j] for r in rows}) > 1)
    assert shared >= 3
    positions = [[len(r) - 1] if i != 1 else [shared, len(r) - 2, len(r) - 1] for i, r in enumerate(rows)]
    widths = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda m, a: widths.append(tuple(a[0].shape)))
    try:
        got = generation.logits_at(model, ids, mask, positions)
    finally:
        hook.remove()
    assert widths == [(1, shared), (3, width - shared)]  # the opening once, then each row's own tokens
    for row, (r, p) in enumerate(zip(rows, positions)):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([r])).logits[0, p].float()
        assert got[row].shape == alone.shape
        torch.testing.assert_close(got[row], alone, rtol=1e-4, atol=1e-4)
    # A position inside the opening: the prefix read once stops before it.
    widths.clear()
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda m, a: widths.append(tuple(a[0].shape)))
    try:
        early = generation.logits_at(model, ids, mask, [[1], [shared - 1], [2]])
    finally:
        hook.remove()
    assert widths == [(3, width)]  # a prefix of 1 token is not worth a copy: every row read whole
    with torch.no_grad():
        torch.testing.assert_close(early[1], model(input_ids=torch.tensor([rows[1]])).logits[0, [shared - 1]].float(),
                                   rtol=1e-4, atol=1e-4)


def test_logits_at_reads_the_real_positions_behind_a_prompt_learning_adapters_virtual_tokens(tiny_lm):
    from peft import PromptTuningConfig, get_peft_model

    model, tokenizer = tiny_lm
    fresh = AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=torch.float32)
    tuned = get_peft_model(fresh, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    texts = ["Sort these letters: q d k\nAnswer:", "Sort these letters: m a\nAnswer:"]
    enc = tokenizer(texts, return_tensors="pt", padding="longest", padding_side="right")
    with torch.no_grad():
        full = tuned(**enc).logits
    length = enc["input_ids"].shape[1]
    assert full.shape[1] == length + 4  # the virtual tokens come first
    lengths = enc["attention_mask"].sum(1).tolist()
    positions = [[n - 3, n - 1] for n in lengths]
    got = generation.logits_at(tuned, enc["input_ids"], enc["attention_mask"], positions)
    for row, p in enumerate(positions):
        torch.testing.assert_close(got[row], full[row, [4 + q for q in p]].float())
