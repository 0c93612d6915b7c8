"""Probe for issue 4's Hopper path: a minimal flash-attention forward whose K/V (and Q/O) move through TMA tensor
descriptors, with and without Triton's warp specialisation, timed beside SDPA-flash and ``pydiff.attention``.

    python3 benchmarks/attention_hopper_probe.py               # on a GPU: a table, last
    TRITON_INTERPRET=1 python3 benchmarks/attention_hopper_probe.py --check   # CPU: the probe kernel's math only

Not part of the library: it measures whether descriptors + warp specialisation beat the production kernel before
that kernel is rewritten around them. On sm_90a (Triton 3.9, compiled without a GPU) ``warp_specialize=True``
fails with plain pointer loads but builds with descriptor loads; the probe measures what that is worth. It takes
contiguous (B*H*N, D) tensors, N a multiple of the tiles, no variants.
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
#: (BLOCK_M, BLOCK_N, warps, stages, warp_specialize)
TILES = [(128, 128, 8, 3, False), (128, 128, 8, 3, True), (128, 64, 8, 3, False), (128, 64, 8, 3, True),
         (128, 64, 4, 3, False)]


@triton.jit
def _probe_attn(Q, K, V, O, N, qk_scale, ROWS,
                D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr):
    """One (batch x head) row block: online softmax in base 2 over K/V blocks loaded by TMA descriptors."""
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
    for start in tl.range(0, N, BLOCK_N, warp_specialize=WS):
        s = tl.dot(q, tl.trans(dk.load([bh * N + start, 0])))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = dv.load([bh * N + start, 0])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    do.store([row0, 0], (acc / l_i[:, None]).to(O.dtype.element_ty))


def probe_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tile) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for contiguous (B, H, N, D) tensors, N a multiple of both tile sides."""
    block_m, block_n, warps, stages, ws = tile
    batch, heads, n, d = q.shape
    if n % block_m or n % block_n or not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
        raise ValueError(f"the probe takes contiguous tensors with N a multiple of {block_m} and {block_n}, got "
                         f"{tuple(q.shape)}")
    out = torch.empty_like(q)
    _probe_attn[(n // block_m, batch * heads)](
        q, k, v, out, n, LOG2E / math.sqrt(d), batch * heads * n, D=d, BLOCK_M=block_m, BLOCK_N=block_n, WS=ws,
        num_warps=warps, num_stages=stages)
    return out


def check_cpu() -> float:
    """The probe's math under the Triton interpreter against float64 (no descriptors hardware needed)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 128, 64, generator=g) for _ in range(3))
    out = probe_attention(q, k, v, (64, 32, 4, 2, False))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    return ((out.double() - ref).norm() / ref.norm()).item()


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
        print(f"probe vs float64 SDPA, relative error: {check_cpu():.2e}")
        return 0
    print("| shape | D | tile (M x N, warps, stages, warp-spec) | rel. error | probe TFLOP/s | sdpa-flash | "
          "pydiff |\n|---|---|---|---|---|---|---|")
    for name, d, tile, err, probe, flash, ours in run_gpu():
        cells = [name, str(d), f"{tile[0]}x{tile[1]} w{tile[2]} s{tile[3]} ws={tile[4]}",
                 err if isinstance(err, str) else f"{err:.1e}", "-" if probe is None else f"{probe:.0f}",
                 f"{flash:.0f}", f"{ours:.0f}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
