"""Probe for issue 4's Hopper path: a minimal flash-attention forward whose K/V (and Q/O) move through TMA tensor
descriptors, with and without Triton's warp specialisation, and with part of the softmax's exp2 computed on the FMA
units instead of the special-function unit, timed beside SDPA-flash and ``pydiff.attention``.

    python3 benchmarks/attention_hopper_probe.py               # on a GPU: a table, last
    TRITON_INTERPRET=1 python3 benchmarks/attention_hopper_probe.py --check   # CPU: the probe kernel's math only

Not part of the library: it measures whether descriptors + warp specialisation beat the production kernel before
that kernel is rewritten around them. On sm_90a (Triton 3.9, compiled without a GPU) ``warp_specialize=True``
fails with plain pointer loads but builds with descriptor loads; the probe measures what that is worth. It takes
contiguous (B*H*N, D) tensors, N a multiple of the tiles, no variants.

The exp2 split: per score, one exp2 goes to the special-function unit, which on Hopper issues about as many exp2
per clock as the tensor cores finish scores at head dim 64 (16 per SM each), so the softmax can bound the loop
there. ``poly=2`` (``poly=4``) computes one of every 2 (4) exp2 as a degree-3 polynomial on the FMA units instead
(2^x = 2^round(x) * p(x - round(x)), relative error 7.5e-5, well under bf16's 3.9e-3), leaving the rest to
``ex2.approx``; ``--check`` verifies the polynomial's arithmetic on the CPU. Its machine code says it cannot pay
on Hopper (``python3 benchmarks/attention_resources.py --probe``, Triton 3.6, sm_90a): at D 64 the key loop is
bound by instruction issue before the special-function unit (0.072 and 0.066 SM cycles per score, the tensor
cores 0.0625), and each polynomial exp2 issues about eight instructions where ``ex2.approx`` issues one, so one in
four raises issue to 0.086 and one in two to 0.100; at D 128 the tensor cores bound it (0.125 against 0.059 and
0.065). The row sums on the tensor cores lower issue instead (0.065 at D 64).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import measure  # noqa: E402

LOG2E = 1.4426950408889634
#: (name, B, H, N, D) -- production shapes whose N is a multiple of 128
SHAPES = [("Flux", 1, 24, 4608, 128), ("SDXL self", 2, 10, 4096, 64), ("video 16k", 1, 24, 16384, 128)]
#: (BLOCK_M, BLOCK_N, warps, stages, warp_specialize, exp2 split: 0 all on the special-function unit, or 1 in
#: ``poly`` on the FMA units, row sums by the tensor cores)
TILES = [(128, 128, 8, 3, False, 0, False), (128, 128, 8, 3, True, 0, False), (128, 64, 8, 3, False, 0, False),
         (128, 64, 8, 3, True, 0, False), (128, 128, 8, 3, False, 2, False), (128, 128, 8, 3, False, 4, False),
         (128, 64, 8, 3, False, 2, False), (128, 64, 8, 3, False, 4, False), (128, 128, 8, 3, False, 0, True),
         (128, 64, 8, 3, False, 0, True)]

#: 2^f on [-0.5, 0.5], degree 3, near-minimax in relative error (7.5e-5), float32 bit patterns for the PTX
POLY_COEFFS = (0x3F7FFB49, 0x3F31798D, 0x3E786F0D, 0x3D61FBAF)
# 2^x as 2^n * p(f), n = round(x) and f = x - n in [-0.5, 0.5]: adding 1.5 * 2^23 rounds x into the low mantissa
# bits, from where a shift by 23 moves n into the exponent field; x is clamped to -125 first so 2^n * p(f) stays a
# normal float (masked scores, -inf, give 2^-125 instead of 0, negligible against the row maximum's 1).
_POLY_PTX = """
    max.ftz.f32 x, {src}, 0fC2FA0000;
    add.rn.ftz.f32 j, x, 0f4B400000;
    sub.rn.ftz.f32 r, j, 0f4B400000;
    sub.rn.ftz.f32 f, x, r;
    fma.rn.ftz.f32 p, f, 0f{c3:08X}, 0f{c2:08X};
    fma.rn.ftz.f32 p, p, f, 0f{c1:08X};
    fma.rn.ftz.f32 p, p, f, 0f{c0:08X};
    mov.b32 n, j;
    shl.b32 n, n, 23;
    mov.b32 b, p;
    add.s32 b, b, n;
    mov.b32 {dst}, b;"""


def _split_exp2_ptx(pack: int) -> str:
    """PTX for ``pack`` exp2 at once: the last by the polynomial, the others by ``ex2.approx``."""
    c0, c1, c2, c3 = POLY_COEFFS
    lines = ["{", ".reg .f32 x, j, r, f, p;", ".reg .b32 n, b;"]
    lines += [f"ex2.approx.ftz.f32 ${i}, ${pack + i};" for i in range(pack - 1)]
    lines.append(_POLY_PTX.format(src=f"${2 * pack - 1}", dst=f"${pack - 1}", c0=c0, c1=c1, c2=c2, c3=c3))
    return "\n".join(lines + ["}"])


_EXP2_PTX_2 = tl.constexpr(_split_exp2_ptx(2))
_EXP2_PTX_4 = tl.constexpr(_split_exp2_ptx(4))


def poly_exp2_reference(x: torch.Tensor) -> torch.Tensor:
    """The polynomial path's arithmetic in float32 on the CPU (what ``_POLY_PTX`` computes, up to FMA rounding)."""
    c0, c1, c2, c3 = (torch.tensor([c], dtype=torch.int32).view(torch.float32) for c in POLY_COEFFS)
    x = x.float().clamp_min(-125.0)
    magic = torch.tensor(12582912.0)
    j = x + magic
    f = x - (j - magic)
    p = ((c3 * f + c2) * f + c1) * f + c0
    return (p.view(torch.int32) + (j.view(torch.int32) << 23)).view(torch.float32)


