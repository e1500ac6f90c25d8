"""Performance accounting shared by the benchmarks: FLOP counts, device peaks, peak memory."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable

import torch

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets.
BF16_PEAK_TFLOPS: dict[str, float] = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
}


def bf16_peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The device's bf16 peak, or ``override``; None when unknown (a CPU, an unlisted GPU)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for model in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):  # "H100 SXM" before "H100"
        if model.replace(" ", "").lower() in name.replace(" ", "").lower():
            return BF16_PEAK_TFLOPS[model]
    return None


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmuls, convolutions and attention ``fn`` runs (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset; on a CPU the process's peak RSS (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def fraction_of_peak(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    return None if not peak_tflops or seconds <= 0 else flops / seconds / (peak_tflops * 1e12)
