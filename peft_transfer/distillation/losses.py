"""Distillation losses of the target_adapter stage (teacher Ms+θs -> student Mt+θt): pure tensor functions, no trainer code.

Two families:

- **Sequence-level KD** ([`sequence_loss`]): cross-entropy on the teacher's completion tokens. This is the paper's
  loss and the only one that works across tokenizers (Llama -> Gemma).
- **Token-level KD** ([`forward_kl`], [`reverse_kl`], [`jsd`], [`token_divergence`], [`mixed_loss`]): a divergence
  between the teacher's and the student's next-token distributions at every completion position. It needs one shared
  vocabulary: check it with [`assert_same_vocabulary`] before training.

Conventions shared by every function here:

- `labels` follow the Hugging Face convention: **unshifted**, the same shape as `input_ids`, `-100` (`ignore_index`)
  on prompt and padding positions. The logits (or hidden states) at position `t` predict `labels[t + 1]`; the shift
  happens inside, so callers pass what `DataCollatorForLanguageModeling`/`SFTTrainer` produce.
- The mask of completion positions is `labels[:, 1:] != ignore_index`; divergences are computed at those positions only.
- Reduction: mean over completion tokens of the whole batch (not per sequence), or `sum / num_items_in_batch` when
  `num_items_in_batch` is given, which keeps gradient accumulation exact (the transformers/TRL convention).
- Softmax math is done in (at least) float32 whatever the input dtype (bf16 log-softmax over 256k entries loses too
  much); losses are float32 (float64 for float64 inputs).
- Temperature `T` softens both distributions (`softmax(logits / T)`). The divergence is **not** multiplied by `T²`:
  this matches TRL's GKD and `DistillationTrainer`, so loss values and learning rates carry over from TRL runs.
  (Hinton et al. scale by `T²` to keep the soft term's gradient comparable to a hard-label term as `T` grows; if you
  mix with cross-entropy at `T > 1` and want that, raise the divergence's weight by `T²` yourself.) The sequence
  cross-entropy is always at `T = 1`: it is the likelihood of the teacher's actual tokens.

`chunked.chunked_token_divergence` computes the same numbers as [`mixed_loss`] from hidden states and `lm_head`
weights without materialising the `(batch, length, vocab)` logits of either model (what the trainer uses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCE_KINDS = ("forward_kl", "reverse_kl", "jsd")


# ---------------------------------------------------------------------------------------------------------------
# Per-token definitions, shared by the plain and the chunked paths so that both compute exactly the same thing.
# ---------------------------------------------------------------------------------------------------------------


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    # At least float32 for softmax math (bf16 over a 256k vocabulary loses too much); float64 stays float64.
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _check_divergence_args(kind: str, beta: float, temperature: float) -> None:
    if kind not in DIVERGENCE_KINDS:
        raise ValueError(f"Unknown divergence kind {kind!r}; choose one of {DIVERGENCE_KINDS}.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"`beta` must be in [0, 1], got {beta}.")
    if not temperature > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")


def _effective_kind(kind: str, beta: float) -> str:
    # TRL's GKD convention: the generalised JSD at beta=0 is the forward KL and at beta=1 the reverse KL. The JSD
    # formula itself tends to 0 at both ends (the mixture collapses onto one distribution), so the limits are
    # special-cased exactly like `trl.experimental.gkd.GKDTrainer.generalized_jsd_loss` does.
    if kind == "jsd" and beta == 0.0:
        return "forward_kl"
    if kind == "jsd" and beta == 1.0:
        return "reverse_kl"
    return kind


def _per_token_divergence(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, kind: str, beta: float
) -> torch.Tensor:
    """`(N, V)` upcast log-probabilities of both models -> `(N,)` divergence per position."""
    kind = _effective_kind(kind, beta)
    if kind == "forward_kl":
        # KL(p_t || p_s) = sum_v p_t (log p_t - log p_s): mode-covering, the classic KD objective.
        return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
    if kind == "reverse_kl":
        # KL(p_s || p_t): mode-seeking; the student is not punished for ignoring the teacher's low-mass tokens.
        return (student_log_probs.exp() * (student_log_probs - teacher_log_probs)).sum(-1)
    # Generalised JSD with mixture m = (1 - beta) p_s + beta p_t:
    #   beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)
    # log m via logaddexp so that it stays finite where one distribution underflows.
    log_mixture = torch.logaddexp(student_log_probs + math.log1p(-beta), teacher_log_probs + math.log(beta))
    kl_teacher = (teacher_log_probs.exp() * (teacher_log_probs - log_mixture)).sum(-1)
    kl_student = (student_log_probs.exp() * (student_log_probs - log_mixture)).sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student


def _shift_and_gather(labels: torch.Tensor, ignore_index: int, *tensors: torch.Tensor):
    """Align `(B, L, ...)` tensors with next-token targets and keep completion positions only.

    Returns the targets `(N,)` and each tensor reduced to `(N, ...)`, where `N` is the number of positions `t` with
    `labels[:, t + 1] != ignore_index`. Gathering before any vocabulary-sized work is what makes prompt tokens free.
    """
    if labels.dim() != 2:
        raise ValueError(f"`labels` must have shape (batch, length), got {tuple(labels.shape)}.")
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != ignore_index
    gathered = []
    for tensor in tensors:
        if tensor.shape[:2] != labels.shape:
            raise ValueError(
                f"Expected a tensor of shape (batch, length, ...) = {tuple(labels.shape)} + (...), "
                f"got {tuple(tensor.shape)}. Labels are unshifted (same shape as input_ids)."
            )
        gathered.append(tensor[:, :-1][mask])
    return shifted_labels[mask], *gathered


def _reduce(total: torch.Tensor, num_tokens: int | torch.Tensor, num_items_in_batch) -> torch.Tensor:
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    # max(.., 1): a batch whose completions were all truncated away gives 0 with a valid graph, not 0/0 = nan.
    return total / max(int(num_tokens), 1)


def _check_same_vocab(student_size: int, teacher_size: int) -> None:
    if student_size != teacher_size:
        raise ValueError(
            f"Student and teacher vocabulary sizes differ ({student_size} vs {teacher_size}). Token-level losses "
            "need a shared vocabulary; set `kd_loss: sequence`: "
            "cross-entropy on the teacher's completions, which works across tokenizers."
        )


# ---------------------------------------------------------------------------------------------------------------
# Losses on full logits
# ---------------------------------------------------------------------------------------------------------------


def sequence_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Cross-entropy of the student on the teacher's completion tokens (sequence-level KD, the paper's loss).

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(batch, length, vocab)`.
        labels (`torch.Tensor`):
            Unshifted token ids of shape `(batch, length)` with `ignore_index` on prompt and padding positions; the
            logits at position `t` are scored against `labels[:, t + 1]`.
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label value that marks positions without a target.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            When given, the loss is `sum / num_items_in_batch` (exact under gradient accumulation); otherwise the
            mean over the batch's completion tokens.

    Returns:
        `torch.Tensor`: scalar loss, float32 (float64 for float64 inputs).
    """
    targets, logits = _shift_and_gather(labels, ignore_index, student_logits)
    total = F.cross_entropy(_upcast(logits), targets, reduction="sum")
    return _reduce(total, targets.numel(), num_items_in_batch)


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    kind: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Divergence between the teacher's and the student's next-token distributions over completion positions.

    Gradients reach `student_logits` only: the teacher's logits are detached.

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(batch, length, vocab)`.
        teacher_logits (`torch.Tensor`):
            Teacher logits of shape `(batch, length, vocab)` for the same `input_ids` (same vocabulary).
        labels (`torch.Tensor`):
            Unshifted labels of shape `(batch, length)`; only positions `t` with `labels[:, t + 1] != ignore_index`
            count.
        kind (`str`, *optional*, defaults to `"forward_kl"`):
            `"forward_kl"` = KL(teacher ‖ student), `"reverse_kl"` = KL(student ‖ teacher), `"jsd"` = generalised
            Jensen-Shannon divergence with weight `beta`.
        beta (`float`, *optional*, defaults to `0.5`):
            Only for `kind="jsd"`, in TRL's GKD convention: mixture `m = (1 - beta) p_student + beta p_teacher`,
            loss `beta KL(p_teacher ‖ m) + (1 - beta) KL(p_student ‖ m)`; `beta=0` is exactly the forward KL and
            `beta=1` exactly the reverse KL.
        temperature (`float`, *optional*, defaults to `1.0`):
            Both distributions are `softmax(logits / temperature)`. No `T²` factor (see the module docstring).
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label value that marks positions without a target.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            When given, the loss is `sum / num_items_in_batch`; otherwise the mean over completion tokens.

    Returns:
        `torch.Tensor`: scalar loss, float32 (float64 for float64 inputs).
    """
    _check_divergence_args(kind, beta, temperature)
    _check_same_vocab(student_logits.shape[-1], teacher_logits.shape[-1])
    _, student, teacher = _shift_and_gather(labels, ignore_index, student_logits, teacher_logits.detach())
    student_log_probs = F.log_softmax(_upcast(student) / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(_upcast(teacher) / temperature, dim=-1)
    total = _per_token_divergence(student_log_probs, teacher_log_probs, kind, beta).sum()
    return _reduce(total, student.shape[0], num_items_in_batch)


def _kl(kind: str, summary: str):
    def loss(student_logits, teacher_logits, labels, *, temperature=1.0, ignore_index=-100, num_items_in_batch=None):
        return token_divergence(student_logits, teacher_logits, labels, kind=kind, temperature=temperature,
                                ignore_index=ignore_index, num_items_in_batch=num_items_in_batch)

    loss.__name__ = loss.__qualname__ = kind
    loss.__doc__ = f"""
    {summary} per completion token, averaged: [`token_divergence`] with `kind="{kind}"`.

    Args:
        student_logits (`torch.Tensor`): `(batch, length, vocab)`.
        teacher_logits (`torch.Tensor`): `(batch, length, vocab)`, detached inside.
        labels (`torch.Tensor`): unshifted `(batch, length)`, `ignore_index` off the completion.
        temperature (`float`, *optional*, defaults to `1.0`): softens both distributions; no `T²` factor.
        ignore_index (`int`, *optional*, defaults to `-100`).
        num_items_in_batch (`int` or `torch.Tensor`, *optional*): divide the sum by this instead of the token count.

    Returns:
        `torch.Tensor`: scalar loss, float32 (float64 for float64 inputs).
    """
    return loss


forward_kl = _kl("forward_kl", "KL(teacher ‖ student)")
reverse_kl = _kl("reverse_kl", "KL(student ‖ teacher)")


def jsd(
    student_logits, teacher_logits, labels, *, beta=0.5, temperature=1.0, ignore_index=-100, num_items_in_batch=None
):
    """
    Generalised Jensen-Shannon divergence per completion token, averaged, in TRL's GKD convention.

    With `m = (1 - beta) p_student + beta p_teacher` the loss is `beta KL(p_teacher ‖ m) + (1 - beta) KL(p_student ‖
    m)`; `beta=0` returns exactly [`forward_kl`] and `beta=1` exactly [`reverse_kl`] (as TRL does; the formula itself
    vanishes at both ends). `beta=0.5` is the symmetric JSD.

    Args:
        student_logits (`torch.Tensor`): `(batch, length, vocab)`.
        teacher_logits (`torch.Tensor`): `(batch, length, vocab)`, detached inside.
        labels (`torch.Tensor`): unshifted `(batch, length)`, `ignore_index` off the completion.
        beta (`float`, *optional*, defaults to `0.5`): interpolation weight in `[0, 1]`.
        temperature (`float`, *optional*, defaults to `1.0`): softens both distributions; no `T²` factor.
        ignore_index (`int`, *optional*, defaults to `-100`).
        num_items_in_batch (`int` or `torch.Tensor`, *optional*): divide the sum by this instead of the token count.

    Returns:
        `torch.Tensor`: scalar loss, float32 (float64 for float64 inputs).
    """
    return token_divergence(
        student_logits,
        teacher_logits,
        labels,
        kind="jsd",
        beta=beta,
        temperature=temperature,
        ignore_index=ignore_index,
        num_items_in_batch=num_items_in_batch,
    )


def mixed_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    sequence_weight: float = 0.5,
    kind: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """
    `sequence_weight · sequence_loss + (1 - sequence_weight) · token_divergence`, both over the same tokens.

    Args:
        student_logits (`torch.Tensor`): `(batch, length, vocab)`.
        teacher_logits (`torch.Tensor`, *optional*): `(batch, length, vocab)`; may be `None` when
            `sequence_weight == 1` (pure sequence-level KD, the teacher's logits are not needed).
        labels (`torch.Tensor`): unshifted `(batch, length)`, `ignore_index` off the completion.
        sequence_weight (`float`, *optional*, defaults to `0.5`): weight `alpha` in `[0, 1]` of the cross-entropy.
        kind (`str`, *optional*, defaults to `"forward_kl"`): `"forward_kl"`, `"reverse_kl"` or `"jsd"`.
        beta (`float`, *optional*, defaults to `0.5`): JSD weight, TRL's GKD convention (see [`jsd`]).
        temperature (`float`, *optional*, defaults to `1.0`): for the divergence only; the cross-entropy is at `T = 1`.
        ignore_index (`int`, *optional*, defaults to `-100`).
        num_items_in_batch (`int` or `torch.Tensor`, *optional*): divide sums by this instead of the token count.

    Returns:
        `torch.Tensor`: scalar loss, float32 (float64 for float64 inputs).
    """
    if not 0.0 <= sequence_weight <= 1.0:
        raise ValueError(f"`sequence_weight` must be in [0, 1], got {sequence_weight}.")
    _check_divergence_args(kind, beta, temperature)
    loss = 0.0
    if sequence_weight > 0.0:
        loss = sequence_weight * sequence_loss(student_logits, labels, ignore_index, num_items_in_batch)
    if sequence_weight < 1.0:
        if teacher_logits is None:
            raise ValueError("`teacher_logits` is required when `sequence_weight < 1`.")
        loss = loss + (1.0 - sequence_weight) * token_divergence(
            student_logits,
            teacher_logits,
            labels,
            kind=kind,
            beta=beta,
            temperature=temperature,
            ignore_index=ignore_index,
            num_items_in_batch=num_items_in_batch,
        )
    return loss


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary check
# ---------------------------------------------------------------------------------------------------------------


def assert_same_vocabulary(
    teacher_tokenizer,
    student_tokenizer,
    teacher_vocab_size: int | None = None,
    student_vocab_size: int | None = None,
) -> None:
    """
    Refuse token-level distillation unless teacher and student share one vocabulary, id for id.

    Token-level losses compare the two next-token distributions entry by entry, so entry `i` must be the same token
    for both models. Equal vocabulary *sets* are not enough: the same tokens under different ids (a re-trained or
    re-ordered tokenizer) would silently compare unrelated tokens, so the full `get_vocab()` maps (added tokens
    included) must be equal.

    The `lm_head` sizes, when given, must be equal and at least the tokenizer length. Models often pad their
    embedding matrix beyond the tokenizer (to a multiple of 64/128); padded rows are accepted when both models pad
    to the same size, because the losses compare full `lm_head` outputs and need equal widths. Models that pad to
    different sizes (e.g. two sizes of one family with 151,936 and 152,064 rows) are refused rather than silently
    truncated.

    Args:
        teacher_tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The teacher's tokenizer (source base model).
        student_tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The student's tokenizer (target base model).
        teacher_vocab_size (`int`, *optional*):
            Rows of the teacher's `lm_head` (`model.get_output_embeddings().weight.shape[0]`).
        student_vocab_size (`int`, *optional*):
            Rows of the student's `lm_head`.

    Raises:
        `ValueError`: when the vocabularies differ, saying to set `kd_loss: sequence` instead.
    """
    advice = (
        "Token-level losses (forward_kl, reverse_kl, jsd) need a shared vocabulary; set `kd_loss: sequence` "
        "(or `kd_loss='sequence'` in DistillationConfig): cross-entropy on the teacher's completions, which works "
        "across tokenizers."
    )
    teacher_vocab = teacher_tokenizer.get_vocab()
    student_vocab = student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        only_teacher = teacher_vocab.keys() - student_vocab.keys()
        only_student = student_vocab.keys() - teacher_vocab.keys()
        if only_teacher or only_student:
            detail = (
                f"{len(only_teacher)} tokens only in the teacher's vocabulary (e.g. {sorted(only_teacher)[:3]}), "
                f"{len(only_student)} only in the student's (e.g. {sorted(only_student)[:3]})"
            )
        else:
            moved = sorted(token for token in teacher_vocab if teacher_vocab[token] != student_vocab[token])
            example = moved[0]
            detail = (
                f"the same {len(teacher_vocab)} tokens but {len(moved)} under different ids "
                f"(e.g. {example!r}: teacher {teacher_vocab[example]}, student {student_vocab[example]})"
            )
        raise ValueError(f"Teacher and student tokenizers differ: {detail}. {advice}")

    tokenizer_size = len(teacher_vocab)
    for name, size in (("teacher", teacher_vocab_size), ("student", student_vocab_size)):
        if size is not None and size < tokenizer_size:
            raise ValueError(
                f"The {name}'s lm_head has {size} rows but its tokenizer has {tokenizer_size} tokens. {advice}"
            )
    if teacher_vocab_size is not None and student_vocab_size is not None and teacher_vocab_size != student_vocab_size:
        raise ValueError(
            f"Teacher and student share a tokenizer ({tokenizer_size} tokens) but their lm_heads have different "
            f"sizes ({teacher_vocab_size} vs {student_vocab_size} rows, padded differently). {advice}"
        )