@triton.jit
def _exp2(x, POLY: tl.constexpr):
    """exp2 of a score tile: all on the special-function unit (POLY 0), or one element in POLY by the polynomial."""
    if POLY == 2:
        return tl.inline_asm_elementwise(_EXP2_PTX_2, "=f,=f,f,f", [x], dtype=tl.float32, is_pure=True, pack=2)
    elif POLY == 4:
        return tl.inline_asm_elementwise(_EXP2_PTX_4, "=f,=f,=f,=f,f,f,f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=4)
    else:
        return tl.math.exp2(x)


@triton.jit
def _probe_attn(Q, K, V, O, N, qk_scale, ROWS,
                D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr, POLY: tl.constexpr,
                ROWSUM_MMA: tl.constexpr):
    """One (batch x head) row block: online softmax in base 2 over K/V blocks loaded by TMA descriptors.
    ROWSUM_MMA: the softmax's row sums come from the tensor cores (P times a block of ones, 16 equal columns) instead
    of one add per score."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    dq = tl.make_tensor_descriptor(Q, shape=[ROWS, D], strides=[D, 1], block_shape=[BLOCK_M, D])
    dk = tl.make_tensor_descriptor(K, shape=[ROWS, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    dv = tl.make_tensor_descriptor(V, shape=[ROWS, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    do = tl.make_tensor_descriptor(O, shape=[ROWS, D], strides=[D, 1], block_shape=[BLOCK_M, D])
    row0 = bh * N + pid_m * BLOCK_M
    q = dq.load([row0, 0])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    sums = tl.zeros([BLOCK_M, 16], tl.float32)
    ones = tl.full([BLOCK_N, 16], 1.0, Q.dtype.element_ty)
    for start in tl.range(0, N, BLOCK_N, warp_specialize=WS):
        s = tl.dot(q, tl.trans(dk.load([bh * N + start, 0])))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = _exp2(s * qk_scale - m_new[:, None], POLY)
        alpha = tl.math.exp2(m_i - m_new)
        if not ROWSUM_MMA:
            l_i = l_i * alpha + tl.sum(p, 1)
        v = dv.load([bh * N + start, 0])
        p = p.to(v.dtype)
        if ROWSUM_MMA:
            sums = tl.dot(p, ones, sums * alpha[:, None])
        acc = tl.dot(p, v, acc * alpha[:, None])
        m_i = m_new
    if ROWSUM_MMA:
        l_i = tl.max(sums, 1)
    do.store([row0, 0], (acc / l_i[:, None]).to(O.dtype.element_ty))


def probe_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tile) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for contiguous (B, H, N, D) tensors, N a multiple of both tile sides."""
    block_m, block_n, warps, stages, ws, poly, rowsum = tile
    batch, heads, n, d = q.shape
    if n % block_m or n % block_n or not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
        raise ValueError(f"the probe takes contiguous tensors with N a multiple of {block_m} and {block_n}, got "
                         f"{tuple(q.shape)}")
    out = torch.empty_like(q)
    _probe_attn[(n // block_m, batch * heads)](
        q, k, v, out, n, LOG2E / math.sqrt(d), batch * heads * n, D=d, BLOCK_M=block_m, BLOCK_N=block_n, WS=ws,
        POLY=poly, ROWSUM_MMA=rowsum, num_warps=warps, num_stages=stages)
    return out


def check_cpu():
    """The probe's math under the Triton interpreter against float64 (no descriptor hardware needed), and the largest
    relative error of the polynomial exp2 over the softmax's range (scores minus the row maximum: <= 0)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 128, 64, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    out = probe_attention(q, k, v, (64, 32, 4, 2, False, 0, False))
    summed = probe_attention(q, k, v, (64, 32, 4, 2, False, 0, True))
    err = max(((o.double() - ref).norm() / ref.norm()).item() for o in (out, summed))
    x = torch.linspace(-124.0, 0.0, 2_000_001, dtype=torch.float64)
    poly = (poly_exp2_reference(x).double() / torch.exp2(x) - 1).abs().max().item()
    return err, poly


def run_gpu() -> list:
    import pydiff

    # device-side descriptors need a scratch allocation per launch
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    rows = []
    for name, b, h, n, d in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        flops = 4.0 * b * h * n * n * d
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())

        def tflops(fn):
            return flops / measure(fn, device="cuda", warmup=3, min_time=0.3).median / 1e12

        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = tflops(lambda: F.scaled_dot_product_attention(q, k, v))
        with pydiff.use_backend("triton"):
            ours = tflops(lambda: pydiff.attention(q, k, v))
        for tile in TILES:
            try:
                err = ((probe_attention(q, k, v, tile).float() - ref).norm() / ref.norm()).item()
                rows.append((name, d, tile, err, tflops(lambda: probe_attention(q, k, v, tile)), flash, ours))
            except Exception as exc:  # noqa: BLE001 - a tile that does not build is a finding, not a crash
                rows.append((name, d, tile, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}", None, flash,
                             ours))
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="CPU: the probe kernel's math under the interpreter")
    args = parser.parse_args(argv)
    if args.check or not torch.cuda.is_available():
        attention_err, poly_err = check_cpu()
        print(f"probe vs float64 SDPA, relative error: {attention_err:.2e}; polynomial exp2 on [-124, 0], largest "
              f"relative error: {poly_err:.2e}")
        return 0
    print("| shape | D | tile (M x N, warps, stages, warp-spec, exp2 split) | rel. error | probe TFLOP/s | "
          "sdpa-flash | pydiff |\n|---|---|---|---|---|---|---|")
    for name, d, tile, err, probe, flash, ours in run_gpu():
        cells = [name, str(d), f"{tile[0]}x{tile[1]} w{tile[2]} s{tile[3]} ws={tile[4]} poly={tile[5]}"
                 f"{' rowsum-mma' if tile[6] else ''}",
                 err if isinstance(err, str) else f"{err:.1e}", "-" if probe is None else f"{probe:.0f}",
                 f"{flash:.0f}", f"{ours:.0f}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
