"""Triton lincomb: per-batch linear combination of up to 10 element tensors with one clamped intermediate.

The shape shared by every fused sampler step and by forward noising (see ``csrc/pydiff_core.h``):
``d = clamp(C[b,0,:n_in] . in)``, ``out_o = C[b,1+o,:n_in] . in + C[b,1+o,n_in] * d``. One read of every input
and one write of every output: one pass over memory.
"""

import triton
import triton.language as tl

from .plans import launch_options

MAX_INPUTS = 10
MAX_OUTPUTS = 6


@triton.jit
def _fold_input(v, c_ptr, k: tl.constexpr, ROW: tl.constexpr, N_OUT: tl.constexpr, d, a0, a1, a2, a3, a4, a5):
    d += tl.load(c_ptr + k).to(v.dtype) * v
    a0 += tl.load(c_ptr + ROW + k).to(v.dtype) * v
    if N_OUT > 1:
        a1 += tl.load(c_ptr + 2 * ROW + k).to(v.dtype) * v
    if N_OUT > 2:
        a2 += tl.load(c_ptr + 3 * ROW + k).to(v.dtype) * v
    if N_OUT > 3:
        a3 += tl.load(c_ptr + 4 * ROW + k).to(v.dtype) * v
    if N_OUT > 4:
        a4 += tl.load(c_ptr + 5 * ROW + k).to(v.dtype) * v
    if N_OUT > 5:
        a5 += tl.load(c_ptr + 6 * ROW + k).to(v.dtype) * v
    return d, a0, a1, a2, a3, a4, a5


