"""The exact attention kernel every controller calls.

`torch.nn.functional.scaled_dot_product_attention` picks the best exact backend available (cuDNN or
Flash on Hopper, memory-efficient elsewhere, math on CPU); `set_backend` pins one for benchmarks.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "auto": None,
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}
_backend = None


def set_backend(name: str) -> None:
    """Pin the SDPA backend by name (one of BACKENDS); 'auto' lets torch choose."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    _backend = BACKENDS[name]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√d) v for (B, heads, Nq, d) queries and (B, heads, Nk, d) keys/values."""
    with sdpa_kernel(_backend) if _backend is not None else contextlib.nullcontext():
        return F.scaled_dot_product_attention(q, k, v)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Attention output plus the softmax log-normaliser: ((B, heads, Nq, d), (B, heads, Nq) fp32 logsumexp).

    The log-sum-exp comes out of the fused kernel itself, so attention maps restricted to a few
    columns cost almost nothing on top (see `probabilities`): no Nq×Nk tensor is ever built.
    """
    scale = q.shape[-1] ** -0.5
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
    elif q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256 and \
            torch.cuda.get_device_capability(q.device)[0] >= 8:  # Flash needs Ampere or newer (not the V100)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False,
                                                                          scale=scale)[:2]
    return out, lse[..., : q.shape[2]].float()


def probabilities(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, queries, keys) -> torch.Tensor:
    """Softmax attention probabilities of selected queries over selected keys, fp32 (B, heads, nq, nk).

    Normalised over ALL keys through `lse` (from `attention_with_lse`), so they equal the entries
    of the full softmax(q kᵀ/√d) map. `queries` / `keys` index the sequence axis (slice, list or tensor).
    """
    scale = q.shape[-1] ** -0.5
    scores = q[:, :, queries].float() @ k[:, :, keys].float().transpose(-1, -2)
    return torch.exp(scores * scale - lse[:, :, queries, None])
