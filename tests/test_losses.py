"""Distillation losses against plain float64 references written from the definitions, and the chunked path against
the plain one (values and gradients), on small random tensors."""

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from peft_transfer.distillation.chunked import chunked_token_divergence
from peft_transfer.distillation.losses import (
    assert_same_vocabulary,
    forward_kl,
    jsd,
    mixed_loss,
    reverse_kl,
    sequence_loss,
    token_divergence,
)

BATCH, LENGTH, VOCAB, HIDDEN, TEACHER_HIDDEN = 3, 9, 37, 12, 7


def make_labels(generator, batch=BATCH, length=LENGTH, vocab=VOCAB):
    """Unshifted labels with a masked prompt, a masked padding tail and one fully masked row."""
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[0, :4] = -100  # prompt
    labels[1, :2] = -100
    labels[1, -3:] = -100  # right padding
    labels[2, :] = -100  # completion truncated away entirely
    labels[2, 5] = 7  # ...except one token, so the row still contributes one position
    return labels


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


# --- float64 references, position by position, straight from the definitions -----------------------------------------


def ref_log_softmax(row):
    row = row.double()
    return row - torch.log(torch.exp(row - row.max()).sum()) - row.max()


def ref_per_position(student_row, teacher_row, target, kind, beta, temperature):
    log_ps = ref_log_softmax(student_row.double() / temperature)
    log_pt = ref_log_softmax(teacher_row.double() / temperature)
    ps, pt = log_ps.exp(), log_pt.exp()
    forward = (pt * (log_pt - log_ps)).sum()  # KL(teacher || student)
    reverse = (ps * (log_ps - log_pt)).sum()  # KL(student || teacher)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        divergence = forward
    elif kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        divergence = reverse
    else:
        log_m = torch.log((1 - beta) * ps + beta * pt)
        divergence = beta * (pt * (log_pt - log_m)).sum() + (1 - beta) * (ps * (log_ps - log_m)).sum()
    cross_entropy = -ref_log_softmax(student_row.double())[target]  # always at temperature 1
    return divergence, cross_entropy


def reference(student_logits, teacher_logits, labels, kind="forward_kl", beta=0.5, temperature=1.0, seq_weight=0.0):
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])  # logits at t predict the token at t + 1
            if target == -100:
                continue
            divergence, cross_entropy = ref_per_position(
                student_logits[b, t], teacher_logits[b, t], target, kind, beta, temperature
            )
            total = total + seq_weight * cross_entropy + (1 - seq_weight) * divergence
            count += 1
    return total / count


# --- plain losses -----------------------------------------------------------------------------------------------------


