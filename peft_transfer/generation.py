"""Batched generation, shared by candidate synthesis, teacher labelling and evaluation.

The paper generated one candidate at a time; on a GPU a decode step costs about the same for 1 row as for 256
(DESIGN §5), so everything here is batched. Prompts are sorted by length before batching so that rows of a batch
need little left padding, and stop strings end each row as soon as its item or answer is complete. Equal prompts
are sorted next to each other and their prompt is read once a batch (`shared_prefill`): with the paper's 5 seeds
every synthesis prompt is one of their 120 orders, and self-consistency asks the teacher the same prompt k times.
The opening all prompts of a batch share (a chat template's system turn) is read once as well.
"""

from __future__ import annotations

import collections
import contextlib
import inspect

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria

_multinomial = torch.multinomial


def inverse_cdf_multinomial(probs: torch.Tensor, num_samples: int = 1, replacement: bool = False, *,
                            generator=None, out=None) -> torch.Tensor:
    """`torch.multinomial(probs, 1)` for a `(batch, vocab)` tensor by inverse-CDF sampling: one uniform draw per row
    against the row's cumulative sum. The same distribution (a different random stream) as torch's, which on CPU
    draws one exponential per vocabulary entry (the exponential race): for Gemma's 262k-entry vocabulary at batch
    32 that draw took 0.35 s per decode step here, a third of the generation time; the cumulative sum takes a few
    ms. Anything else (more samples, 1-D input, `out=`) goes to torch's own."""
    if num_samples != 1 or probs.dim() != 2 or out is not None:
        return _multinomial(probs, num_samples, replacement, generator=generator, out=out)
    cdf = probs.float().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, device=probs.device, generator=generator) * cdf[:, -1:]
    # The first entry whose cumulative sum exceeds u: entries of probability 0 are never picked.
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[1] - 1)


