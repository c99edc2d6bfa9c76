"""`chunked_token_divergence`: the losses of `losses` (sequence CE, token-level divergences, their mix) from hidden
states and `lm_head` weights, chunk by chunk, so that neither model's `(batch, length, vocab)` logits are ever built:
O(chunk × vocab) memory in forward and backward. The per-token definitions are `losses`'s own, so both paths compute
the same numbers (the tests check it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .losses import (
    _check_divergence_args,
    _check_same_vocab,
    _effective_kind,
    _per_token_divergence,
    _reduce,
    _shift_and_gather,
    _upcast,
)
from .models import output_linear

# ---------------------------------------------------------------------------------------------------------------
# Chunked: from hidden states and lm_head weights, O(chunk × vocab) memory in forward and backward
# ---------------------------------------------------------------------------------------------------------------


def _softcap(logits: torch.Tensor, cap: float | None):
    """Gemma-style soft-capping `cap · tanh(x / cap)`; returns the capped logits and `tanh` for the gradient."""
    if cap is None:
        return logits, None
    tanh = torch.tanh(logits / cap)
    return tanh * cap, tanh


def _chunk_loss_and_logit_grad(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    kind: str,
    beta: float,
    temperature: float,
    sequence_weight: float,
    compute_grad: bool,
):
    """
    Loss terms of one chunk and, analytically, the gradient of their weighted sum w.r.t. the student's logits.

    Args: upcast student logits `(C, V)` (after soft-capping), teacher logits `(C, V)` or `None`, targets `(C,)`.
    Returns: divergence sum, cross-entropy sum (upcast scalars), and the `(C, V)` gradient or `None`.

    The gradient is written by hand instead of calling autograd so that nothing vocabulary-sized is kept per chunk:
    every `(C, V)` temporary dies when this function returns. With `p = softmax(z)`, `z = logits / T`:
      forward KL  d/dz = p_s - p_t
      reverse KL  d/dz = p_s (log p_s - log p_t - KL(p_s‖p_t))
      JSD(beta)   d/dz = (1 - beta) p_s (log p_s - log m - KL(p_s‖m))
      CE (T = 1)  d/dlogits = softmax(logits) - onehot(target)
    and d/dlogits = d/dz / T. The tests check these against autograd on the plain functions.
    """
    divergence_weight = 1.0 - sequence_weight
    zero = student_logits.new_zeros(())
    divergence_sum, ce_sum, grad = zero, zero, None
    kind = _effective_kind(kind, beta)

    student_log_probs = None
    if divergence_weight > 0.0:
        student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
        teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
        if kind == "jsd":
            log_mixture = torch.logaddexp(student_log_probs + math.log1p(-beta), teacher_log_probs + math.log(beta))
            student_probs = student_log_probs.exp()
            kl_student_rows = (student_probs * (student_log_probs - log_mixture)).sum(-1)
            kl_teacher_rows = (teacher_log_probs.exp() * (teacher_log_probs - log_mixture)).sum(-1)
            divergence_sum = (beta * kl_teacher_rows + (1.0 - beta) * kl_student_rows).sum()
            if compute_grad:
                grad = log_mixture.neg_().add_(student_log_probs).sub_(kl_student_rows[:, None])
                grad.mul_(student_probs).mul_((1.0 - beta) * divergence_weight / temperature)
            del log_mixture, student_probs
        else:
            divergence_sum = _per_token_divergence(student_log_probs, teacher_log_probs, kind, beta).sum()
            if compute_grad and kind == "forward_kl":
                grad = student_log_probs.exp().sub_(teacher_log_probs.exp())
                grad.mul_(divergence_weight / temperature)
            elif compute_grad:  # reverse_kl
                rows = (student_log_probs.exp() * (student_log_probs - teacher_log_probs)).sum(-1)
                grad = (student_log_probs - teacher_log_probs).sub_(rows[:, None]).mul_(student_log_probs.exp())
                grad.mul_(divergence_weight / temperature)
        del teacher_log_probs

    if sequence_weight > 0.0:
        # The cross-entropy is at T = 1; reuse the divergence's log-softmax when it was already at T = 1.
        if student_log_probs is None or temperature != 1.0:
            student_log_probs = F.log_softmax(student_logits, dim=-1)
        target_log_probs = student_log_probs.gather(-1, targets[:, None]).squeeze(-1)
        ce_sum = -target_log_probs.sum()
        if compute_grad:
            ce_grad = student_log_probs.exp_()  # in place: the log-probabilities are not needed any more
            ce_grad[torch.arange(targets.numel(), device=targets.device), targets] -= 1.0
            ce_grad.mul_(sequence_weight)
            grad = ce_grad if grad is None else grad.add_(ce_grad)
    return divergence_sum, ce_sum, grad


class _ChunkedDistillationLoss(torch.autograd.Function):
    """
    Sum over positions of `sequence_weight · CE + (1 - sequence_weight) · divergence`, from hidden states.

    The gradients w.r.t. the student's hidden states, `lm_head` weight and bias are computed chunk by chunk during
    the forward pass and saved (they are no larger than the inputs themselves); backward only scales them by the
    incoming scalar gradient. So the backward never recomputes logits, and autograd never holds any chunk's logits.
    """

    @staticmethod
    def forward(
        ctx,
        student_hidden,  # (N, H_s)
        student_weight,  # (V, H_s)
        student_bias,  # (V,) or None
        teacher_hidden,  # (N, H_t) or None
        teacher_weight,  # (V, H_t) or None
        teacher_bias,  # (V,) or None
        targets,  # (N,)
        options,
    ):
        kind, beta, temperature, sequence_weight, chunk_size, student_cap, teacher_cap, compute_grad = options
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        compute_grad = compute_grad and (needs_hidden or needs_weight or needs_bias)
        num_positions = student_hidden.shape[0]
        device = student_hidden.device

        # Gradients accumulate in (at least) float32 whatever the model dtype: the lm_head gradient sums over chunks.
        acc_dtype = torch.promote_types(student_hidden.dtype, torch.float32)
        grad_hidden = torch.zeros_like(student_hidden, dtype=acc_dtype) if compute_grad and needs_hidden else None
        grad_weight = torch.zeros_like(student_weight, dtype=acc_dtype) if compute_grad and needs_weight else None
        grad_bias = (
            torch.zeros_like(student_bias, dtype=acc_dtype)
            if compute_grad and needs_bias and student_bias is not None
            else None
        )
        divergence_total = torch.zeros((), device=device, dtype=acc_dtype)
        ce_total = torch.zeros((), device=device, dtype=acc_dtype)

        for start in range(0, num_positions, chunk_size):
            end = min(start + chunk_size, num_positions)
            hidden_chunk = student_hidden[start:end]
            # Logits in the model's dtype, like the model's own lm_head, then upcast for the softmax math. No autograd
            # runs in here (the gradient is written by hand), so the output layer's oneDNN path applies.
            student_logits, tanh = _softcap(_upcast(output_linear(hidden_chunk, student_weight, student_bias)),
                                            student_cap)
            teacher_logits = None
            if sequence_weight < 1.0:
                teacher_logits = _upcast(output_linear(teacher_hidden[start:end], teacher_weight, teacher_bias))
                teacher_logits, _ = _softcap(teacher_logits, teacher_cap)
            divergence_sum, ce_sum, grad_logits = _chunk_loss_and_logit_grad(
                student_logits, teacher_logits, targets[start:end], kind, beta, temperature, sequence_weight,
                compute_grad,
            )
            del student_logits, teacher_logits
            divergence_total += divergence_sum
            ce_total += ce_sum
            if grad_logits is None:
                continue
            if tanh is not None:
                # d/dx [cap · tanh(x / cap)] = 1 - tanh²
                grad_logits.mul_(tanh.square_().neg_().add_(1.0))
            del tanh
            if grad_hidden is not None:
                # Matmul in the weight's dtype (what autograd on the unchunked model would do), accumulated upcast.
                grad_hidden[start:end] = grad_logits.to(student_weight.dtype) @ student_weight
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), hidden_chunk.to(acc_dtype))
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
            del grad_logits

        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        bias_dtype = None if student_bias is None else student_bias.dtype
        ctx.input_dtypes = (student_hidden.dtype, student_weight.dtype, bias_dtype)
        loss_total = (1.0 - sequence_weight) * divergence_total + sequence_weight * ce_total
        ctx.mark_non_differentiable(divergence_total, ce_total)
        return loss_total, divergence_total, ce_total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_divergence, _grad_ce):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        dtypes = ctx.input_dtypes

        def scale(grad, dtype):
            # The loss is a sum, so its gradient is linear in the incoming scalar (1 / num_tokens, loss weights, ...).
            return None if grad is None else (grad * grad_loss).to(dtype)

        return (
            scale(grad_hidden, dtypes[0]),
            scale(grad_weight, dtypes[1]),
            scale(grad_bias, dtypes[2]),
            None,  # teacher hidden: the teacher never receives a gradient
            None,
            None,
            None,
            None,
        )


def _split_lm_head(lm_head) -> tuple[torch.Tensor, torch.Tensor | None]:
    if lm_head is None:
        return None, None
    if isinstance(lm_head, torch.Tensor):
        return lm_head, None
    if isinstance(lm_head, (tuple, list)):
        weight, bias = lm_head
        return weight, bias
    return lm_head.weight, getattr(lm_head, "bias", None)


def chunked_token_divergence(
    student_hidden: torch.Tensor,
    student_lm_head,
    teacher_hidden: torch.Tensor | None,
    teacher_lm_head,
    labels: torch.Tensor,
    *,
    kind: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int = 256,
    sequence_weight: float = 0.0,
    logit_softcap: float | tuple[float | None, float | None] | None = None,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    return_components: bool = False,
):
    """
    [`mixed_loss`] computed from final hidden states and `lm_head` weights, never materialising full logits.

    Value and gradients equal those of `mixed_loss(lm_head_s(h_s), lm_head_t(h_t), labels, ...)` (up to float
    rounding) while peak memory stays O(`chunk_size` × vocab) instead of O(batch × length × vocab) for each model:

    1. The completion positions (`labels[:, t + 1] != ignore_index`) are gathered first, so prompt and padding
       positions cost nothing.
    2. Positions are processed `chunk_size` at a time: both models' logits for the chunk, the divergence and the
       cross-entropy, and, analytically, the gradient w.r.t. the student's chunk logits, which is immediately
       projected back onto the student's hidden states and `lm_head` weight/bias. The chunk's logits are then freed.
    3. This happens inside a custom `torch.autograd.Function`, so autograd stores only the accumulated gradients
       (the size of the hidden states, plus the size of the `lm_head` weight if it requires grad); backward multiplies
       them by the incoming scalar. No logits are recomputed in backward and none are kept alive by autograd.

    Gradients flow to `student_hidden` and to the student `lm_head` weight/bias when they require grad (under
    `torch.no_grad()` no gradient work is done at all); the teacher's tensors never receive one. Peak extra memory
    is about eight float32 `(chunk_size, vocab)` buffers: 256 × 256k × 4 B × 8 ≈ 2 GB at the default chunk size.

    Args:
        student_hidden (`torch.Tensor`):
            Student's final hidden states (after the final norm, i.e. the `lm_head` input), `(batch, length, H_s)`.
        student_lm_head (`torch.nn.Linear`, `torch.Tensor` or `tuple`):
            The student's `lm_head` module, or its weight `(vocab, H_s)`, or a `(weight, bias)` pair (bias may be
            `None`).
        teacher_hidden (`torch.Tensor`, *optional*):
            Teacher's final hidden states for the same `input_ids`, `(batch, length, H_t)`; `H_t` may differ from
            `H_s`. May be `None` when `sequence_weight == 1`.
        teacher_lm_head (`torch.nn.Linear`, `torch.Tensor` or `tuple`, *optional*):
            The teacher's `lm_head`, `(vocab, H_t)`, same forms as `student_lm_head`. Same vocabulary size required.
        labels (`torch.Tensor`):
            Unshifted labels `(batch, length)` with `ignore_index` off the completion (see the module docstring).
        kind (`str`, *optional*, defaults to `"forward_kl"`):
            `"forward_kl"`, `"reverse_kl"` or `"jsd"` (see [`token_divergence`]).
        beta (`float`, *optional*, defaults to `0.5`):
            JSD weight in TRL's GKD convention; `0` = forward KL, `1` = reverse KL.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softens both distributions for the divergence; no `T²` factor; the cross-entropy stays at `T = 1`.
        chunk_size (`int`, *optional*, defaults to `256`):
            Completion positions per chunk. Any value ≥ 1 gives the same result; larger is faster, uses more memory.
        sequence_weight (`float`, *optional*, defaults to `0.0`):
            Weight `alpha` of the cross-entropy on the teacher's tokens: the loss is `alpha · CE + (1 - alpha) ·
            divergence`, in one pass. With `1.0` the teacher is not used (chunked plain SFT loss).
        logit_softcap (`float` or `tuple`, *optional*):
            Final-logit soft-capping `cap · tanh(logits / cap)` applied before the softmax (Gemma 2/3 set
            `config.final_logit_softcapping`; with hidden states you bypass the model's own capping, so pass it here).
            A float applies to both models, a `(student_cap, teacher_cap)` pair to each (either may be `None`).
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label value that marks positions without a target.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            When given, the loss is `sum / num_items_in_batch`; otherwise the mean over completion tokens.
        return_components (`bool`, *optional*, defaults to `False`):
            Also return the detached divergence and cross-entropy (same reduction), for logging.

    Returns:
        `torch.Tensor` (scalar loss), or `(loss, divergence, cross_entropy)` when `return_components=True`.
    """
    _check_divergence_args(kind, beta, temperature)
    if not 0.0 <= sequence_weight <= 1.0:
        raise ValueError(f"`sequence_weight` must be in [0, 1], got {sequence_weight}.")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")
    student_cap, teacher_cap = logit_softcap if isinstance(logit_softcap, (tuple, list)) else (logit_softcap,) * 2

    student_weight, student_bias = _split_lm_head(student_lm_head)
    teacher_weight, teacher_bias = _split_lm_head(teacher_lm_head)
    if sequence_weight < 1.0:
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError("`teacher_hidden` and `teacher_lm_head` are required when `sequence_weight < 1`.")
        _check_same_vocab(student_weight.shape[0], teacher_weight.shape[0])
        # Detach here as well as returning no gradient: a teacher run without `torch.no_grad()` must not pull its
        # graph into the student's backward.
        teacher_weight = teacher_weight.detach()
        teacher_bias = None if teacher_bias is None else teacher_bias.detach()
        targets, student_rows, teacher_rows = _shift_and_gather(
            labels, ignore_index, student_hidden, teacher_hidden.detach()
        )
    else:
        targets, student_rows = _shift_and_gather(labels, ignore_index, student_hidden)
        teacher_rows, teacher_weight, teacher_bias = None, None, None

    options = (kind, beta, temperature, sequence_weight, chunk_size, student_cap, teacher_cap, torch.is_grad_enabled())
    loss_sum, divergence_sum, ce_sum = _ChunkedDistillationLoss.apply(
        student_rows, student_weight, student_bias, teacher_rows, teacher_weight, teacher_bias, targets, options
    )
    num_tokens = targets.numel()
    loss = _reduce(loss_sum, num_tokens, num_items_in_batch)
    if return_components:
        divergence = _reduce(divergence_sum, num_tokens, num_items_in_batch)
        return loss, divergence, _reduce(ce_sum, num_tokens, num_items_in_batch)
    return loss
