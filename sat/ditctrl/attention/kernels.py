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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask=None) -> torch.Tensor:
    """softmax(q kᵀ/√d) v for (B, heads, Nq, d) queries and (B, heads, Nk, d) keys/values."""
    guard = sdpa_kernel(_backend) if _backend is not None and attn_mask is None else contextlib.nullcontext()
    with guard:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