@contextlib.contextmanager
def cpu_sampling(device: torch.device):
    """Sample with `inverse_cdf_multinomial` inside `model.generate` on CPU (transformers calls `torch.multinomial`
    once per decode step); CUDA keeps torch's, which is fast there."""
    if torch.device(device).type != "cpu":
        yield
        return
    torch.multinomial = inverse_cdf_multinomial
    try:
        yield
    finally:
        torch.multinomial = _multinomial


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_strings: list[str] | None = None,
    desc: str | None = None,
    show_progress: bool = True,
    prompt_cache: PromptCache | None = None,
) -> list[tuple[str, bool]]:
    """Continue every prompt.

    Args:
        model (`PreTrainedModel` or `PeftModel`): a causal LM, in eval mode.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer; needs a pad token.
        prompts (`list[str]`): the prompts, as text (special tokens such as BOS are added by the tokenizer).
        stop_strings (`list[str]`, *optional*): a row ends once its continuation contains one of them.
        prompt_cache (`PromptCache`, *optional*): the prompts `model` read in earlier calls; those asked again are
            not read again, and the others are kept in it.

    Returns:
        `list[tuple[str, bool]]`: per prompt, in the given order, the decoded continuation (special tokens removed)
        and whether it ended by itself (end of sequence or a stop string) rather than at `max_new_tokens`.

    `model` may also be a `vllm_server.VLLMModel` (`generation_backend: vllm`): the prompts are then sent to its
    server, `batch_size` of them in flight at once, and the answers mean the same.
    """
    from .vllm_server import VLLMModel

    if isinstance(model, VLLMModel):
        return _generate_vllm(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                              do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k,
                              stop_strings=stop_strings, desc=desc, show_progress=show_progress)
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"The tokenizer of {getattr(model, 'name_or_path', 'the model')!r} has no pad token, which batched "
            "generation needs: set `tokenizer.pad_token = tokenizer.eos_token` (or add a pad token) before the transfer."
        )
    from .modeling import prepare_output_layer

    prepare_output_layer(model)  # models not loaded by `load_base` (a callback's, a user's)
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i]))
    results: list[tuple[str, bool] | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    eos_ids = _eos_ids(model, tokenizer)
    sampling = dict(do_sample=do_sample)
    if do_sample:
        sampling.update(temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        # Greedy: clear sampling defaults a model's generation_config may carry, so no warning is raised.
        sampling.update(temperature=None, top_p=None, top_k=None)
    # Built once: transformers builds it from `stop_strings` in every call (a second for a 262k vocabulary).
    stopping = StoppingCriteriaList([StopStringCriteria(tokenizer, stop_strings)]) if stop_strings else None

    def ended(ids: list[int]) -> bool:  # by itself: an end-of-sequence token, or a stop string in the text
        if any(t in eos_ids for t in ids):
            return True
        return bool(stop_strings) and any(s in tokenizer.decode(ids, skip_special_tokens=True) for s in stop_strings)

    bar = tqdm(total=len(prompts), desc=desc, disable=not show_progress or desc is None, leave=False)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            with cpu_sampling(device) if do_sample else contextlib.nullcontext():
                continuations = _decode(model, enc, max_new_tokens, ended=ended, stopping=stopping,
                                        prompt_cache=prompt_cache,
                                        pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids, **sampling)
            for ids, i in zip(continuations, idx):
                results[i] = (tokenizer.decode(ids, skip_special_tokens=True), ended(ids))
            bar.update(len(idx))
    finally:
        bar.close()
        tokenizer.padding_side = old_side
        model.train(was_training)
    return results


# Tokens decoded before the rows that have ended leave the batch (`_decode`).
SEGMENT_TOKENS = 8


def _decode(model, enc, max_new_tokens: int, *, ended, stopping, prompt_cache=None,
            **generate_kwargs) -> list[list[int]]:
    """The new token ids of every row of a batch, `max_new_tokens` at most. `model.generate` keeps a row that has
    ended in the batch until the last one ends; here it decodes `SEGMENT_TOKENS` at a time, and the rows still going
    carry on from the cache without those that have ended (`ended(new ids)`), so a batch pays for its long rows only
    with them. The tokens are those one call would give: the same sampling and stop strings, only without the padding
    after a row's end."""
    ids, mask, cache = enc["input_ids"], enc["attention_mask"], None
    prefilled = shared_prefill(model, enc, prompt_cache)
    if prefilled is not None:
        cache, ids, mask = prefilled
    ready = _reads_a_ready_cache(model) and set(enc) == {"input_ids", "attention_mask"}
    rows = list(range(ids.shape[0]))  # the batch rows still decoding
    new: list[list[int]] = [[] for _ in rows]
    left = max_new_tokens
    while True:
        step = min(left, SEGMENT_TOKENS) if ready else left
        out = model.generate(input_ids=ids, attention_mask=mask, **({"cache": cache} if cache is not None else {}),
                             **({k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}),
                             max_new_tokens=step, stopping_criteria=stopping, return_dict_in_generate=True,
                             **generate_kwargs)
        sequences = out.sequences
        added = sequences[:, ids.shape[1]:]
        left -= added.shape[1]
        going = []
        for r, row in enumerate(rows):
            new[row].extend(added[r].tolist())
            # A row generate has ended is padded from then on (its stop string may also span the prompt).
            if not ended(new[row]) and new[row][-1] != generate_kwargs["pad_token_id"]:
                going.append(r)
        if not going or left <= 0 or added.shape[1] < step:
            return new
        keep = torch.tensor(going, device=ids.device)
        cache = out.cache
        cache.batch_select_indices(keep)
        ids = sequences[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], added.shape[1])], 1)[keep]
        rows = [rows[r] for r in going]


