"""The exact attention kernel every controller calls.

`torch.nn.functional.scaled_dot_product_attention` picks the best exact backend available (cuDNN or
Flash on Hopper, memory-efficient elsewhere, math on CPU); `set_backend` pins one, and the pin holds
for `attention_with_lse` too: it calls the pinned backend's own kernel (or, for math, the explicit
softmax), and a pinned backend that cannot take the inputs is an error naming the call.
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
MATH_QUERY_CHUNK = 1024  # query rows per explicit-softmax block of the math log-sum-exp
_backend = "auto"


def set_backend(name: str) -> None:
    """Pin the SDPA backend by name (one of BACKENDS); 'auto' lets torch choose."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    _backend = name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√d) v for (B, heads, Nq, d) queries and (B, heads, Nk, d) keys/values."""
    pinned = BACKENDS[_backend]
    with sdpa_kernel(pinned) if pinned is not None else contextlib.nullcontext():
        return F.scaled_dot_product_attention(q, k, v)


def _auto_lse_backend(q: torch.Tensor) -> str:
    """CPU: torch's CPU flash kernel. CUDA: Flash (fp16/bf16, head dim <= 256, Ampere or newer), else memory-efficient."""
    if q.device.type == "cpu":
        return "flash"
    if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256 and \
            torch.cuda.get_device_capability(q.device)[0] >= 8:  # Flash needs Ampere or newer (not the V100)
        return "flash"
    return "efficient"


def _flash_lse(q, k, v, scale):
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]


def _efficient_lse(q, k, v, scale):
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=scale)[:2]


def _cudnn_lse(q, k, v, scale):
    return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False, scale=scale)[:2]


def _math_lse(q, k, v, scale):
    """The explicit softmax in fp32, a block of query rows at a time (what the math backend computes)."""
    outs, lses = [], []
    keys, values = k.float().transpose(-1, -2), v.float()
    for start in range(0, q.shape[2], MATH_QUERY_CHUNK):
        scores = (q[:, :, start:start + MATH_QUERY_CHUNK].float() @ keys) * scale  # (B, heads, chunk, Nk)
        lse = torch.logsumexp(scores, dim=-1)
        outs.append((torch.exp(scores - lse[..., None]) @ values).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


LSE_KERNELS = {"flash": _flash_lse, "efficient": _efficient_lse, "cudnn": _cudnn_lse, "math": _math_lse}


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Attention output plus the softmax log-normaliser: ((B, heads, Nq, d), (B, heads, Nq) fp32 logsumexp).

    The log-sum-exp comes out of the fused kernel itself, so attention maps restricted to a few
    columns cost almost nothing on top (see `probabilities`): no Nq×Nk tensor is ever built
    (except with the math backend pinned, which builds blocks of MATH_QUERY_CHUNK rows).
    """
    backend = _auto_lse_backend(q) if _backend == "auto" else _backend
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:  # the fused kernels read rows of d
        q, k, v = (t.contiguous() for t in (q, k, v))
    try:
        out, lse = LSE_KERNELS[backend](q, k, v, q.shape[-1] ** -0.5)
    except (RuntimeError, NotImplementedError) as error:
        raise RuntimeError(f"attention_with_lse: the {backend!r} attention backend cannot run {q.dtype} "
                           f"queries of head dim {q.shape[-1]} on {q.device} ({error}); pin another "
                           f"attention_backend or use auto") from error
    batch, heads, queries = q.shape[:3]
    return out, lse.reshape(batch, heads, -1)[..., :queries].float()  # efficient pads, cuDNN adds an axis


@contextlib.contextmanager
def pinned_backend(name: str):
    """Pin the SDPA backend `name` for the block; the backend pinned before is restored afterwards."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def backend_runs(name: str, device, dtype: torch.dtype, head_dim: int = 64) -> bool:
    """Whether torch's SDPA runs with the backend `name` pinned here (tiny probe of `attention`; a backend
    offered here must then also run `attention_with_lse`)."""
    with pinned_backend(name):
        try:
            q = torch.randn(2, 2, 40, head_dim, device=device, dtype=dtype)
            attention(q, q, q)
            return True
        except RuntimeError:
            return False


def available_backends(device, dtype: torch.dtype, head_dim: int = 64) -> list[str]:
    """The pinnable backends (not 'auto') that run on `device` in `dtype` at this head dim."""
    return [name for name in BACKENDS if name != "auto" and backend_runs(name, device, dtype, head_dim)]


def probabilities(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, queries, keys) -> torch.Tensor:
    """Softmax attention probabilities of selected queries over selected keys, fp32 (B, heads, nq, nk).

    Normalised over ALL keys through `lse` (from `attention_with_lse`), so they equal the entries
    of the full softmax(q kᵀ/√d) map. `queries` / `keys` index the sequence axis (slice, list or tensor).
    """
    scale = q.shape[-1] ** -0.5
    scores = q[:, :, queries].float() @ k[:, :, keys].float().transpose(-1, -2)
    return torch.exp(scores * scale - lse[:, :, queries, None])
