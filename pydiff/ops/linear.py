"""``pydiff::lincomb`` — the one-pass per-batch linear combination behind every fused step — and forward noising.

Definition (shared by all backends; see csrc/pydiff_core.h):
    d     = clamp(C[b, 0, :n] . in, -clamp, clamp)            (no clamp when clamp <= 0)
    out_o = C[b, 1 + o, :n] . in + C[b, 1 + o, n] * d
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch

from ..reference.lincomb import lincomb_reference
from . import native
from .backend import OpBackends

MAX_INPUTS = 10
MAX_OUTPUTS = 6
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

backends = OpBackends("pydiff::lincomb", gpu_order=("cuda", "triton", "torch"))
backends.op_reference(lincomb_reference)


def check_lincomb_args(inputs: Sequence[torch.Tensor], coefs: torch.Tensor, clamp: float) -> int:
    """Validate before any launch; returns n_out."""
    if not isinstance(inputs, (list, tuple)) or not 1 <= len(inputs) <= MAX_INPUTS:
        raise ValueError(f"inputs must be a list of 1..{MAX_INPUTS} tensors, got {type(inputs).__name__} "
                         f"of length {len(inputs) if hasattr(inputs, '__len__') else '?'}")
    first = inputs[0]
    for i, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"inputs[{i}] must be a tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"inputs[{i}] has dtype {t.dtype}; expected one of {SUPPORTED_DTYPES}")
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"inputs[{i}] is {tuple(t.shape)} {t.dtype} on {t.device}; expected "
                             f"{tuple(first.shape)} {first.dtype} on {first.device} like inputs[0]")
    if first.dim() < 1:
        raise ValueError("inputs must have a batch dimension (dim >= 1), got a 0-d tensor")
    if not isinstance(coefs, torch.Tensor) or coefs.dtype != torch.float64 or coefs.dim() != 3:
        raise ValueError(f"coefs must be a float64 tensor (1 or B, n_out+1, n_in+1), got "
                         f"{getattr(coefs, 'dtype', type(coefs).__name__)} {tuple(getattr(coefs, 'shape', ()))}")
    if coefs.device != first.device:
        raise ValueError(f"coefs is on {coefs.device}; expected {first.device} like the inputs")
    n_out = coefs.shape[1] - 1
    if coefs.shape[2] != len(inputs) + 1 or not 1 <= n_out <= MAX_OUTPUTS:
        raise ValueError(f"coefs must have shape (1 or {first.shape[0]}, n_out+1 with 1 <= n_out <= {MAX_OUTPUTS}, "
                         f"{len(inputs) + 1}); got {tuple(coefs.shape)}")
    if coefs.shape[0] not in (1, first.shape[0]):
        raise ValueError(f"coefs.shape[0] must be 1 or the batch size {first.shape[0]}, got {coefs.shape[0]}")
    if not math.isfinite(clamp):
        raise ValueError(f"clamp must be finite (<= 0 for none), got {clamp}")
    return n_out


@torch.library.custom_op("pydiff::lincomb", mutates_args=())
def lincomb_op(inputs: List[torch.Tensor], coefs: torch.Tensor, clamp: float) -> List[torch.Tensor]:
    check_lincomb_args(inputs, coefs, clamp)
    return run_lincomb(backends.select(inputs[0].device)[1], inputs, coefs, clamp)


def run_lincomb(impl, inputs: Sequence[torch.Tensor], coefs: torch.Tensor, clamp: float) -> List[torch.Tensor]:
    """Run backend ``impl`` on checked arguments: contiguous inputs, fresh contiguous outputs (one per coefs row).

    The op's body, shared with the sampling loop's direct path (pydiff/samplers/kernel.py), which checks once per
    run instead of once per call.
    """
    inputs = [t if t.is_contiguous() else t.contiguous() for t in inputs]
    outputs = [torch.empty_like(inputs[0], memory_format=torch.contiguous_format) for _ in range(coefs.shape[1] - 1)]
    if inputs[0].numel():
        impl(inputs, outputs, coefs if coefs.is_contiguous() else coefs.contiguous(), clamp)
    return outputs


@lincomb_op.register_fake
def _(inputs, coefs, clamp):
    n_out = check_lincomb_args(inputs, coefs, clamp)
    return [torch.empty_like(inputs[0], memory_format=torch.contiguous_format) for _ in range(n_out)]


def _save_for_backward(ctx, inputs, output):
    tensors, coefs, clamp = inputs
    ctx.save_for_backward(*tensors, coefs)
    ctx.clamp = clamp


def _backward(ctx, grads):
    """Gradients of the inputs and coefs: the torch reference's, recomputed (training paths are not the fused
    kernels' business; this keeps x_t = add_noise(x0, ...) differentiable in x0 and in alpha/sigma)."""
    *tensors, coefs = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        c = coefs.detach().requires_grad_(True)
        outs = lincomb_reference(leaves, c, ctx.clamp)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        found = torch.autograd.grad([o for o, _ in pairs], leaves + [c], [g for _, g in pairs], allow_unused=True)
    *tensor_grads, coef_grad = (torch.zeros_like(x) if g is None else g for x, g in zip(leaves + [c], found))
    return list(tensor_grads), coef_grad, None


