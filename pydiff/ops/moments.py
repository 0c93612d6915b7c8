"""``pydiff::pair_moments`` — per-batch raw moments of two tensors, the reduction behind guidance rescale.

Definition (shared by all backends; see csrc/pydiff_core.h): for a, b of shape (B, ...),
    out[b] = [sum a, sum b, sum a*a, sum b*b, sum a*b]   over every non-batch element of row b,
a float64 (B, 5) tensor accumulated in float64 (the Triton kernel promotes float32 block sums to float64).
Raw moments rather than centred ones, so one pass reads each input once; a variance from them,
``(sum a*a - (sum a)^2 / n) / (n - 1)``, loses about log10(1 + mean^2 / var) of float64's 16 digits: nothing for
model outputs, whose mean is not large against their spread.
"""

from __future__ import annotations

import torch

from . import native
from .backend import OpBackends
from .linear import SUPPORTED_DTYPES, _batch_inner

#: the five sums per row, in the output's column order
MOMENTS = ("sum_a", "sum_b", "sum_aa", "sum_bb", "sum_ab")

backends = OpBackends("pydiff::pair_moments", gpu_order=("cuda", "triton", "torch"))


def check_pair_moments_args(a: torch.Tensor, b: torch.Tensor) -> None:
    """Validate before any launch (metadata only)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; expected one of {SUPPORTED_DTYPES}")
    if a.dim() < 1:
        raise ValueError("a must have a batch dimension (dim >= 1), got a 0-d tensor")
    if b.shape != a.shape or b.dtype != a.dtype or b.device != a.device:
        raise ValueError(f"b is {tuple(b.shape)} {b.dtype} on {b.device}; expected {tuple(a.shape)} {a.dtype} on "
                         f"{a.device} like a")


def pair_moments_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The five per-row sums of a and b (B, ...) computed in float64: float64 (B, 5)."""
    batch, inner = _batch_inner(a)
    x = a.reshape(batch, inner).to(torch.float64)
    y = b.reshape(batch, inner).to(torch.float64)
    return torch.stack([x.sum(1), y.sum(1), (x * x).sum(1), (y * y).sum(1), (x * y).sum(1)], dim=1)


backends.op_reference(pair_moments_reference)


@torch.library.custom_op("pydiff::pair_moments", mutates_args=())
def pair_moments_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    check_pair_moments_args(a, b)
    return run_pair_moments(backends.select(a.device)[1], a, b)


@pair_moments_op.register_fake
def _(a, b):
    check_pair_moments_args(a, b)
    return a.new_empty((a.shape[0], len(MOMENTS)), dtype=torch.float64)


def run_pair_moments(impl, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Run backend ``impl`` on checked arguments (contiguous copies of strided inputs; a fresh (B, 5) output).

    The op's body, shared with the sampling loop's direct path (pydiff/samplers/kernel.py).
    """
    a = a if a.is_contiguous() else a.contiguous()
    b = b if b.is_contiguous() else b.contiguous()
    out = torch.empty((a.shape[0], len(MOMENTS)), dtype=torch.float64, device=a.device)
    if a.numel():
        impl(a, b, out)
    else:
        out.zero_()  # empty rows sum to zero
    return out


@backends.register("torch", usable=lambda device: None)
def _pair_moments_torch(a, b, out):
    out.copy_(pair_moments_reference(a, b))


@backends.register("cpp", usable=native.cpp_why_not)
def _pair_moments_cpp(a, b, out):
    batch, inner = _batch_inner(a)
    native.cpu_module().pair_moments(a.data_ptr(), b.data_ptr(), batch, inner, out.data_ptr(),
                                     native.DTYPE_CODES[a.dtype])


@backends.register("cuda", usable=native.cuda_why_not)
def _pair_moments_cuda(a, b, out):
    batch, inner = _batch_inner(a)
    if batch > 65535:
        raise ValueError(f"the CUDA pair_moments takes at most 65535 batch rows, got {batch}")
    with torch.cuda.device(a.device):
        native.cuda_module().pair_moments(a.data_ptr(), b.data_ptr(), batch, inner, out.data_ptr(),
                                          native.DTYPE_CODES[a.dtype], torch.cuda.current_stream().cuda_stream)


@backends.register("triton", usable=native.triton_why_not)
def _pair_moments_triton(a, b, out):
    from pydiff.kernels.moments import pair_moments_forward

    batch, inner = _batch_inner(a)
    kernel = native.triton_kernel("moments", "_pair_moments_kernel")
    out.zero_()  # the kernel adds block sums into it
    if a.is_cuda:
        with torch.cuda.device(a.device):
            pair_moments_forward(kernel, a, b, out, batch, inner)
    else:
        pair_moments_forward(kernel, a, b, out, batch, inner)


def pair_moments(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per batch row of a, b (B, ...): [sum a, sum b, sum a*a, sum b*b, sum a*b] as float64 (B, 5)."""
    check_pair_moments_args(a, b)
    return torch.ops.pydiff.pair_moments(a, b)
