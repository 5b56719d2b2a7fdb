"""Where a forward's device time goes: attention kernels, matrix products (GEMMs) and everything else.

On CUDA the entries are the GPU kernels (self device time); on the CPU, the aten operators (self CPU time),
so that the same report runs in a CPU dry run.
"""
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

TOP_KERNELS = 8
# Name fragments, lower case. Attention: cuDNN SDPA ("..._sdpa_..._fprop"), Flash ("flash_fwd"), memory-efficient
# ("fmha_cutlass"), CPU SDPA ops. GEMMs: cuBLAS/cuBLASLt ("gemm", Hopper's "nvjet_..."), CUTLASS, aten's products.
ATTENTION_NAMES = ("sdpa", "flash", "fmha", "attention")
GEMM_NAMES = ("gemm", "nvjet", "cutlass", "xmma", "cublas", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def kernel_kind(name: str) -> str:
    """'attention', 'gemm' or 'other' for a kernel or operator name (attention is checked first: its CUTLASS
    kernels are attention, not GEMMs)."""
    lower = name.lower()
    if any(fragment in lower for fragment in ATTENTION_NAMES):
        return "attention"
    if any(fragment in lower for fragment in GEMM_NAMES):
        return "gemm"
    return "other"


def time_shares(kernel_microseconds: dict) -> dict:
    """{name: µs} -> total ms, each kind's share of it, and the TOP_KERNELS longest kernels."""
    total = sum(kernel_microseconds.values())
    kinds = {"attention": 0.0, "gemm": 0.0, "other": 0.0}
    for name, microseconds in kernel_microseconds.items():
        kinds[kernel_kind(name)] += microseconds
    top = sorted(kernel_microseconds.items(), key=lambda item: -item[1])[:TOP_KERNELS]
    return {"total_ms": total / 1000, "shares": {kind: value / total if total else None for kind, value in kinds.items()},
            "top_kernels": [{"name": name, "ms": us / 1000, "share": us / total, "kind": kernel_kind(name)}
                            for name, us in top]}


def profile_device_time(run, cuda: bool) -> dict:
    """`run()` once under torch.profiler; the time shares of its GPU kernels (CUDA) or CPU operators."""
    device_type = DeviceType.CUDA if cuda else DeviceType.CPU
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as profiler:
        run()
    own_time = "self_device_time_total" if cuda else "self_cpu_time_total"
    kernels = {entry.key: getattr(entry, own_time) for entry in profiler.key_averages()
               if entry.device_type == device_type and getattr(entry, own_time) > 0}
    return {"measured": "GPU kernels, self device time" if cuda else "CPU operators, self CPU time",
            **time_shares(kernels)}