lincomb_op.register_autograd(_backward, setup_context=_save_for_backward)


def _batch_inner(t: torch.Tensor) -> tuple[int, int]:
    batch = t.shape[0]
    return batch, (t.numel() // batch if batch else 0)


@backends.register("torch", usable=lambda device: None)
def _lincomb_torch(inputs, outputs, coefs, clamp):
    for out, ref in zip(outputs, lincomb_reference(inputs, coefs, clamp)):
        out.copy_(ref)


@backends.register("cpp", usable=native.cpp_why_not)
def _lincomb_cpp(inputs, outputs, coefs, clamp):
    batch, inner = _batch_inner(inputs[0])
    native.cpu_module().lincomb(
        [t.data_ptr() for t in inputs], [t.data_ptr() for t in outputs], batch, inner, coefs.data_ptr(),
        coefs.stride(0) if coefs.shape[0] > 1 else 0, float(clamp), native.DTYPE_CODES[inputs[0].dtype])


@backends.register("cuda", usable=native.cuda_why_not)
def _lincomb_cuda(inputs, outputs, coefs, clamp):
    batch, inner = _batch_inner(inputs[0])
    if batch > 65535:
        raise ValueError(f"the CUDA lincomb takes at most 65535 batch rows, got {batch}")
    with torch.cuda.device(inputs[0].device):
        stream = torch.cuda.current_stream().cuda_stream
        native.cuda_module().lincomb(
            [t.data_ptr() for t in inputs], [t.data_ptr() for t in outputs], batch, inner, coefs.data_ptr(),
            coefs.stride(0) if coefs.shape[0] > 1 else 0, float(clamp), native.DTYPE_CODES[inputs[0].dtype],
            stream)


@backends.register("triton", usable=native.triton_why_not)
def _lincomb_triton(inputs, outputs, coefs, clamp):
    from pydiff.kernels.lincomb import lincomb_forward

    batch, inner = _batch_inner(inputs[0])
    kernel = native.triton_kernel("lincomb", "_lincomb_kernel")
    if inputs[0].is_cuda:
        with torch.cuda.device(inputs[0].device):
            lincomb_forward(kernel, inputs, outputs, coefs, batch, inner, clamp)
    else:
        lincomb_forward(kernel, inputs, outputs, coefs, batch, inner, clamp)


def lincomb(inputs: Sequence[torch.Tensor], coefs: torch.Tensor, clamp: float = 0.0) -> List[torch.Tensor]:
    """One pass: ``out_o = C[:,1+o] . [inputs, d]`` with ``d = clamp(C[:,0] . inputs)``; see the module doc."""
    check_lincomb_args(inputs, coefs, clamp)
    return torch.ops.pydiff.lincomb(list(inputs), coefs, float(clamp))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor,
              target: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """Fused forward noising: ``x_t = alpha_t x0 + sigma_t noise`` and the training target, in one pass.

    x0, noise: (B, ...); alpha_t, sigma_t: (B,) or scalars (tensors or floats) on any device.
    target: "epsilon" | "v_prediction" (alpha noise - sigma x0; Salimans & Ho 2022) | "sample" (x0) |
    "flow_prediction" (noise - x0, rectified flow with alpha = 1 - t, sigma = t).
    Returns (x_t, target) in x0's dtype.
    """
    if not isinstance(x0, torch.Tensor) or not isinstance(noise, torch.Tensor):
        raise TypeError("x0 and noise must be tensors")
    if x0.dim() < 1:
        raise ValueError("x0 must have a batch dimension")
    if noise.shape != x0.shape or noise.dtype != x0.dtype or noise.device != x0.device:
        raise ValueError(f"noise is {tuple(noise.shape)} {noise.dtype} on {noise.device}; expected "
                         f"{tuple(x0.shape)} {x0.dtype} on {x0.device} like x0")
    batch = x0.shape[0]

    def per_batch(value, name):
        v = torch.as_tensor(value, dtype=torch.float64, device=x0.device)
        if v.dim() > 1 or (v.dim() == 1 and v.shape[0] not in (1, batch)):
            raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {tuple(v.shape)}")
        return v.reshape(-1).expand(batch)

    alpha = per_batch(alpha_t, "alpha_t")
    sigma = per_batch(sigma_t, "sigma_t")
    one, zero = torch.ones_like(alpha), torch.zeros_like(alpha)
    targets = {
        "epsilon": (zero, one),
        "v_prediction": (-sigma, alpha),
        "sample": (one, zero),
        "flow_prediction": (-one, one),
    }
    if target not in targets:
        raise ValueError(f"target must be one of {tuple(targets)}, got {target!r}")
    c_x0, c_noise = targets[target]
    # rows: intermediate (unused), x_t, target; columns: x0, noise, intermediate
    coefs = torch.stack([
        torch.stack([zero, zero, zero], -1),
        torch.stack([alpha, sigma, zero], -1),
        torch.stack([c_x0, c_noise, zero], -1),
    ], 1)
    x_t, tgt = lincomb([x0, noise], coefs)
    return x_t, tgt
