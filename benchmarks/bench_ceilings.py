"""Measured ceilings: device copy bandwidth (memory-bound kernels are judged against it) and matmul throughput
(attention is judged against it). Measured first, in the same run as everything else."""

from __future__ import annotations

from typing import Dict, List

import torch

from benchmarks.common import measure

TITLE = "Ceilings: copy bandwidth and matmul throughput"
ORDER = 0

_CACHE: Dict[str, Dict[str, float]] = {}


def copy_bandwidth(device: str, nbytes: int) -> float:
    """GB/s of a device-to-device copy (bytes read + bytes written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device=device, min_time=0.3)
    return 2 * nbytes / t.median / 1e9


def matmul_tflops(device: str, n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = measure(lambda: a @ b, device=device, min_time=0.3)
    return 2 * n**3 / t.median / 1e12


def ceilings(device: str, quick: bool) -> Dict[str, float]:
    """Cached per device, so every suite in one run reports fractions of the same measured ceiling."""
    key = f"{device}-{quick}"
    if key not in _CACHE:
        if device == "cuda":
            _CACHE[key] = {"copy_GBps": copy_bandwidth("cuda", 1 << 30),
                           "bf16_matmul_TFLOPs": matmul_tflops("cuda", 8192, torch.bfloat16),
                           "tf32_matmul_TFLOPs": _tf32(lambda: matmul_tflops("cuda", 8192, torch.float32))}
        else:
            _CACHE[key] = {"copy_GBps": copy_bandwidth("cpu", (64 if quick else 256) << 20),
                           "fp32_matmul_TFLOPs": matmul_tflops("cpu", 1024 if quick else 2048, torch.float32)}
    return _CACHE[key]


def _tf32(fn):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return fn()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def run(quick: bool, device: str, progress: bool = False) -> List[Dict[str, object]]:
    return [{"area": "ceilings", "name": k, "value": v} for k, v in ceilings(device, quick).items()]


def section(rows) -> str:
    lines = ["The ceilings every other figure is a fraction of.", "", "| ceiling | measured |", "|---|---|"]
    lines += [f"| {r['name']} | {r['value']:.3g} |" for r in rows]
    return "\n".join(lines)