def test_sequence_loss_matches_reference(generator):
    student = torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    teacher = torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    labels = make_labels(generator)
    expected = reference(student, teacher, labels, seq_weight=1.0)
    assert sequence_loss(student, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    # Same number as HF's own shifted cross-entropy, the convention users know.
    hf = torch.nn.functional.cross_entropy(student[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    assert sequence_loss(student, labels).item() == pytest.approx(hf.item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.5])
@pytest.mark.parametrize(
    "loss_fn, kind, beta",
    [(forward_kl, "forward_kl", None), (reverse_kl, "reverse_kl", None), (jsd, "jsd", 0.5), (jsd, "jsd", 0.2)],
)
def test_divergences_match_reference(generator, loss_fn, kind, beta, temperature):
    student = 3 * torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    teacher = 3 * torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    labels = make_labels(generator)
    kwargs = {} if beta is None else {"beta": beta}
    got = loss_fn(student, teacher, labels, temperature=temperature, **kwargs)
    expected = reference(student, teacher, labels, kind, beta or 0.5, temperature)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    same = token_divergence(student, teacher, labels, kind=kind, beta=beta or 0.5, temperature=temperature)
    assert same.item() == pytest.approx(got.item(), rel=1e-6)


def test_divergences_are_directional_and_zero_on_equal_inputs(generator):
    student = 3 * torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    teacher = 3 * torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    labels = make_labels(generator)
    assert forward_kl(student, teacher, labels).item() == pytest.approx(reverse_kl(teacher, student, labels).item())
    assert forward_kl(student, teacher, labels).item() != pytest.approx(reverse_kl(student, teacher, labels).item())
    for loss_fn in (forward_kl, reverse_kl, jsd):
        assert loss_fn(student, student.clone(), labels).abs().item() < 1e-6


def test_jsd_beta_limits_follow_trl_gkd_convention(generator):
    student = 3 * torch.randn(BATCH, LENGTH, VOCAB, generator=generator, dtype=torch.float64)
    teacher = 3 * torch.randn(BATCH, LENGTH, VOCAB, generator=generator, dtype=torch.float64)
    labels = make_labels(generator)
    forward = forward_kl(student, teacher, labels)
    reverse = reverse_kl(student, teacher, labels)
    # Exact endpoints, as TRL special-cases them.
    assert jsd(student, teacher, labels, beta=0.0).item() == pytest.approx(forward.item(), rel=1e-12)
    assert jsd(student, teacher, labels, beta=1.0).item() == pytest.approx(reverse.item(), rel=1e-12)
    # The endpoints are the limits of the normalised JSD: near beta=0, JSD/beta -> KL(teacher||student); near beta=1,
    # JSD/(1-beta) -> KL(student||teacher). A swapped mixture convention fails these.
    eps = 1e-7
    assert (jsd(student, teacher, labels, beta=eps) / eps).item() == pytest.approx(forward.item(), rel=1e-3)
    assert (jsd(student, teacher, labels, beta=1 - eps) / eps).item() == pytest.approx(reverse.item(), rel=1e-3)
    # The symmetric JSD is bounded by log 2.
    assert 0 < jsd(student, teacher, labels, beta=0.5).item() < math.log(2)


def test_temperature_softens_both_distributions_without_t_squared(generator):
    student = 3 * torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    teacher = 3 * torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    labels = make_labels(generator)
    at_1 = forward_kl(student, teacher, labels, temperature=1.0)
    at_4 = forward_kl(student, teacher, labels, temperature=4.0)
    # Dividing the logits by T by hand at T=1 is the same thing: T divides both, and there is no T² factor.
    by_hand = forward_kl(student / 4.0, teacher / 4.0, labels, temperature=1.0)
    assert at_4.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert at_4.item() < at_1.item()  # softer distributions are closer


@pytest.mark.parametrize("sequence_weight", [0.0, 0.3, 1.0])
def test_mixed_loss_is_the_weighted_sum(generator, sequence_weight):
    student = torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    teacher = torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    labels = make_labels(generator)
    got = mixed_loss(
        student, teacher, labels, sequence_weight=sequence_weight, kind="jsd", beta=0.3, temperature=2.0
    )
    expected = reference(student, teacher, labels, "jsd", 0.3, 2.0, seq_weight=sequence_weight)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_plain_losses_send_no_gradient_to_the_teacher(generator):
    student = torch.randn(BATCH, LENGTH, VOCAB, generator=generator, requires_grad=True)
    teacher = torch.randn(BATCH, LENGTH, VOCAB, generator=generator, requires_grad=True)
    mixed_loss(student, teacher, make_labels(generator), sequence_weight=0.5, kind="jsd").backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    # Ignored positions (prompt, padding, and the last position, which predicts nothing) get no gradient.
    assert student.grad[0, :3].abs().sum() == 0
    assert student.grad[:, -1].abs().sum() == 0


def test_num_items_in_batch_divides_the_sum(generator):
    student = torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    teacher = torch.randn(BATCH, LENGTH, VOCAB, generator=generator)
    labels = make_labels(generator)
    num_tokens = int((labels[:, 1:] != -100).sum())
    for loss_fn in (sequence_loss, lambda s, l, **k: forward_kl(s, teacher, l, **k)):
        mean = loss_fn(student, labels)
        assert loss_fn(student, labels, num_items_in_batch=100).item() == pytest.approx(
            mean.item() * num_tokens / 100, rel=1e-6
        )


def test_argument_checks(generator):
    student = torch.randn(1, 4, VOCAB)
    labels = torch.randint(0, VOCAB, (1, 4))
    with pytest.raises(ValueError, match="beta"):
        jsd(student, student, labels, beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(student, student, labels, temperature=0.0)
    with pytest.raises(ValueError, match="kind"):
        token_divergence(student, student, labels, kind="kl")
    with pytest.raises(ValueError, match="kd_loss: sequence"):
        forward_kl(student, torch.randn(1, 4, VOCAB + 1), labels)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_divergence(torch.randn(1, 4, 3), torch.randn(VOCAB, 3), None, None, labels,
                                 sequence_weight=1.0, chunk_size=0)


# --- chunked path ---------------------------------------------------------------------------------------------------


def make_heads(generator, bias, dtype=torch.float64):
    student_hidden = torch.randn(BATCH, LENGTH, HIDDEN, generator=generator, dtype=dtype)
    teacher_hidden = torch.randn(BATCH, LENGTH, TEACHER_HIDDEN, generator=generator, dtype=dtype)
    student_weight = torch.randn(VOCAB, HIDDEN, generator=generator, dtype=dtype)
    teacher_weight = torch.randn(VOCAB, TEACHER_HIDDEN, generator=generator, dtype=dtype)
    student_bias = torch.randn(VOCAB, generator=generator, dtype=dtype) if bias else None
    teacher_bias = torch.randn(VOCAB, generator=generator, dtype=dtype) if bias else None
    tensors = [student_hidden, teacher_hidden, student_weight, teacher_weight, student_bias, teacher_bias]
    for tensor in tensors:
        if tensor is not None:
            tensor.requires_grad_(True)  # teachers too: the loss must still not send them a gradient
    return tensors


def capped(logits, cap):
    return logits if cap is None else cap * torch.tanh(logits / cap)


CHUNK_CASES = [
    # kind, beta, temperature, sequence_weight, bias, softcap
    ("forward_kl", 0.5, 1.0, 0.0, False, None),
    ("reverse_kl", 0.5, 2.0, 0.0, True, None),
    ("jsd", 0.3, 1.5, 0.0, False, 5.0),
    ("jsd", 0.0, 1.0, 0.4, True, None),
    ("jsd", 1.0, 0.7, 0.4, False, (None, 4.0)),
    ("forward_kl", 0.5, 2.0, 0.5, True, (3.0, None)),
    ("reverse_kl", 0.5, 1.0, 1.0, False, 5.0),
]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])  # 3 and 7 do not divide the 10 completion positions
@pytest.mark.parametrize("kind, beta, temperature, sequence_weight, bias, softcap", CHUNK_CASES)
def test_chunked_equals_unchunked_in_value_and_gradients(
    generator, chunk_size, kind, beta, temperature, sequence_weight, bias, softcap
):
    labels = make_labels(generator)
    assert int((labels[:, 1:] != -100).sum()) == 10
    s_hidden, t_hidden, s_weight, t_weight, s_bias, t_bias = make_heads(generator, bias)
    s_cap, t_cap = softcap if isinstance(softcap, tuple) else (softcap, softcap)

    student_logits = capped(torch.nn.functional.linear(s_hidden, s_weight, s_bias), s_cap)
    teacher_logits = capped(torch.nn.functional.linear(t_hidden, t_weight, t_bias), t_cap)
    expected = reference(student_logits, teacher_logits, labels, kind, beta, temperature, sequence_weight)
    plain = mixed_loss(
        student_logits, teacher_logits, labels, sequence_weight=sequence_weight, kind=kind, beta=beta,
        temperature=temperature,
    )
    student_params = [s_hidden, s_weight] + ([s_bias] if bias else [])
    plain_grads = torch.autograd.grad(plain, student_params)

    chunked = chunked_token_divergence(
        s_hidden, (s_weight, s_bias), t_hidden, (t_weight, t_bias), labels, kind=kind, beta=beta,
        temperature=temperature, chunk_size=chunk_size, sequence_weight=sequence_weight, logit_softcap=softcap,
    )
    assert chunked.item() == pytest.approx(expected.item(), rel=1e-10)
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-10)
    chunked.backward()
    for param, plain_grad in zip(student_params, plain_grads):
        assert plain_grad.abs().sum() > 0
        torch.testing.assert_close(param.grad, plain_grad, rtol=1e-9, atol=1e-12)
    for teacher_tensor in (t_hidden, t_weight, t_bias):
        assert teacher_tensor is None or teacher_tensor.grad is None


