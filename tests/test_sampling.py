"""The CPU sampler of `generation`: the same distribution as `torch.multinomial`, faster, and only inside generate."""

import torch

from peft_transfer.generation import cpu_sampling, inverse_cdf_multinomial


def test_inverse_cdf_sampling_draws_from_the_given_distribution():
    p = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 1.0]])
    torch.manual_seed(0)
    draws = torch.cat([inverse_cdf_multinomial(p, 1) for _ in range(20_000)], dim=1)
    assert draws.shape == (2, 20_000) and draws.dtype == torch.long
    freq = torch.stack([torch.bincount(row, minlength=4) for row in draws]).float() / draws.shape[1]
    # 20k draws: the standard error of a frequency is below 0.0035; 0.015 is over 4 of them.
    assert torch.allclose(freq[0], p[0], atol=0.015), freq
    assert freq[0, 1] == 0 and torch.equal(freq[1], p[1])  # probability 0 is never drawn
    # Unnormalised rows (what a filter leaves) are sampled in proportion.
    torch.manual_seed(0)
    half = inverse_cdf_multinomial(torch.tensor([[2.0, 2.0]]).repeat(20_000, 1), 1).float().mean()
    assert abs(half - 0.5) < 0.015


def test_other_calls_go_to_torch_and_the_patch_is_scoped():
    original = torch.multinomial
    with cpu_sampling(torch.device("cpu")):
        assert torch.multinomial is inverse_cdf_multinomial
        several = torch.multinomial(torch.ones(3, 5), 2)  # more than one sample: torch's own
        assert several.shape == (3, 2)
        torch.manual_seed(1)
        a = torch.multinomial(torch.ones(4, 7), 1)
        torch.manual_seed(1)
        assert torch.equal(a, torch.multinomial(torch.ones(4, 7), 1))  # seeded: reproducible
    assert torch.multinomial is original
