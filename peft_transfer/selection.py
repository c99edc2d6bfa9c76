"""Token selection (TiTok style): the new adapter learns only the completion tokens where the source adapter matters.

Each token of a teacher's completion is scored by its contrastive excess: its log-probability under the source base
with the adapter minus under the same base with the adapter disabled. Tokens the base would have written anyway
score low; tokens the adapter put there score high. The target's training rows keep the loss on the top
`token_selection_ratio` of their completion tokens by that score, and always on the end-of-sequence token, so the
student still learns where an answer ends.

Teacher and student may tokenize differently: the excess is kept per character span of the completion text, and a
student token takes the highest excess of the teacher tokens whose spans overlap it.

The same teacher-forced pass gives the teacher's confidence in a whole answer (`answer_confidence`, its mean token
log-probability), by which the labels stage keeps the inputs it is surest of (`label_selection_ratio`).
"""

from __future__ import annotations

import math

import torch
from trl.data_utils import common_prefix_length


@torch.no_grad()
def token_excess(model, tokenizer, prompts: list[str], completions: list[str], *,
                 batch_size: int = 16) -> list[list[tuple[int, int, float]]]:
    """Per completion: `(start, end, excess)` for each teacher token, its character span within the completion.

    `model` is a `PeftModel` (the source base with the adapter); the base's log-probabilities come from the same
    model under `disable_adapter()`.
    """
    return [[(s, e, a - b) for s, e, a, b in row]
            for row in _completion_logprobs(model, tokenizer, prompts, completions, batch_size, with_base=True)]


@torch.no_grad()
def answer_confidence(model, tokenizer, prompts: list[str], completions: list[str], *,
                      batch_size: int = 16) -> list[float]:
    """Per completion: the mean log-probability of its tokens under `model` given the prompt (the teacher's
    confidence in its own answer); `-inf` for an empty completion."""
    rows = _completion_logprobs(model, tokenizer, prompts, completions, batch_size, with_base=False)
    return [sum(a for *_, a, _ in row) / len(row) if row else float("-inf") for row in rows]


def _completion_logprobs(model, tokenizer, prompts, completions, batch_size, *, with_base: bool):
    """Per completion, for each of its tokens: `(start, end, log p under model, log p under the base or None)`,
    the span in completion characters (the token that crosses from the prompt into the completion counts).

    Rows are read in batches of similar length (`generation.logits_at`: the output layer only where a completion
    token is predicted, the prompt's opening that all rows share read once)."""
    from .generation import right_padded

    encoded = [tokenizer(p + c, return_offsets_mapping=True) for p, c in zip(prompts, completions)]
    # Per row, the token indices scored: the completion's (a token ending inside the prompt is the prompt's).
    wanted = [[j for j, (s, e) in enumerate(enc["offset_mapping"]) if j > 0 and e > len(p) and e > s]
              for enc, p in zip(encoded, prompts)]
    out: list[list] = [[] for _ in prompts]
    order = sorted((i for i in range(len(prompts)) if wanted[i]), key=lambda i: len(encoded[i]["input_ids"]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    for first in range(0, len(order), batch_size):
        idx = order[first:first + batch_size]
        ids, mask = right_padded([encoded[i]["input_ids"] for i in idx], pad)
        ids, mask = ids.to(device), mask.to(device)
        positions = [[j - 1 for j in wanted[i]] for i in idx]
        scores = _token_logprobs(model, ids, mask, positions, wanted, idx)
        base = [None] * len(idx)
        if with_base:
            with model.disable_adapter():
                base = _token_logprobs(model, ids, mask, positions, wanted, idx)
        for row, i in enumerate(idx):
            offsets, start = encoded[i]["offset_mapping"], len(prompts[i])
            out[i] = [(offsets[j][0] - start, offsets[j][1] - start, scores[row][k],
                       base[row][k] if with_base else None) for k, j in enumerate(wanted[i])]
    return out


def _token_logprobs(model, ids, mask, positions, wanted, idx) -> list[list[float]]:
    """Per row: log p(token j | tokens < j) for each of its wanted tokens j."""
    from .generation import logits_at

    logits = logits_at(model, ids, mask, positions)
    return [torch.log_softmax(lg, dim=-1).gather(-1, ids[row, wanted[i]][:, None])[:, 0].tolist()
            for row, (lg, i) in enumerate(zip(logits, idx))]


def selected_row(tokenizer, prompt: str, completion: str, spans: list[tuple[int, int, float]],
                 ratio: float) -> dict:
    """A tokenized training row (`input_ids`, `labels`) whose loss is on the top `ratio` of the completion's tokens
    by the teacher's excess, and on the end-of-sequence token. Tokenized as `SFTTrainer` does a prompt/completion
    row: prompt + completion + EOS text, the completion starting where the prompt's own tokens end."""
    eos = tokenizer.eos_token or ""
    prompt_ids = tokenizer(prompt)["input_ids"]
    enc = tokenizer(prompt + completion + eos, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    first = common_prefix_length(prompt_ids, ids)
    start, end = len(prompt), len(prompt) + len(completion)
    always, scored = [], []
    for j in range(first, len(ids)):
        s, e = offsets[j]
        if ids[j] == tokenizer.eos_token_id or s >= end:
            always.append(j)
            continue
        overlap = [x for a, b, x in spans if a < e - start and b > s - start]
        scored.append((max(overlap) if overlap else -math.inf, j))
    keep = set(always) | {j for _, j in sorted(scored, key=lambda t: -t[0])[:max(1, math.ceil(ratio * len(scored)))]}
    return {"input_ids": ids, "labels": [t if j in keep else -100 for j, t in enumerate(ids)]}