def test_chunked_accepts_linear_modules_and_frozen_lm_head(generator):
    labels = make_labels(generator)
    student_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False).double().requires_grad_(False)
    teacher_head = torch.nn.Linear(TEACHER_HIDDEN, VOCAB, bias=True).double()
    s_hidden = torch.randn(BATCH, LENGTH, HIDDEN, dtype=torch.float64, requires_grad=True)
    t_hidden = torch.randn(BATCH, LENGTH, TEACHER_HIDDEN, dtype=torch.float64)
    loss = chunked_token_divergence(s_hidden, student_head, t_hidden, teacher_head, labels, kind="jsd", chunk_size=5)
    expected = jsd(student_head(s_hidden), teacher_head(t_hidden), labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    loss.backward()
    assert s_hidden.grad.abs().sum() > 0
    assert student_head.weight.grad is None and teacher_head.weight.grad is None and teacher_head.bias.grad is None


def test_chunked_scales_with_upstream_gradient_and_num_items(generator):
    labels = make_labels(generator)
    s_hidden, t_hidden, s_weight, t_weight, _, _ = make_heads(generator, bias=False)
    kwargs = dict(kind="forward_kl", chunk_size=4, sequence_weight=0.3)
    base = chunked_token_divergence(s_hidden, s_weight, t_hidden, t_weight, labels, **kwargs)
    (grad_base,) = torch.autograd.grad(base, [s_hidden])
    scaled = chunked_token_divergence(s_hidden, s_weight, t_hidden, t_weight, labels, num_items_in_batch=45, **kwargs)
    (grad_scaled,) = torch.autograd.grad(3.0 * scaled, [s_hidden])
    assert scaled.item() == pytest.approx(base.item() * 10 / 45, rel=1e-10)
    torch.testing.assert_close(grad_scaled, grad_base * 3.0 * 10 / 45)


def test_chunked_components_and_no_grad(generator):
    labels = make_labels(generator)
    s_hidden, t_hidden, s_weight, t_weight, _, _ = make_heads(generator, bias=False)
    loss, divergence, cross_entropy = chunked_token_divergence(
        s_hidden, s_weight, t_hidden, t_weight, labels, kind="reverse_kl", sequence_weight=0.25, return_components=True
    )
    s_logits, t_logits = s_hidden @ s_weight.T, t_hidden @ t_weight.T
    assert divergence.item() == pytest.approx(reverse_kl(s_logits, t_logits, labels).item(), rel=1e-10)
    assert cross_entropy.item() == pytest.approx(sequence_loss(s_logits, labels).item(), rel=1e-10)
    assert loss.item() == pytest.approx(0.25 * cross_entropy.item() + 0.75 * divergence.item(), rel=1e-10)
    assert not divergence.requires_grad and not cross_entropy.requires_grad
    with torch.no_grad():
        evaluated = chunked_token_divergence(s_hidden, s_weight, t_hidden, t_weight, labels, kind="reverse_kl",
                                             sequence_weight=0.25)
    assert evaluated.item() == pytest.approx(loss.item(), rel=1e-12) and evaluated.grad_fn is None


def test_chunked_with_no_completion_tokens_is_zero_not_nan(generator):
    s_hidden, t_hidden, s_weight, t_weight, _, _ = make_heads(generator, bias=False)
    labels = torch.full((BATCH, LENGTH), -100)
    loss = chunked_token_divergence(s_hidden, s_weight, t_hidden, t_weight, labels, kind="jsd")
    loss.backward()
    assert loss.item() == 0.0 and torch.all(s_hidden.grad == 0)


def test_chunked_bf16_is_close_to_plain_bf16(generator):
    labels = make_labels(generator)
    s_hidden, t_hidden, s_weight, t_weight, _, _ = make_heads(generator, bias=False, dtype=torch.bfloat16)
    plain = forward_kl(s_hidden @ s_weight.T, t_hidden @ t_weight.T, labels, temperature=2.0)
    (plain_grad,) = torch.autograd.grad(plain, [s_hidden])
    chunked = chunked_token_divergence(s_hidden, s_weight, t_hidden, t_weight, labels, temperature=2.0, chunk_size=4)
    (chunked_grad,) = torch.autograd.grad(chunked, [s_hidden])
    assert chunked.dtype == torch.float32 and chunked_grad.dtype == torch.bfloat16
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-3)
    torch.testing.assert_close(chunked_grad, plain_grad, rtol=2e-2, atol=1e-4)


