"""Lazy access to the compiled core and to Triton, with the reason when one is missing."""

from __future__ import annotations

import functools
import importlib

import torch


@functools.lru_cache(maxsize=None)
def _load(name: str):
    try:
        return importlib.import_module(f"pydiff.{name}"), None
    except ImportError as exc:  # not built (e.g. PYDIFF_CUDA=OFF) or not loadable here
        return None, f"pydiff.{name} is not importable: {exc}"


def cpu_module():
    """The C++/OpenMP module or None."""
    return _load("_C_cpu")[0]


def cuda_module():
    """The CUDA C++ module or None (imported only when first needed, so CPU-only machines never touch it)."""
    return _load("_C_cuda")[0]


def cpp_why_not(device: torch.device) -> str | None:
    if device.type != "cpu":
        return "the C++ backend runs on CPU tensors"
    return _load("_C_cpu")[1]


def cuda_why_not(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "the CUDA backend runs on CUDA tensors"
    return _load("_C_cuda")[1]


@functools.lru_cache(maxsize=None)
def triton_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed: {exc}"
    return None


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1 when triton was first imported)."""
    from triton import knobs

    return bool(knobs.runtime.interpret)


def triton_why_not(device: torch.device) -> str | None:
    return _triton_why_not(device.type)


@functools.lru_cache(maxsize=None)
def _triton_why_not(device_type: str) -> str | None:
    """Per device type, once: every op call asks (the interpreter switch is fixed when triton is imported)."""
    if device_type not in ("cuda", "cpu"):
        return "Triton runs on CUDA tensors (and on CPU tensors through its interpreter)"
    if triton_error() is not None:
        return triton_error()
    # The interpreter is chosen when triton (and its standard library of jitted functions) is imported, so it
    # cannot be switched per call: CPU tensors need TRITON_INTERPRET=1 from the start, CUDA tensors need it off.
    if device_type == "cpu" and not triton_interpreting():
        return "Triton on CPU tensors needs the interpreter: set TRITON_INTERPRET=1 before triton is imported"
    if device_type == "cuda" and triton_interpreting():
        return "TRITON_INTERPRET=1 is set, so Triton would interpret instead of compiling for the GPU"
    return None


def triton_kernel(module: str, name: str):
    """Kernel ``name`` of ``pydiff.kernels.<module>`` (imported on first use)."""
    return getattr(importlib.import_module(f"pydiff.kernels.{module}"), name)


DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
