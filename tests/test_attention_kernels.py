import torch

from ditctrl.attention.kernels import attention, attention_with_lse, probabilities


def full_softmax(q, k):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)


def test_attention_with_lse_matches_the_naive_map():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16, generator=gen) for _ in range(3))
    out, lse = attention_with_lse(q, k, v)
    naive = full_softmax(q, k)
    assert torch.allclose(out, naive @ v, atol=1e-5)
    assert torch.allclose(out, attention(q, k, v), atol=1e-5)
    assert torch.allclose(lse, torch.logsumexp(q @ k.transpose(-1, -2) / 4, dim=-1), atol=1e-5)


def test_selected_probabilities_equal_the_full_softmax_entries():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 40, 16, generator=gen) for _ in range(3))
    _, lse = attention_with_lse(q, k, v)
    naive = full_softmax(q, k)
    video, text = slice(7, 40), [0, 2, 5]
    assert torch.allclose(probabilities(q, k, lse, video, text), naive[:, :, 7:, text], atol=1e-6)
    assert torch.allclose(probabilities(q, k, lse, slice(0, 40), slice(0, 40)).sum(-1), torch.ones(2, 3, 40), atol=1e-5)