@triton.jit
def _store_output(out_ptr, acc, d, c_ptr, o: tl.constexpr, ROW: tl.constexpr, N_IN: tl.constexpr, offs, mask,
                  ROUND_BF16: tl.constexpr):
    acc += tl.load(c_ptr + (1 + o) * ROW + N_IN).to(acc.dtype) * d
    if ROUND_BF16:
        # Round to nearest even by hand before the float32 -> bfloat16 cast: the GPU cast already does this, but
        # Triton's interpreter truncates, which would double the error of every bfloat16 test on CPU.
        bits = acc.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        acc = bits.to(tl.float32, bitcast=True)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lincomb_kernel(
    in0, in1, in2, in3, in4, in5, in6, in7, in8, in9,
    out0, out1, out2, out3, out4, out5,
    coefs_ptr, coef_batch_stride, inner, clamp_hi, clamp_lo,
    N_IN: tl.constexpr, N_OUT: tl.constexpr, HAS_CLAMP: tl.constexpr, ACC_F64: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # grid = (blocks over inner, batch): the batch row is uniform per program, so coefficients are scalars.
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inner
    offs += b * inner
    c_ptr = coefs_ptr + b * coef_batch_stride
    ROW: tl.constexpr = N_IN + 1
    acc_ty = tl.float64 if ACC_F64 else tl.float32
    d = tl.zeros([BLOCK], dtype=acc_ty)
    a0 = tl.zeros([BLOCK], dtype=acc_ty)
    a1 = tl.zeros([BLOCK], dtype=acc_ty)
    a2 = tl.zeros([BLOCK], dtype=acc_ty)
    a3 = tl.zeros([BLOCK], dtype=acc_ty)
    a4 = tl.zeros([BLOCK], dtype=acc_ty)
    a5 = tl.zeros([BLOCK], dtype=acc_ty)
    d, a0, a1, a2, a3, a4, a5 = _fold_input(tl.load(in0 + offs, mask=mask).to(acc_ty), c_ptr, 0, ROW, N_OUT,
                                            d, a0, a1, a2, a3, a4, a5)
    if N_IN > 1:
        d, a0, a1, a2, a3, a4, a5 = _fold_input(tl.load(in1 + offs, mask=mask).to(acc_ty), c_ptr, 1, ROW, N_OUT,
                                                d, a0, a1, a2, a3, a4, a5)
    if N_IN > 2:
        d, a0, a1, a2, a3, a4, a5 = _fold_input(tl.load(in2 + offs, mask=mask).to(acc_ty), c_ptr, 2, ROW, N_OUT,
                                                d, a0, a1, a2, a3, a4, a5)
    if N_IN > 3:
        d, a0, a1, a2, a3, a4, a5 = _fold_input(tl.load(in3 + offs, mask=mask).to(acc_ty), c_ptr, 3, ROW, N_OUT,
                                                d, a0, a1, a2, a3, a4, a5)
    if N_IN > 4:
        d, a0, a1, a2, a3, a4, a5 = _fold_input(tl.load(in4 + offs, mask=mask).to(acc_ty), c_ptr, 4, ROW, N_OUT,
                                                d, a0, a1, a2, a3, a4, a5)
    if N_IN > 5:
        d, a0, a1, a2, a3, a4, a5 = _fold_input(tl.load(in5 + offs, mask=mask).to(acc_ty), c_ptr, 5, ROW, N_OUT,
                                                d, a0, a1, a2, a3, a4, a5)
    if N_IN > 6:
        d, a0, a1, a2, a3, a4, a5 = _fold_input(tl.load(in6 + offs, mask=mask).to(acc_ty), c_ptr, 6, ROW, N_OUT,
                                                d, a0, a1, a2, a3, a4, a5)
    if N_IN > 7:
        d, a0, a1, a2, a3, a4, a5 = _fold_input(tl.load(in7 + offs, mask=mask).to(acc_ty), c_ptr, 7, ROW, N_OUT,
                                                d, a0, a1, a2, a3, a4, a5)
    if N_IN > 8:
        d, a0, a1, a2, a3, a4, a5 = _fold_input(tl.load(in8 + offs, mask=mask).to(acc_ty), c_ptr, 8, ROW, N_OUT,
                                                d, a0, a1, a2, a3, a4, a5)
    if N_IN > 9:
        d, a0, a1, a2, a3, a4, a5 = _fold_input(tl.load(in9 + offs, mask=mask).to(acc_ty), c_ptr, 9, ROW, N_OUT,
                                                d, a0, a1, a2, a3, a4, a5)
    if HAS_CLAMP:
        # scalar float arguments arrive as float32: the bound is passed as hi + lo so float64 data is clamped at
        # the float64 value (for float32 accumulation lo is below its resolution)
        bound = tl.cast(clamp_hi, acc_ty) + tl.cast(clamp_lo, acc_ty)
        d = tl.minimum(tl.maximum(d, -bound), bound)
    _store_output(out0, a0, d, c_ptr, 0, ROW, N_IN, offs, mask, ROUND_BF16)
    if N_OUT > 1:
        _store_output(out1, a1, d, c_ptr, 1, ROW, N_IN, offs, mask, ROUND_BF16)
    if N_OUT > 2:
        _store_output(out2, a2, d, c_ptr, 2, ROW, N_IN, offs, mask, ROUND_BF16)
    if N_OUT > 3:
        _store_output(out3, a3, d, c_ptr, 3, ROW, N_IN, offs, mask, ROUND_BF16)
    if N_OUT > 4:
        _store_output(out4, a4, d, c_ptr, 4, ROW, N_IN, offs, mask, ROUND_BF16)
    if N_OUT > 5:
        _store_output(out5, a5, d, c_ptr, 5, ROW, N_IN, offs, mask, ROUND_BF16)


def lincomb_forward(kernel, inputs, outputs, coefs, batch, inner, clamp, block=None):
    """Launch ``kernel`` (the jitted or interpreted ``_lincomb_kernel``) over contiguous [batch, inner] tensors.

    ``coefs`` is float64 (Bc, n_out+1, n_in+1) with Bc in {1, batch}; all checks happen in the caller.
    """
    import torch

    n_in, n_out = len(inputs), len(outputs)
    clamp = float(max(clamp, 0.0))
    clamp_hi = float(torch.tensor(clamp, dtype=torch.float32))  # the float32 nearest the bound
    if block is None:
        # Few large blocks under the interpreter (each program costs ~1 ms there); 1024 x 4 warps on a GPU.
        block = 1024 if inputs[0].is_cuda else max(16, min(1 << 16, triton.next_power_of_2(max(inner, 1))))
    ins = list(inputs) + [inputs[0]] * (MAX_INPUTS - n_in)
    outs = list(outputs) + [outputs[0]] * (MAX_OUTPUTS - n_out)
    grid = (triton.cdiv(inner, block), batch)
    kernel[grid](
        *ins, *outs, coefs, coefs.stride(0) if coefs.shape[0] > 1 else 0, inner, clamp_hi, clamp - clamp_hi,
        N_IN=n_in, N_OUT=n_out, HAS_CLAMP=clamp > 0, ACC_F64=inputs[0].dtype == torch.float64,
        ROUND_BF16=inputs[0].dtype == torch.bfloat16, BLOCK=block,
        num_warps=4, **launch_options(kernel),
    )