def saved_for_backward_elements(fn):
    """Number of tensor elements autograd keeps alive between forward and backward while `fn()` builds its graph."""
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(sizes)


def test_chunked_keeps_no_logits_alive_for_backward():
    vocab, hidden, batch, length = 4096, 8, 2, 64
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    s_hidden = torch.randn(batch, length, hidden, generator=generator, requires_grad=True)
    t_hidden = torch.randn(batch, length, hidden, generator=generator)
    s_weight = torch.randn(vocab, hidden, generator=generator)
    t_weight = torch.randn(vocab, hidden, generator=generator)
    one_logits_tensor = batch * length * vocab

    chunked = saved_for_backward_elements(
        lambda: chunked_token_divergence(s_hidden, s_weight, t_hidden, t_weight, labels, kind="jsd", chunk_size=16)
    )
    plain = saved_for_backward_elements(
        lambda: jsd(torch.nn.functional.linear(s_hidden, s_weight), torch.nn.functional.linear(t_hidden, t_weight),
                    labels)
    )
    assert plain > one_logits_tensor  # the measurement sees logits when they are kept...
    assert chunked < 4 * s_hidden.numel() + s_weight.numel()  # ...and the chunked loss keeps nothing vocab-sized


# --- vocabulary check -------------------------------------------------------------------------------------------------


