"""Triton pair moments: per batch row, [sum a, sum b, sum a*a, sum b*b, sum a*b] into a float64 (B, 5) output.

Each program reduces one block of one row (float32 block sums, float64 for float64 data) and adds them, promoted
to float64, atomically into the zeroed output. A reduction must finish before its result is read, so it is a pass
of its own ahead of the step that uses it.
"""

import triton
import triton.language as tl

from .plans import launch_options

MOMENTS = 5


@triton.jit
def _pair_moments_kernel(a_ptr, b_ptr, out_ptr, inner, ACC_F64: tl.constexpr, BLOCK: tl.constexpr):
    # grid = (blocks over inner, batch)
    row = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inner
    offs += row * inner
    acc_ty = tl.float64 if ACC_F64 else tl.float32
    x = tl.load(a_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    y = tl.load(b_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    o = out_ptr + row * 5
    tl.atomic_add(o, tl.sum(x, axis=0).to(tl.float64))
    tl.atomic_add(o + 1, tl.sum(y, axis=0).to(tl.float64))
    tl.atomic_add(o + 2, tl.sum(x * x, axis=0).to(tl.float64))
    tl.atomic_add(o + 3, tl.sum(y * y, axis=0).to(tl.float64))
    tl.atomic_add(o + 4, tl.sum(x * y, axis=0).to(tl.float64))


def pair_moments_forward(kernel, a, b, out, batch, inner, block=None):
    """Launch ``kernel`` (the jitted or interpreted ``_pair_moments_kernel``) over contiguous [batch, inner] tensors.

    ``out`` is a zeroed float64 (batch, 5) tensor; all checks happen in the caller.
    """
    import torch

    if block is None:
        # Few large blocks under the interpreter (each program costs ~1 ms there); 4096 x 8 warps on a GPU.
        block = 4096 if a.is_cuda else max(16, min(1 << 16, triton.next_power_of_2(max(inner, 1))))
    grid = (triton.cdiv(inner, block), batch)
    kernel[grid](a, b, out, inner, ACC_F64=a.dtype == torch.float64, BLOCK=block, num_warps=8,
                 **launch_options(kernel))
