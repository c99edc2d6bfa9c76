"""Batched generation, shared by candidate synthesis, teacher labelling and evaluation.

The paper generated one candidate at a time; on a GPU a decode step costs about the same for 1 row as for 256
(DESIGN §5), so everything here is batched. Prompts are sorted by length before batching so that rows of a batch
need little left padding, and stop strings end each row as soon as its item or answer is complete.
"""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm

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
) -> list[tuple[str, bool]]:
    """Continue every prompt.

    Args:
        model (`PreTrainedModel` or `PeftModel`): a causal LM, in eval mode.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer; needs a pad token.
        prompts (`list[str]`): the prompts, as text (special tokens such as BOS are added by the tokenizer).
        stop_strings (`list[str]`, *optional*): a row ends once its continuation contains one of them.

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
    from .modeling import contiguous_head_input

    contiguous_head_input(model)  # models not loaded by `load_base` (a callback's, a user's)
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[tuple[str, bool] | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    eos_ids = _eos_ids(model, tokenizer)
    sampling = dict(do_sample=do_sample)
    if do_sample:
        sampling.update(temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        # Greedy: clear sampling defaults a model's generation_config may carry, so no warning is raised.
        sampling.update(temperature=None, top_p=None, top_k=None)
    bar = tqdm(total=len(prompts), desc=desc, disable=not show_progress or desc is None, leave=False)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            with cpu_sampling(device) if do_sample else contextlib.nullcontext():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=eos_ids,
                    stop_strings=stop_strings or None,
                    tokenizer=tokenizer if stop_strings else None,
                    **sampling,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                ended = any(t in eos_ids for t in ids)
                text = tokenizer.decode(ids, skip_special_tokens=True)
                if stop_strings and any(s in text for s in stop_strings):
                    ended = True
                results[i] = (text, ended)
            bar.update(len(idx))
    finally:
        bar.close()
        tokenizer.padding_side = old_side
        model.train(was_training)
    return results


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