def make_tokenizer(vocab: dict) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


WORDS = ["<unk>", "yes", "no", "the", "cat", "sat", "on", "mat"]


def test_same_vocabulary_is_accepted():
    teacher = make_tokenizer({word: i for i, word in enumerate(WORDS)})
    student = make_tokenizer({word: i for i, word in enumerate(WORDS)})
    assert_same_vocabulary(teacher, student)
    assert_same_vocabulary(teacher, student, teacher_vocab_size=len(WORDS), student_vocab_size=len(WORDS))
    # Both lm_heads padded beyond the tokenizer to the same size: fine.
    assert_same_vocabulary(teacher, student, teacher_vocab_size=64, student_vocab_size=64)


def test_different_vocabulary_is_refused():
    teacher = make_tokenizer({word: i for i, word in enumerate(WORDS)})
    student = make_tokenizer({word: i for i, word in enumerate(WORDS[:-1] + ["rug"])})
    with pytest.raises(ValueError, match="shared vocabulary; set `kd_loss: sequence`") as error:
        assert_same_vocabulary(teacher, student)
    assert "mat" in str(error.value) and "rug" in str(error.value)


def test_permuted_ids_are_refused():
    teacher = make_tokenizer({word: i for i, word in enumerate(WORDS)})
    permuted = {word: i for i, word in enumerate(WORDS)}
    permuted["cat"], permuted["mat"] = permuted["mat"], permuted["cat"]
    student = make_tokenizer(permuted)
    assert set(teacher.get_vocab()) == set(student.get_vocab())
    with pytest.raises(ValueError, match="different ids") as error:
        assert_same_vocabulary(teacher, student)
    assert "kd_loss: sequence" in str(error.value)


def test_added_token_difference_is_refused():
    teacher = make_tokenizer({word: i for i, word in enumerate(WORDS)})
    student = make_tokenizer({word: i for i, word in enumerate(WORDS)})
    student.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    with pytest.raises(ValueError, match="shared vocabulary"):
        assert_same_vocabulary(teacher, student)


def test_lm_head_sizes_are_checked():
    teacher = make_tokenizer({word: i for i, word in enumerate(WORDS)})
    student = make_tokenizer({word: i for i, word in enumerate(WORDS)})
    with pytest.raises(ValueError, match="different sizes"):
        assert_same_vocabulary(teacher, student, teacher_vocab_size=64, student_vocab_size=128)
    with pytest.raises(ValueError, match="lm_head has 5 rows"):
        assert_same_vocabulary(teacher, student, teacher_vocab_size=5, student_vocab_size=5)