def _reads_a_ready_cache(model) -> bool:
    """Whether `model.generate` can start from a cache made outside it: a decoder-only model with transformers'
    default (dynamic) cache that can keep the output layer to the last position, without a prompt-learning adapter
    (whose virtual tokens generate puts in front of the prompt itself); `_decode` and `shared_prefill` need it."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or config.is_encoder_decoder or not hasattr(base, "_supports_default_dynamic_cache"):
        return False
    if not base._supports_default_dynamic_cache() or base.generation_config.cache_implementation is not None:
        return False
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return False
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    # Full or sliding-window attention layers only: their rows are copied by `batch_select_indices`, where the state
    # of linear-attention or other layers is not copied the same way.
    layers = DynamicCache(config=config.get_text_config(decoder=True)).layers
    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


class PromptCache:
    """The keys and values of the prompts one model has read, kept across `generate` calls (`prompt_cache=`), so that
    a prompt asked again is not read again: a synthesis's rounds draw their prompts from the same orders of the seeds
    (120 for the paper's 5), each round most of them. The prompts used least recently leave beyond `max_bytes`."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self.entries: collections.OrderedDict[tuple, list] = collections.OrderedDict()
        self.bytes = 0
        self.hits = self.reads = 0  # prompts found here / read by the model

    def get(self, key: tuple):
        layers = self.entries.get(key)
        if layers is not None:
            self.entries.move_to_end(key)
        return layers

    def put(self, key: tuple, layers: list) -> None:
        size = sum(k.nbytes + v.nbytes for k, v in layers)
        if key in self.entries or size > self.max_bytes:
            return
        self.entries[key] = layers
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= sum(k.nbytes + v.nbytes for k, v in old)


@torch.no_grad()
def shared_prefill(model, enc, prompt_cache: PromptCache | None = None):
    """A left-padded batch's cache read with less work, and the batch laid out as that cache needs it:
    `(cache, input_ids, attention_mask)` for `generate` to go on from (it reads only each row's last prompt token),
    or None where there is nothing to save or the model cannot start from a ready cache (`_reads_a_ready_cache`).

    - Each distinct prompt is read once, its keys and values copied to every row that asks it (each row still samples
      its own continuation): with the paper's 5 seeds every synthesis prompt is one of their 120 orders, and
      self-consistency asks the teacher the same prompt k times.
    - The opening all prompts begin with (a chat template's system turn, the numbered list's heading) is read once at
      batch 1 and copied to every distinct prompt, which then reads only its own tokens. Its row is laid out as
      `[opening, padding, own tokens]`: the left padding moves behind the opening, a hole in the attention mask, and
      the positions count real tokens only, as `generate` counts them for left padding.
    - With a `prompt_cache`, a prompt read in an earlier call is taken from it; only the others are read (and kept).
    """
    ids, mask = enc["input_ids"], enc.get("attention_mask")
    if ids.shape[1] < 2 or mask is None or set(enc) != {"input_ids", "attention_mask"} or \
            not _reads_a_ready_cache(model):
        return None
    first: dict[tuple, int] = {}
    rows, distinct = [], []  # per row the index of its prompt among the distinct ones; per distinct prompt a row
    for i, row in enumerate(torch.cat([ids, mask], 1).tolist()):
        rows.append(first.setdefault(tuple(row), len(first)))
        if rows[-1] == len(distinct):
            distinct.append(i)
    width = ids.shape[1]
    lengths = mask.sum(1).tolist()
    real = [ids[i, width - lengths[i]:].tolist() for i in distinct]
    rows = torch.tensor(rows, device=ids.device)
    if prompt_cache is not None and _keeps_whole_prompts(model, width):
        return _through_prompt_cache(model, ids, mask, rows, real, prompt_cache)
    opening = _opening(real)
    if len(distinct) == len(rows) and not opening:
        return None
    if opening:
        ids, mask = _opening_first(ids, mask, opening)
    cache = _read(model, ids[distinct], mask[distinct], opening)
    if len(distinct) < len(rows):
        cache.batch_select_indices(rows)
    return cache, ids, mask


def _opening(prompts: list[list[int]]) -> int:
    """The number of tokens all prompts begin with, leaving each at least its last token for generate to read; 0
    below 2 tokens (the copy would cost about what it saves)."""
    opening = 0
    while opening < min(map(len, prompts)) - 1 and len({p[opening] for p in prompts}) == 1:
        opening += 1
    return opening if opening >= 2 else 0


def _opening_first(ids: torch.Tensor, mask: torch.Tensor, opening: int):
    """Left-padded rows laid out as `[opening, padding, own tokens]`."""
    width = ids.shape[1]
    laid_out, holes = torch.empty_like(ids), torch.zeros_like(mask)
    for i, n in enumerate(mask.sum(1).tolist()):
        prompt = ids[i, width - n:]
        laid_out[i] = torch.cat([prompt[:opening], ids[i, :width - n], prompt[opening:]])
        holes[i, :opening] = holes[i, width - n + opening:] = 1
    return laid_out, holes


def _empty_cache(model):
    from transformers import DynamicCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return DynamicCache(config=base.config.get_text_config(decoder=True))


def _read(model, ids: torch.Tensor, mask: torch.Tensor, opening: int):
    """The cache of every row's prompt but its last token (rows laid out by `_opening_first` when `opening`)."""
    cache = _empty_cache(model)
    if opening:
        model(input_ids=ids[:1, :opening], attention_mask=mask[:1, :opening], cache=cache, use_cache=True,
              logits_to_keep=1)
        cache.batch_repeat_interleave(ids.shape[0])
    read = mask[:, :-1]
    # The positions generate gives a left-padded prompt (transformers' `_prepare_position_ids_for_generation`).
    position_ids = (read.long().cumsum(-1) - 1).masked_fill(read == 0, 0)
    if ids.shape[1] - 1 > opening:
        model(input_ids=ids[:, opening:-1], attention_mask=read, position_ids=position_ids[:, opening:],
              cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def _keeps_whole_prompts(model, width: int) -> bool:
    """Whether every layer's cache holds the whole prompt (a sliding-window layer keeps only its window)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    window = getattr(base.config.get_text_config(decoder=True), "sliding_window", None)
    return window is None or width < window


def _through_prompt_cache(model, ids, mask, rows, real: list[list[int]], store: PromptCache):
    """`shared_prefill` with a `PromptCache`: the distinct prompts not in it read (and put in it), then every row's
    cache assembled from it, in the batch's own left-padded layout."""
    keys = [tuple(p[:-1]) for p in real]
    layers = [store.get(key) for key in keys]  # per distinct prompt, per layer its (keys, values)
    missing = [j for j, found in enumerate(layers) if found is None]
    store.hits += len(keys) - len(missing)
    if missing:
        store.reads += len(missing)
        # The missing prompts as a batch of their own, left-padded to the longest of them.
        width = max(len(real[j]) for j in missing)
        pad = int(ids[0, 0])  # any token: the mask hides it
        sub_ids = torch.tensor([[pad] * (width - len(real[j])) + real[j] for j in missing], device=ids.device)
        sub_mask = torch.tensor([[0] * (width - len(real[j])) + [1] * len(real[j]) for j in missing],
                                device=ids.device)
        opening = _opening([real[j] for j in missing]) if len(missing) > 1 else 0
        if opening:
            sub_ids, sub_mask = _opening_first(sub_ids, sub_mask, opening)
        cache = _read(model, sub_ids, sub_mask, opening)
        for r, j in enumerate(missing):
            at = sub_mask[r, :-1].nonzero().squeeze(1)  # the prompt's own positions, holes left out
            layers[j] = [(layer.keys[r][:, at], layer.values[r][:, at]) for layer in cache.layers]  # copies
            store.put(keys[j], layers[j])
        del cache
    width = ids.shape[1]
    cache = _empty_cache(model)
    for index in range(len(layers[0])):
        k0, v0 = layers[0][index]
        batch_keys = k0.new_zeros((len(keys), k0.shape[0], width - 1, k0.shape[2]))
        batch_values = v0.new_zeros((len(keys), v0.shape[0], width - 1, v0.shape[2]))
        for j, prompt in enumerate(layers):
            k, v = prompt[index]
            batch_keys[j, :, width - 1 - k.shape[1]:] = k
            batch_values[j, :, width - 1 - v.shape[1]:] = v
        cache.update(batch_keys[rows], batch_values[rows], index)
    return cache, ids, mask


def right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `attention_mask` of token-id rows padded on the right to the longest (what `logits_at` reads)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()
def logits_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              positions: list[list[int]]) -> list[torch.Tensor]:
    """Per row of a right-padded batch, the float32 logits `(len(positions[row]), vocab)` at those positions (each
    row's own, all within its real tokens), from one forward pass that computes the output layer only there.

    The tokens every row begins with (a chat template's system turn, a discriminator's question) are read once: their
    keys and values are copied to every row, which then reads only its own tokens. That prefix ends before the first
    position asked for. Models that cannot start from a ready cache (`_reads_a_ready_cache`) read each row whole.
    """
    if not positions:
        return []
    batch, length = input_ids.shape
    first_asked = min(min(p) for p in positions)
    lengths = attention_mask.sum(1).tolist()
    prefix = 0
    if batch > 1 and _reads_a_ready_cache(model):
        same = (input_ids == input_ids[:1]).all(0) & (attention_mask == 1).all(0)
        prefix = int(same.long().cumprod(0).sum())
    prefix = min(prefix, first_asked, min(lengths) - 1)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    peft_config = getattr(model, "active_peft_config", None)
    # A prompt-learning adapter puts its virtual tokens in front of the sequence: the positions asked for are then
    # read from all the logits, as the last `length` of them.
    keep_some = ("logits_to_keep" in inspect.signature(base.forward).parameters
                 and not getattr(peft_config, "is_prompt_learning", False))
    if prefix >= 2:  # below that the copy costs about what it saves
        cache = _empty_cache(model)
        model(input_ids=input_ids[:1, :prefix], attention_mask=attention_mask[:1, :prefix], cache=cache,
              use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(batch)
        kwargs = dict(cache=cache, use_cache=True,
                      position_ids=torch.arange(prefix, length, device=input_ids.device).expand(batch, -1))
    else:
        prefix = 0
        kwargs = dict(use_cache=False)
    asked = sorted({q for p in positions for q in p})
    if keep_some:
        kwargs["logits_to_keep"] = torch.tensor([q - prefix for q in asked], device=input_ids.device)
        column = {q: j for j, q in enumerate(asked)}
    else:
        column = {q: q - length for q in asked}  # from the end: after any virtual tokens
    logits = model(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, **kwargs).logits
    return [logits[row, [column[q] for q in p]].float() for row, p in enumerate(positions)]


def _generate_vllm(model, tokenizer, prompts, *, batch_size, max_new_tokens, do_sample, temperature, top_p, top_k,
                   stop_strings, desc, show_progress) -> list[tuple[str, bool]]:
    # Token ids both ways: the prompt is encoded, and the answer decoded, by the same tokenizer as on the HF path.
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    bar = tqdm(total=len(prompts), desc=desc, disable=not show_progress or desc is None, leave=False)
    try:
        outputs = model.server.complete(
            prompt_ids, adapter=model.adapter, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature, top_p=top_p, top_k=top_k, stop=stop_strings, stop_token_ids=model.eos_token_ids,
            concurrency=batch_size, on_done=lambda: bar.update(1))
    finally:
        bar.close()
    results = []
    for ids, ended in outputs:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        results.append((text, ended or bool(stop_strings and any(s in text for s in stop_strings))))
    return results


def _eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def cut_answer(text: str, stop: str | None, *, strip: bool = True) -> str:
    """The answer part of a completion: up to the stop string, stripped (unless `strip=False`)."""
    if stop and stop in text:
        text = text.split(stop, 1)[0]
    return text.strip() if strip else text
