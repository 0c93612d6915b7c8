"""Attention: ``pydiff.attention`` (the fused Triton kernel) against PyTorch SDPA, one row per SDPA backend
available (flash, efficient, cuDNN), at production shapes (Flux, SD3, SDXL self/cross, SD1.5's head dim 40,
16k-token video), and each fused variant against the stock op sequence it replaces (concatenate + SDPA + split,
masked SDPA, two SDPA calls, norm + RoPE + SDPA, a loop over segments). Throughput in TFLOP/s (4 B H Nq Nk D per
attention) beside the bf16 matmul ceiling measured in the same run.

On a CPU the suite still runs, on tiny shapes, with "ours" being the torch backend (the reference: SDPA plus the
variant math) — a smoke test of the suite, not a performance claim.

    python benchmarks/bench_attention.py [--device cuda] [--quick] [--out DIR]   # prints the table last
    python benchmarks/bench_attention.py --experiments --out DIR   # the experiments alone, for a short GPU lease
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make the repository root importable for ``benchmarks.*``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import comparison_row, comparison_table, measure, measure_graph, tile_label  # noqa: E402

TITLE = "Attention: fused kernel vs SDPA backends and the stock op sequences"
ORDER = 20


@dataclass
class Shape:
    name: str
    batch: int
    heads: int
    n_q: int
    n_k: int
    head_dim: int

    def __str__(self):
        return f"B{self.batch} H{self.heads} N{self.n_q}x{self.n_k} D{self.head_dim}"


# Production shapes (batch 2 where classifier-free guidance doubles it; Flux is guidance-distilled).
GPU_SHAPES = [
    Shape("Flux (4096 img + 512 txt)", 1, 24, 4608, 4608, 128),
    Shape("SD3 (4096 img + 154 txt)", 2, 24, 4250, 4250, 64),
    Shape("SDXL self-attention", 2, 10, 4096, 4096, 64),
    Shape("SDXL cross-attention", 2, 10, 4096, 77, 64),
    Shape("SD1.5 self-attention (D 40)", 2, 8, 4096, 4096, 40),
    Shape("video 16k tokens", 1, 24, 16384, 16384, 128),
]
#: text tokens of Flux's joint call (the rest of GPU_SHAPES[0]'s tokens are the image's)
FLUX_TEXT_TOKENS = 512
GPU_QUICK = (0, 2, 3)
CPU_SHAPES = [
    Shape("tiny self-attention", 1, 2, 256, 256, 64),
    Shape("tiny cross-attention", 1, 2, 256, 77, 64),
    Shape("tiny self-attention (D 40)", 1, 2, 256, 256, 40),
]


def _flops(batch, heads, n_q, n_k, head_dim) -> float:
    return 4.0 * batch * heads * n_q * n_k * head_dim


def _qkv(shape: Shape, device, dtype, gen):
    """Random q (B, H, Nq, D), k and v (B, H, Nk, D) of a shape, drawn from ``gen`` in that order."""
    q = torch.randn(shape.batch, shape.heads, shape.n_q, shape.head_dim, device=device, dtype=dtype, generator=gen)
    k = torch.randn(shape.batch, shape.heads, shape.n_k, shape.head_dim, device=device, dtype=dtype, generator=gen)
    return q, k, torch.randn(k.shape, device=device, dtype=dtype, generator=gen)


def _sdpa_backends(device: str) -> Dict[str, Optional[object]]:
    """name -> torch.nn.attention.SDPBackend (None: PyTorch's own choice), the default first."""
    if device != "cuda":
        return {"sdpa (default)": None}
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:
        return {"sdpa (default)": None}
    names = {"sdpa flash": "FLASH_ATTENTION", "sdpa efficient": "EFFICIENT_ATTENTION", "sdpa cudnn": "CUDNN_ATTENTION"}
    # the default: what F.scaled_dot_product_attention picks by itself (and what the stock sequences below call)
    return {"sdpa (default)": None,
            **{name: getattr(SDPBackend, attr) for name, attr in names.items() if hasattr(SDPBackend, attr)}}


def _sdpa_context(backend):
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backend)


def _row(name, shape, ours, peer, peer_timing, flops, ceiling, **extra):
    ours_tflops = flops / ours.median / 1e12
    return comparison_row("attention", name, shape, ours, peer, peer_timing,
                          ours_TFLOPs=ours_tflops, peer_TFLOPs=flops / peer_timing.median / 1e12,
                          ours_of_ceiling=ours_tflops / ceiling if ceiling else None, **extra)


def _tile() -> Dict[str, object]:
    """The tile the autotuner picked for our last timed call, and every candidate's time (empty when not tuning)."""
    if os.environ.get("PYDIFF_ATTENTION_AUTOTUNE") != "1" or not torch.cuda.is_available():
        return {}
    from pydiff.kernels.attention import _attn_fwd_autotuned

    def name(cfg) -> str:
        return tile_label((cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages,
                           cfg.kwargs.get("USE_TMA", False), cfg.kwargs.get("WARP_SPEC", False)))

    best = getattr(_attn_fwd_autotuned, "best_config", None)
    timings = getattr(_attn_fwd_autotuned, "configs_timings", None) or {}
    return {"tile": name(best) if best is not None else None,
            "tile_ms": {name(c): (t[0] if isinstance(t, (list, tuple)) else t) for c, t in timings.items()}}


def _loads_summary(row) -> str:
    """The tuner's best time with pointer loads, with tensor-descriptor loads (Hopper) and, where it tried them,
    warp-specialised, when it tried the first two."""
    times = row.get("tile_ms") or {}
    kinds = {"pointers": "", "tma": " tma", "tma ws": " tma ws"}
    best = {kind: min((t for name, t in times.items() if name.endswith(end) and
                       not (kind == "pointers" and " tma" in name)), default=None)
            for kind, end in kinds.items()}
    if best["pointers"] is None or best["tma"] is None:
        return ""
    return "; tuner best: " + ", ".join(f"{kind} {t:.4f} ms" for kind, t in best.items() if t is not None)


def _time(fn: Callable[[], object], device: str, quick: bool):
    """Eager time per call, 10 calls back to back per sample on CUDA (host launch work overlaps the device, as in
    a pipeline; the host-time row shows where it does not keep up)."""
    return measure(fn, device=device, warmup=2, min_repeat=3 if quick else 5, min_time=0.05 if quick else 0.25,
                   batch=10 if device == "cuda" else 1)


def _checked_against_sdpa(ours_fn, q, k, v) -> float:
    """Our output against SDPA's default backend's (``_max_diff``): its largest difference."""
    return _max_diff([ours_fn(q, k, v)], [F.scaled_dot_product_attention(q, k, v)])


def _plain_rows(shape: Shape, device, dtype, quick, ceiling, ours_fn) -> List[Dict[str, object]]:
    """Ours vs each SDPA backend on one (B, H, N, D) shape; an unavailable backend gives a note, not a crash, and
    an output that is not SDPA's an error row instead of timings."""
    q, k, v = _qkv(shape, device, dtype, torch.Generator(device=device).manual_seed(0))
    flops = _flops(shape.batch, shape.heads, shape.n_q, shape.n_k, shape.head_dim)
    try:
        diff = _checked_against_sdpa(ours_fn, q, k, v)
    except RuntimeError as exc:
        return [{"area": "attention", "name": shape.name, "shape": str(shape), "peer": "sdpa (default)",
                 "error": str(exc).splitlines()[0][:160]}]
    ours = _time(lambda: ours_fn(q, k, v), device, quick)
    tile = _tile()
    rows = []
    graphed = []

    def ours_graph():
        if not graphed:
            graphed.append(measure_graph(lambda: ours_fn(q, k, v)))
        return graphed[0]

    for peer, backend in _sdpa_backends(device).items():
        try:
            with _sdpa_context(backend):
                F.scaled_dot_product_attention(q, k, v)
                peer_timing = _time(lambda: F.scaled_dot_product_attention(q, k, v), device, quick)
        except RuntimeError as exc:  # this backend does not take these inputs (or is not built)
            rows.append({"area": "attention", "name": shape.name, "shape": str(shape), "peer": peer,
                         "unavailable": str(exc).splitlines()[0][:160]})
            continue
        rows.append(_row(shape.name, str(shape), ours, peer, peer_timing, flops, ceiling, max_diff=diff, **tile))
        if device == "cuda" and peer == "sdpa flash":
            # device time alone: at small shapes the eager figures above are mostly host launch work (flash only:
            # the efficient backend draws RNG offsets, whose capture state leaks when a capture fails)
            try:
                with _sdpa_context(backend):
                    peer_graph = measure_graph(lambda: F.scaled_dot_product_attention(q, k, v))
                rows.append(_row(f"{shape.name} (graph replay)", str(shape), ours_graph(),
                                 f"{peer} (graph replay)", peer_graph, flops, ceiling))
            except RuntimeError as exc:
                rows.append({"area": "attention", "name": f"{shape.name} (graph replay)", "shape": str(shape),
                             "peer": f"{peer} (graph replay)", "unavailable": str(exc).splitlines()[0][:160]})
    return rows


def _host_rows(device, dtype, attention) -> List[Dict[str, object]]:
    """Host time per call: 200 back-to-back calls at SDXL's cross-attention shape (15-20 us of device time), so the
    host's launch work sets the pace; ours vs SDPA's default backend."""
    gen = torch.Generator(device=device).manual_seed(2)
    n_q = 4096 if device == "cuda" else 64
    q = torch.randn(2, 10, n_q, 64, device=device, dtype=dtype, generator=gen)
    k, v = (torch.randn(2, 10, 77, 64, device=device, dtype=dtype, generator=gen) for _ in range(2))

    def per_call(fn):
        # the device idles between samples, so each sample of 200 launches takes the host's pace
        return measure(fn, device=device, warmup=20, min_repeat=5, max_repeat=5, min_time=0.0, batch=200)

    ours = per_call(lambda: attention(q, k, v))
    peer = per_call(lambda: F.scaled_dot_product_attention(q, k, v))
    return [comparison_row("attention", "host time per call (200 back-to-back calls)", f"B2 H10 N{n_q}x77 D64",
                           ours, "sdpa (default)", peer)]


def _tuned_rows(device, dtype, ceiling, attention) -> List[Dict[str, object]]:
    """The library's own path (autotuned on a GPU) at the experiments' plain shapes (Flux, SD3, SDXL self), device
    time under graph replay against SDPA's flash backend, with the tuner's tile: the time an experiment has to beat
    to be adopted, measured in the same run as the experiment rows."""
    rows = []
    for shape in GPU_SHAPES[:3]:
        q, k, v = _qkv(shape, device, dtype, torch.Generator(device=device).manual_seed(6))
        name = f"{shape.name}: autotuned (graph replay)"
        try:
            diff = _checked_against_sdpa(attention, q, k, v)
        except RuntimeError as exc:
            rows.append({"area": "attention", "name": name, "shape": str(shape), "peer": "sdpa (default)",
                         "error": str(exc).splitlines()[0][:160]})
            continue
        ours = measure_graph(lambda: attention(q, k, v))
        tile = dict(_tile(), max_diff=diff)
        flash = _sdpa_backends(device).get("sdpa flash")
        with _sdpa_context(flash):
            peer = measure_graph(lambda: F.scaled_dot_product_attention(q, k, v))
        rows.append(_row(name, str(shape), ours,
                         f"{'sdpa flash' if flash is not None else 'sdpa (default)'} (graph replay)", peer,
                         _flops(shape.batch, shape.heads, shape.n_q, shape.n_k, shape.head_dim), ceiling, **tile))
    return rows


def _experiment_rows(device, dtype, ceiling) -> List[Dict[str, object]]:
    """The experiments, each against the same tile without it, device time under graph replay, most telling first (a
    stage cut short by its time limit keeps what it measured): the tuner's extra descriptor-load tiles against its
    H200 choices (``_descriptor_tile_rows``), Flux's joint call with its keys joined, warp-specialised on Hopper
    (``_joined_key_rows``), the softmax overlapped with the next block's scores (``_overlap_rows``), the stream-K
    rows, the QK prologue over head groups (``_prologue_rows``); then the kernel's ROWSUM_MMA experiment (the
    softmax's row sums on the tensor cores) against row sums by adds at the production shapes of head dim 64 and 128
    (each head dim's default tile, and for head dim 64 the autotuner's choice on an H200, 64 x 64). On a GPU, a
    first pass over the rows compiles every kernel they launch at once and runs and times nothing
    (``plans.compile_only``; ``_experiment_row``), instead of each compiling before its row is timed."""
    from pydiff.kernels import plans

    if device == "cuda":
        with plans.compile_only() as at_once:
            if at_once:
                _each_experiment(device, dtype, ceiling)
    return _each_experiment(device, dtype, ceiling)


def _each_experiment(device, dtype, ceiling) -> List[Dict[str, object]]:
    """``_experiment_rows``' rows, in its order."""
    from pydiff.kernels.attention import _attn_fwd_kernel, attention_forward, default_config

    rows = (_descriptor_tile_rows(device, dtype, ceiling) + _joined_key_rows(device, dtype, ceiling)
            + _overlap_rows(device, dtype, ceiling)
            + _stream_k_rows(device, dtype, ceiling) + _prologue_rows(device, dtype, ceiling))
    for shape in [GPU_SHAPES[i] for i in (0, 1, 2)]:
        q, k, v = _qkv(shape, device, dtype, torch.Generator(device=device).manual_seed(3))
        out = torch.empty_like(q)
        flops = _flops(shape.batch, shape.heads, shape.n_q, shape.n_k, shape.head_dim)
        tiles = [default_config(shape.head_dim, False)] + ([(64, 64, 4, 3)] if shape.head_dim == 64 else [])
        for bm, bn, warps, stages in tiles:
            def launch(rowsum, bm=bm, bn=bn, warps=warps, stages=stages):
                attention_forward(_attn_fwd_kernel, q, k, v, out, scale=shape.head_dim ** -0.5, block_m=bm,
                                  block_n=bn, num_warps=warps, num_stages=stages, rowsum_mma=rowsum)

            rows.append(_experiment_row(f"{shape.name}: row sums by MMA, {tile_label((bm, bn, warps, stages))}",
                                        str(shape), lambda: launch(True), "same tile, row sums by adds",
                                        lambda: launch(False), flops, ceiling, (out,)))
    return rows


def _descriptor_tile_rows(device, dtype, ceiling) -> List[Dict[str, object]]:
    """The autotuner's extra descriptor-load candidates against the H200 tuner's choices, device time under graph
    replay: at head dim 128 (Flux, 16k-token video, Flux's joint call with its QK norms and RoPE) the
    single-warpgroup tile (``_ONE_WARPGROUP_TILES``: two CTAs per SM, out of step) against 128 x 128 x 8 warps x 3
    stages (one CTA per SM, its two warpgroups in step); at head dim 64 (SD3, SDXL self-attention) the 64 x 128 tile
    (``_WIDE_KEY_BLOCK_TILES``: three CTAs per SM, fewer instructions per score) against 64 x 64 x 4 warps x 3
    stages. The tuner times them too; these rows put each pair side by side in every run."""
    from pydiff.kernels.attention import (_ONE_WARPGROUP_TILES, _WIDE_KEY_BLOCK_TILES, _attn_fwd_kernel,
                                          attention_forward)

    gen = torch.Generator(device=device).manual_seed(7)
    self_attention = [shape for shape in GPU_SHAPES if shape.n_k == shape.n_q]
    cases = ([(_plain_case(shape, device, dtype, gen), 128) for shape in self_attention if shape.head_dim == 128]
             + [(_flux_joint_case(device, dtype, gen), 128)]
             + [(_plain_case(shape, device, dtype, gen), 64) for shape in self_attention if shape.head_dim == 64])
    rows = []
    for (label, shape_text, (q, k, v, out), extra, flops), head_dim in cases:
        def launch(bm, bn, warps, stages, tma, q=q, k=k, v=v, out=out, extra=extra):
            attention_forward(_attn_fwd_kernel, q, k, v, out, scale=q.shape[-1] ** -0.5, block_m=bm, block_n=bn,
                              num_warps=warps, num_stages=stages, use_tma=tma, **extra)

        tiles, kind = (_ONE_WARPGROUP_TILES, "one warpgroup per CTA") if head_dim == 128 else \
            (_WIDE_KEY_BLOCK_TILES, "64 rows x 128 keys")
        peer, peer_kind = ((128, 128, 8, 3), "two warpgroups per CTA") if head_dim == 128 else \
            ((64, 64, 4, 3), "pointer loads")
        for bm, bn, warps, stages in sorted(tiles):
            rows.append(_experiment_row(
                f"{label}: {kind}, {tile_label((bm, bn, warps, stages, True))}", shape_text,
                lambda tile=(bm, bn, warps, stages): launch(*tile, True),
                f"{peer_kind}, {tile_label(peer)}", lambda: launch(*peer, False), flops, ceiling,
                _outputs(out, extra)))
    return rows


def _joined_key_rows(device, dtype, ceiling) -> List[Dict[str, object]]:
    """Flux's joint call with its keys joined first (``attention_forward(join_keys=True)``: the key prologue writes
    both streams' keys into one tensor, the values are copied beside them, and one key loop serves both query
    streams) against a key loop per stream, device time under graph replay. First at the same tile, which measures
    what joining costs or saves without warp specialisation (one more pass, over the values, against one key loop
    fewer): at 128 x 128 x 8 warps x 3 stages with descriptor loads, the plain kernel's best at head dim 128 on the
    H200, and at 128 x 64 x 8 warps x 3 stages, where the H200 tuner timed the joint kernel 6% slower than the plain
    one (0.576 against 0.543 ms; 0.5% at 128 x 128 x 2 stages). Then, on Hopper, each warp-specialised tile for head
    dim 128, which takes one key loop only and so needs the keys joined, against the two-loop kernel at 128 x 128."""
    from pydiff.kernels.attention import _HAS_WARP_SPEC, _WARP_SPEC_TILES, _attn_fwd_kernel, attention_forward

    label, shape_text, (q, k, v, out), extra, flops = _flux_joint_case(device, dtype, torch.Generator(
        device=device).manual_seed(8))

    def launch(bm, bn, warps, stages, tma, ws=False, join=False):
        attention_forward(_attn_fwd_kernel, q, k, v, out, scale=q.shape[-1] ** -0.5, block_m=bm, block_n=bn,
                          num_warps=warps, num_stages=stages, use_tma=tma, warp_spec=ws, join_keys=join, **extra)

    pairs = [(tile, tile) for tile in ((128, 128, 8, 3, True), (128, 64, 8, 3, False))]
    if device == "cuda" and torch.cuda.get_device_capability(device)[0] == 9 and _HAS_WARP_SPEC:
        pairs += [((*tile, True, True), pairs[0][1]) for tile, widest in sorted(_WARP_SPEC_TILES.items())
                  if widest >= 128]
    return [_experiment_row(f"{label}: keys joined, {tile_label(tile)}", shape_text,
                            lambda tile=tile: launch(*tile[:5], ws=len(tile) > 5, join=True),
                            f"{'same tile' if tile == peer else tile_label(peer)}, a key loop per stream",
                            lambda peer=peer: launch(*peer), flops, ceiling, _outputs(out, extra))
            for tile, peer in pairs]


def _overlap_rows(device, dtype, ceiling) -> List[Dict[str, object]]:
    """The kernel's OVERLAP experiment (``attention_forward(overlap=True)``: each key block's softmax runs while the
    tensor cores compute the next block's scores, FlashAttention-3's intra-warpgroup overlap) against the same tile
    without it, at tiles where the overlapped loop fits an SM (``attention_resources.py --overlap``, sm_90a):
    Flux at 128 x 128 with descriptor loads and 2 stages (3 would need 288 KiB of shared memory), at 128 x 64, and
    at 64 x 64 x 4 warps x 2 stages with descriptors (two CTAs per SM, out of step, each overlapping: 175
    registers, 112 KiB; the H200 tuner timed 64 x 64 x 3 stages at 460 TFLOP/s against 501 for its choice); SD3
    (partial key blocks) at 64 x 64 with 2 stages (4 CTAs per SM with and without); SDXL self-attention at the
    autotuner's H200 tile, 64 x 64 x 3 stages (3 CTAs per SM instead of 4), also with the row sums on the tensor
    cores (ROWSUM_MMA) against neither; Flux's joint call with its QK norms and RoPE at 128 x 128 x 2 stages. The
    autotuned kernel's time at these shapes, from the same run, is what an experiment must beat."""
    from pydiff.kernels.attention import _attn_fwd_kernel, attention_forward

    rows = []
    flux, sd3, sdxl = GPU_SHAPES[0], GPU_SHAPES[1], GPU_SHAPES[2]
    for shape, (bm, bn, warps, stages, tma), rowsum in (
            (flux, (128, 128, 8, 2, True), False), (flux, (128, 64, 8, 3, False), False),
            (flux, (64, 64, 4, 2, True), False),
            (sd3, (64, 64, 4, 2, False), False), (sdxl, (64, 64, 4, 3, False), False),
            (sdxl, (64, 64, 4, 3, False), True)):
        q, k, v = _qkv(shape, device, dtype, torch.Generator(device=device).manual_seed(5))
        out = torch.empty_like(q)

        def launch(on, q=q, k=k, v=v, out=out, rowsum=rowsum, tile=dict(block_m=bm, block_n=bn, num_warps=warps,
                                                                         num_stages=stages, use_tma=tma)):
            attention_forward(_attn_fwd_kernel, q, k, v, out, scale=q.shape[-1] ** -0.5, overlap=on,
                              rowsum_mma=on and rowsum, **tile)

        rows.append(_experiment_row(
            f"{shape.name}: softmax under the next scores' MMA{' + row sums by MMA' if rowsum else ''}, "
            f"{tile_label((bm, bn, warps, stages, tma))}",
            str(shape), lambda: launch(True), "same tile, softmax after the scores" + (", row sums by adds"
                                                                                       if rowsum else ""),
            lambda: launch(False), _flops(shape.batch, shape.heads, shape.n_q, shape.n_k, shape.head_dim), ceiling,
            (out,)))
    label, shape_text, (q, k, v, out), extra, flops = _flux_joint_case(device, dtype, torch.Generator(
        device=device).manual_seed(5))
    tile = dict(block_m=128, block_n=128, num_warps=8, num_stages=2, use_tma=True)

    def joint(overlap):
        attention_forward(_attn_fwd_kernel, q, k, v, out, scale=q.shape[-1] ** -0.5, overlap=overlap, **tile,
                          **extra)

    rows.append(_experiment_row(f"{label}: softmax under the next scores' MMA, 128x128 w8 s2 tma", shape_text,
                                lambda: joint(True), "same tile, softmax after the scores", lambda: joint(False),
                                flops, ceiling, _outputs(out, extra)))
    return rows


def _prologue_rows(device, dtype, ceiling) -> List[Dict[str, object]]:
    """Flux's joint call with the QK prologue taking 4 and 8 heads per program (``prologue_heads``: a program's heads
    share the RoPE table rows it reads; each group size that divides the head count) against one head per program,
    at the H200 tuner's tile for that call (64 x 64 x 4 warps x 3 stages). The attention pass is the same on both
    sides, so the difference is the prologue's: on the H200 the call took 0.662 ms under graph replay against 0.574
    ms for the tuner's kernel alone, ~88 us for four passes over ~113 MB, while one head per program reads 16 KB of
    float32 cos/sin for each 4 KB of a head's q or k."""
    from pydiff.kernels.attention import _attn_fwd_kernel, attention_forward

    label, shape_text, (q, k, v, out), extra, flops = _flux_joint_case(device, dtype, torch.Generator(
        device=device).manual_seed(6))
    bm, bn, warps, stages = tile = (64, 64, 4, 3)

    def joint(heads):
        attention_forward(_attn_fwd_kernel, q, k, v, out, scale=q.shape[-1] ** -0.5, prologue_heads=heads,
                          block_m=bm, block_n=bn, num_warps=warps, num_stages=stages, **extra)

    return [_experiment_row(f"{label}: QK prologue {heads} heads per program, {tile_label(tile)}", shape_text,
                            lambda heads=heads: joint(heads), "same, 1 head per program", lambda: joint(1), flops,
                            ceiling, _outputs(out, extra)) for heads in (4, 8) if GPU_SHAPES[0].heads % heads == 0]


def _max_diff(outputs, expected) -> Optional[float]:
    """The largest difference between our outputs and the peer's (None for none). A RuntimeError when it passes 3%
    of the peer's largest output or an element was left unwritten (NaN), since the time of a wrong kernel is no
    finding: two implementations round a bf16 output apart by a unit or two in the last place, and 3% is four
    units at the largest output; leaving out one of Flux's 36 key blocks moves some outputs by five times that."""
    diff = max(((t.float() - e.float()).abs().max().item() for t, e in zip(outputs, expected)), default=None)
    scale = max((e.float().abs().max().item() for e in expected), default=0.0)
    if diff is not None and not diff <= 0.03 * scale:  # (NaN: an element left unwritten)
        raise RuntimeError(f"outputs differ from the peer's by {diff:.3g} (largest output {scale:.3g})")
    return diff


def _experiment_row(name, shape, ours_fn, peer, peer_fn, flops, ceiling, outputs=()) -> Dict[str, object]:
    """An experiment against its peer, device time under graph replay; a row with the error when it does not build
    or run (a finding, not a crash). Both sides write ``outputs``: ours into NaN-poisoned ones, after the peer's were
    kept. The row records the largest difference (``max_diff``); ``_max_diff`` makes a wrong output an error
    row. Inside ``plans.compile_only`` (``_experiment_rows``' first pass) both sides only compile: no row."""
    from pydiff.kernels import plans

    try:
        if plans.compiling_only():
            peer_fn()
            ours_fn()
            return {}
        peer_fn()
        expected = [t.clone() for t in outputs]
        for t in outputs:
            t.fill_(float("nan"))
        ours_fn()
        diff = _max_diff(outputs, expected)
        row = _row(f"{name} (graph replay)", shape, measure_graph(ours_fn), f"{peer} (graph replay)",
                   measure_graph(peer_fn), flops, ceiling)
        return dict(row, max_diff=diff)
    except Exception as exc:  # noqa: BLE001 - report every failure of an experiment and go on
        return {"area": "attention", "name": name, "shape": shape, "peer": peer,
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}


def _stream_k_programs(device) -> int:
    """The stream-K programs: one per SM (the 128 x 128 tile at head dim 128 holds one CTA per SM)."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def _plain_case(shape: Shape, device, dtype, gen):
    """(label, shape, (q, k, v, out), no extra arguments, FLOPs) of a plain shape, in ``_flux_joint_case``'s form."""
    q, k, v = _qkv(shape, device, dtype, gen)
    return (shape.name, str(shape), (q, k, v, torch.empty_like(q)), {},
            _flops(shape.batch, shape.heads, shape.n_q, shape.n_k, shape.head_dim))


def _outputs(out, extra) -> tuple:
    """A case's outputs: ``out``, and the joint stream's with a joint call."""
    return (out,) + ((extra["joint"][3],) if "joint" in extra else ())


def _flux_joint_case(device, dtype, gen):
    """(label, shape, (q, k, v, out), attention_forward's joint/prologue arguments, FLOPs) of Flux's joint call:
    512 text + 4096 image tokens in (B, N, H, D), QK norms on both streams, interleaved RoPE over the joined
    sequence."""
    shape = GPU_SHAPES[0]
    n_txt = FLUX_TEXT_TOKENS
    txt, img = ([torch.randn(shape.batch, n, shape.heads, shape.head_dim, device=device, dtype=dtype, generator=gen)
                 for _ in range(3)] for n in (n_txt, shape.n_q - n_txt))
    weights = [torch.rand(shape.head_dim, device=device, generator=gen).to(dtype) + 0.5 for _ in range(4)]
    angles = torch.arange(shape.n_q, device=device)[:, None] * torch.rand(shape.head_dim // 2, device=device,
                                                                         generator=gen)
    cos, sin = angles.cos().repeat_interleave(2, 1), angles.sin().repeat_interleave(2, 1)
    return ("Flux joint + QK norm + RoPE", f"B{shape.batch} H{shape.heads} N{n_txt}+{shape.n_q - n_txt} "
            f"D{shape.head_dim}", (*txt, torch.empty_like(txt[0])),
            dict(bnhd=True, joint=(*img, torch.empty_like(img[0])), rope=(cos, sin), q_norm_weight=weights[0],
                 k_norm_weight=weights[1], joint_q_norm_weight=weights[2], joint_k_norm_weight=weights[3]),
            _flops(shape.batch, shape.heads, shape.n_q, shape.n_k, shape.head_dim))


def _stream_k_rows(device, dtype, ceiling) -> List[Dict[str, object]]:
    """The stream-K experiment (``attention_forward(stream_k=...)``: as many programs as SMs share every query
    block's key blocks evenly, and a second launch merges the blocks they share) against the same tile launched one
    program per query block, device time under graph replay, at head dim 128 (one CTA of the 128 x 128 tile per
    SM: Flux's 864 query blocks fill 6.55 waves of an H100 or H200): the plain shapes, and Flux's joint call with
    its QK norms and RoPE ((B, N, H, D), the prologue passes included on both sides); at 128 x 128 x 8 warps over
    one program per SM, and at the single-warpgroup tiles with descriptor loads over two per SM (Flux: 3.27 waves
    of two CTAs per SM)."""
    from pydiff.kernels.attention import _ONE_WARPGROUP_TILES, _attn_fwd_kernel, attention_forward

    sms = _stream_k_programs(device)
    gen = torch.Generator(device=device).manual_seed(4)
    cases = [_plain_case(shape, device, dtype, gen) for shape in GPU_SHAPES if shape.head_dim == 128]
    cases.append(_flux_joint_case(device, dtype, gen))
    tiles = [((128, 128, 8, 3), False, 1)] + [(tile, True, 2) for tile in sorted(_ONE_WARPGROUP_TILES)]
    rows = []
    for label, shape_text, (q, k, v, out), extra, flops in cases:
        for (bm, bn, warps, stages), tma, per_sm in tiles:
            tile = dict(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages, use_tma=tma)

            def launch(programs, q=q, k=k, v=v, out=out, extra=extra, tile=tile):
                attention_forward(_attn_fwd_kernel, q, k, v, out, scale=q.shape[-1] ** -0.5, stream_k=programs,
                                  **tile, **extra)

            rows.append(_experiment_row(
                f"{label}: stream-K over {per_sm * sms} programs, {tile_label((bm, bn, warps, stages, tma))}",
                shape_text, lambda programs=per_sm * sms: launch(programs), "same tile, a program per query block",
                lambda: launch(None), flops, ceiling, _outputs(out, extra)))
    return rows


def _variant_rows(device, dtype, quick, ceiling, attention) -> List[Dict[str, object]]:
    """Each fused variant against the stock PyTorch op sequence it replaces."""
    from pydiff.reference.attention import rope_reference

    gpu = device == "cuda"
    gen = torch.Generator(device=device).manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, generator=gen)

    rows = []

    # 1. SD3 joint attention, (B, N, H, D) projections: cat + SDPA + split vs two streams in one pass.
    b, h, d, n_img, n_txt = (2, 24, 64, 4096, 154) if gpu else (1, 2, 64, 192, 33)
    img = [rand(b, n_img, h, d) for _ in range(3)]
    txt = [rand(b, n_txt, h, d) for _ in range(3)]

    def joint_stock():
        q, k, v = (torch.cat([i, t], 1).transpose(1, 2) for i, t in zip(img, txt))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return out[:, :n_img], out[:, n_img:]

    def joint_ours():
        a, c = attention(*img, layout="bnhd", joint=tuple(txt))
        return a.flatten(2), c.flatten(2)

    n = n_img + n_txt
    rows += _variant("joint attention (SD3)", f"B{b} H{h} N{n_img}+{n_txt} D{d}", joint_ours, joint_stock,
                     "cat + sdpa + split", _flops(b, h, n, n, d), device, quick, ceiling)

    # 2. Flux: per-stream QK RMSNorm, [text; image] join, interleaved RoPE, SDPA, split.
    b, h, d, n_img, n_txt = (1, 24, 128, 4096, 512) if gpu else (1, 2, 64, 192, 33)
    img = [rand(b, n_img, h, d) for _ in range(3)]
    txt = [rand(b, n_txt, h, d) for _ in range(3)]
    weights = [torch.rand(d, device=device, generator=gen) + 0.5 for _ in range(4)]
    freqs = torch.rand(d // 2, device=device, generator=gen)
    angles = torch.arange(n_img + n_txt, device=device)[:, None] * freqs[None, :]
    cos, sin = angles.cos().repeat_interleave(2, 1), angles.sin().repeat_interleave(2, 1)

    def flux_stock():
        q = torch.cat([F.rms_norm(txt[0], (d,), weights[0], 1e-6), F.rms_norm(img[0], (d,), weights[2], 1e-6)], 1)
        k = torch.cat([F.rms_norm(txt[1], (d,), weights[1], 1e-6), F.rms_norm(img[1], (d,), weights[3], 1e-6)], 1)
        v = torch.cat([txt[2], img[2]], 1)
        q = rope_reference(q.float().transpose(1, 2), cos, sin, True).to(dtype)
        k = rope_reference(k.float().transpose(1, 2), cos, sin, True).to(dtype)
        out = F.scaled_dot_product_attention(q, k, v.transpose(1, 2)).transpose(1, 2).flatten(2)
        return out[:, :n_txt], out[:, n_txt:]

    def flux_ours():
        c, a = attention(*txt, layout="bnhd", joint=tuple(img), rope=(cos, sin), rope_interleaved=True,
                         q_norm_weight=weights[0], k_norm_weight=weights[1], joint_q_norm_weight=weights[2],
                         joint_k_norm_weight=weights[3])
        return c.flatten(2), a.flatten(2)

    n = n_img + n_txt
    rows += _variant("joint + QK norm + RoPE (Flux)", f"B{b} H{h} N{n_txt}+{n_img} D{d}", flux_ours,
                     flux_stock, "rms_norm + cat + rope + sdpa + split", _flops(b, h, n, n, d), device, quick,
                     ceiling)

    # 2b. FLUX.2's single-stream blocks: QK RMSNorm and RoPE over the already joined [text; image] tokens, then
    # plain attention (no concatenation to save: what the prologue alone gains against norm + RoPE + SDPA).
    joined = [torch.cat([t, i], 1) for t, i in zip(txt, img)]

    def single_stock():
        q = rope_reference(F.rms_norm(joined[0], (d,), weights[2], 1e-6).float().transpose(1, 2), cos, sin, True)
        k = rope_reference(F.rms_norm(joined[1], (d,), weights[3], 1e-6).float().transpose(1, 2), cos, sin, True)
        return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), joined[2].transpose(1, 2)).transpose(1, 2) \
            .flatten(2)

    rows += _variant("QK norm + RoPE (FLUX.2 single-stream)", f"B{b} H{h} N{n} D{d}",
                     lambda: attention(*joined, layout="bnhd", rope=(cos, sin), rope_interleaved=True,
                                       q_norm_weight=weights[2], k_norm_weight=weights[3]).flatten(2),
                     single_stock, "rms_norm + rope + sdpa", _flops(b, h, n, n, d), device, quick, ceiling)

    # 2c. Qwen-Image: Flux's sequence with a complex RoPE per stream and the text padding masked ([text mask;
    # image ones] as a bool key mask, so SDPA cannot take its flash or cuDNN kernels). Ours as its processor calls
    # it, building the RoPE tables and the key mask on every call.
    n_txt_real = n_txt // 4
    text_mask = torch.arange(n_txt, device=device)[None, :].expand(b, n_txt) < n_txt_real
    txt_freqs, img_freqs = (torch.polar(torch.ones_like(a), a) for a in (angles[:n_txt], angles[n_txt:]))

    def complex_rope(x, freqs):  # diffusers' apply_rotary_emb_qwen(use_real=False)
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * freqs[:, None]).flatten(3).type_as(x)

    def qwen_mask():
        return torch.cat([text_mask, text_mask.new_ones(b, n_img)], 1)[:, None, None]

    def qwen_stock():
        q = torch.cat([complex_rope(F.rms_norm(txt[0], (d,), weights[0], 1e-6), txt_freqs),
                       complex_rope(F.rms_norm(img[0], (d,), weights[2], 1e-6), img_freqs)], 1)
        k = torch.cat([complex_rope(F.rms_norm(txt[1], (d,), weights[1], 1e-6), txt_freqs),
                       complex_rope(F.rms_norm(img[1], (d,), weights[3], 1e-6), img_freqs)], 1)
        v = torch.cat([txt[2], img[2]], 1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=qwen_mask()).transpose(1, 2).flatten(2)
        return out[:, :n_txt], out[:, n_txt:]

    def qwen_ours():
        freqs = torch.cat([txt_freqs, img_freqs])
        table = (freqs.real, freqs.imag)  # (one angle per pair, read in place)
        c, a = attention(*txt, layout="bnhd", joint=tuple(img), attn_mask=qwen_mask(), rope=table,
                         rope_interleaved=True, q_norm_weight=weights[0], k_norm_weight=weights[1],
                         joint_q_norm_weight=weights[2], joint_k_norm_weight=weights[3])
        return c.flatten(2), a.flatten(2)

    rows += _variant("joint + QK norm + RoPE + text mask (Qwen-Image)",
                     f"B{b} H{h} N{n_txt}+{n_img} ({n_txt_real} text real) D{d}", qwen_ours, qwen_stock,
                     "rms_norm + complex rope + cat + sdpa with mask + split", _flops(b, h, n, n, d), device, quick,
                     ceiling)

    # 2d. Chroma: Flux's sequence under the outer product of its token mask ([text mask; image ones], as
    # ChromaPipeline and its transformer blocks build it): a (B, 1, N, N) mask per query, read as given by both.
    tokens = torch.cat([text_mask, text_mask.new_ones(b, n_img)], 1)
    outer = tokens[:, None, None, :] & tokens[:, None, :, None]

    def chroma_stock():
        q = torch.cat([F.rms_norm(txt[0], (d,), weights[0], 1e-6), F.rms_norm(img[0], (d,), weights[2], 1e-6)], 1)
        k = torch.cat([F.rms_norm(txt[1], (d,), weights[1], 1e-6), F.rms_norm(img[1], (d,), weights[3], 1e-6)], 1)
        q = rope_reference(q.float().transpose(1, 2), cos, sin, True).to(dtype)
        k = rope_reference(k.float().transpose(1, 2), cos, sin, True).to(dtype)
        v = torch.cat([txt[2], img[2]], 1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=outer).transpose(1, 2).flatten(2)
        return out[:, :n_txt], out[:, n_txt:]

    def chroma_ours():
        c, a = attention(*txt, layout="bnhd", joint=tuple(img), attn_mask=outer, rope=(cos, sin),
                         rope_interleaved=True, q_norm_weight=weights[0], k_norm_weight=weights[1],
                         joint_q_norm_weight=weights[2], joint_k_norm_weight=weights[3])
        return c.flatten(2), a.flatten(2)

    rows += _variant("joint + QK norm + RoPE + mask per query (Chroma)",
                     f"B{b} H{h} N{n_txt}+{n_img} ({n_txt_real} text real) D{d}", chroma_ours, chroma_stock,
                     "rms_norm + cat + rope + sdpa with mask + split", _flops(b, h, n, n, d), device, quick, ceiling)

    # 2e. Lumina 2: grouped-query heads (24 query, 8 key/value heads, D96), QK RMSNorm and a complex RoPE with one
    # table per sample, the caption padding as a key mask; its processor repeats k and v for every query head.
    b, h, h_kv, d, n_txt = (1, 24, 8, 96, 256) if gpu else (1, 4, 2, 48, 33)
    n = n_txt + n_img
    q, k, v = rand(b, n, h, d), rand(b, n, h_kv, d), rand(b, n, h_kv, d)
    norms = [torch.rand(d, device=device, generator=gen) + 0.5 for _ in range(2)]
    sample_angles = torch.arange(n, device=device)[:, None] * torch.rand(d // 2, device=device, generator=gen)
    sample_freqs = torch.polar(torch.ones_like(sample_angles), sample_angles).expand(b, n, d // 2)
    token = torch.arange(n, device=device)
    keys = ((token < n_txt // 4) | (token >= n_txt)).expand(b, 1, 1, n)  # (a quarter of the caption real)
    scale = 1.1 / d ** 0.5  # (its proportional attention: sqrt(log_base N) times the default)

    def lumina_stock():
        def rotated(x, weight):  # RMSNorm, then diffusers' apply_rotary_emb(use_real=False), per sample
            pairs = torch.view_as_complex(F.rms_norm(x, (d,), weight, 1e-5).float().reshape(b, n, -1, d // 2, 2))
            return torch.view_as_real(pairs * sample_freqs[:, :, None]).flatten(3).to(dtype)
        qs, ks = rotated(q, norms[0]), rotated(k, norms[1])
        ks, vs = (t.repeat_interleave(h // h_kv, dim=2) for t in (ks, v))
        return F.scaled_dot_product_attention(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2),
                                              attn_mask=keys, scale=scale).transpose(1, 2).flatten(2)

    def lumina_ours():
        table = (sample_freqs.real[:, :, None], sample_freqs.imag[:, :, None])  # (one angle per pair, in place)
        return attention(q, k, v, scale, layout="bnhd", attn_mask=keys, rope=table, rope_interleaved=True,
                         q_norm_weight=norms[0], k_norm_weight=norms[1], norm_eps=1e-5).flatten(2)

    rows += _variant("GQA + QK norm + RoPE per sample + text mask (Lumina 2)",
                     f"B{b} H{h}/{h_kv} N{n_txt}+{n_img} D{d}", lumina_ours, lumina_stock,
                     "rms_norm + complex rope + repeat k/v + sdpa with mask", _flops(b, h, n, n, d), device, quick,
                     ceiling)

    # 2f. Ideogram 4: packed samples (two per row here, each 256 text + the image's tokens) whose block-diagonal mask
    # is read per query, QK RMSNorms and a half-split multi-axis RoPE with a table per batch row, at head dim 256;
    # its processor runs the norms, the rotation in the tables' dtype and SDPA with the (B, 1, N, N) mask.
    b, h, d, per_sample = (1, 18, 256, 256 + n_img) if gpu else (1, 2, 256, 40)
    n = 2 * per_sample
    q, k, v = rand(b, n, h, d), rand(b, n, h, d), rand(b, n, h, d)
    norms = [torch.rand(d, device=device, generator=gen) + 0.5 for _ in range(2)]
    angles = torch.rand(b, n, 1, d // 2, device=device, generator=gen) * 6
    cos, sin = (torch.cat([t, t], -1).to(dtype) for t in (angles.cos(), angles.sin()))  # (B, N, 1, D)
    segment = torch.arange(n, device=device) // per_sample
    packed = (segment[:, None] == segment[None, :]).expand(b, 1, n, n)

    def ideogram_stock():
        def rotated(x, weight):
            x = F.rms_norm(x, (d,), weight, 1e-5)
            return x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * sin
        qs, ks = rotated(q, norms[0]), rotated(k, norms[1])
        return F.scaled_dot_product_attention(qs.transpose(1, 2), ks.transpose(1, 2), v.transpose(1, 2),
                                              attn_mask=packed).transpose(1, 2).flatten(2)

    def ideogram_ours():
        return attention(q, k, v, layout="bnhd", attn_mask=packed, rope=(cos, sin), rope_interleaved=False,
                         q_norm_weight=norms[0], k_norm_weight=norms[1], norm_eps=1e-5).flatten(2)

    rows += _variant("QK norm + RoPE per sample + packed samples' mask (Ideogram 4)",
                     f"B{b} H{h} N2x{per_sample} D{d}", ideogram_ours, ideogram_stock,
                     "rms_norm + rope + sdpa with block-diagonal mask", _flops(b, h, n, n, d), device, quick, ceiling)

    # 2g. SD3's IP-Adapter (SD3.5 Large: 38 heads of 64, 64 image-prompt tokens): the image queries over [image
    # keys; image-prompt keys] with the adapter's own three QK RMSNorms; its processor runs the norms, joins the keys
    # and values, then SDPA. Ours: the prompt's keys a second stream of keys only.
    b, h, d, n_img, n_ip = (2, 38, 64, 4096, 64) if gpu else (1, 2, 64, 192, 17)
    q, k, v = rand(b, n_img, h, d), rand(b, n_img, h, d), rand(b, n_img, h, d)
    k_ip, v_ip = rand(b, n_ip, h, d), rand(b, n_ip, h, d)
    norms = [torch.rand(d, device=device, generator=gen) + 0.5 for _ in range(3)]

    def ip_stock():
        qs = F.rms_norm(q, (d,), norms[0], 1e-6).transpose(1, 2)
        ks = torch.cat([F.rms_norm(k, (d,), norms[1], 1e-6), F.rms_norm(k_ip, (d,), norms[2], 1e-6)], 1)
        vs = torch.cat([v, v_ip], 1)
        return F.scaled_dot_product_attention(qs, ks.transpose(1, 2), vs.transpose(1, 2)).transpose(1, 2).flatten(2)

    def ip_ours():
        out, _ = attention(q, k, v, layout="bnhd", joint=(q[:, :0], k_ip, v_ip), q_norm_weight=norms[0],
                           k_norm_weight=norms[1], joint_k_norm_weight=norms[2])
        return out.flatten(2)

    rows += _variant("QK norms + image-prompt keys beside the image's (SD3 IP-Adapter)",
                     f"B{b} H{h} N{n_img}x({n_img}+{n_ip}) D{d}", ip_ours, ip_stock,
                     "rms_norm x 3 + cat k/v + sdpa", _flops(b, h, n_img, n_img + n_ip, d), device, quick, ceiling)

    # 2h. LTX-2's audio-video cross-attention: the video's queries over the audio's keys, each turned by tables of
    # its own (interleaved, one table per token); its processor rotates q and k by torch ops, then SDPA.
    b, h, d, n_video, n_audio = (2, 32, 64, 8192, 512) if gpu else (1, 2, 64, 192, 33)
    q, k, v = rand(b, n_video, h, d), rand(b, n_audio, h, d), rand(b, n_audio, h, d)
    q_tables, k_tables = ((angles.cos().repeat_interleave(2, 1), angles.sin().repeat_interleave(2, 1)) for angles in
                          (torch.arange(n, device=device)[:, None] * torch.rand(d // 2, device=device, generator=gen)
                           for n in (n_video, n_audio)))

    def tables_stock():
        qs, ks = (rope_reference(x.float().transpose(1, 2), *tables, True).to(dtype)
                  for x, tables in ((q, q_tables), (k, k_tables)))
        return F.scaled_dot_product_attention(qs, ks, v.transpose(1, 2)).transpose(1, 2).flatten(2)

    rows += _variant("q and k RoPE tables of their own (LTX-2 audio-video)", f"B{b} H{h} N{n_video}x{n_audio} D{d}",
                     lambda: attention(q, k, v, layout="bnhd", rope=q_tables, key_rope=k_tables).flatten(2),
                     tables_stock, "rope x 2 + sdpa", _flops(b, h, n_video, n_audio, d), device, quick, ceiling)

    # 3. Key padding: text padded to 77 tokens of which a few are real.
    b, h, d, n_q, n_k = (2, 10, 64, 4096, 77) if gpu else (2, 2, 64, 256, 77)
    q, k, v = rand(b, h, n_q, d), rand(b, h, n_k, d), rand(b, h, n_k, d)
    lens = torch.tensor([20, 77], device=device, dtype=torch.int32)
    keep = (torch.arange(n_k, device=device)[None, :] < lens[:, None])[:, None, None, :]
    rows += _variant("key padding (kv_lens)", f"B{b} H{h} N{n_q}x{n_k} D{d}",
                     lambda: attention(q, k, v, kv_lens=lens),
                     lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=keep), "sdpa with a boolean mask",
                     _flops(b, h, n_q, n_k, d), device, quick, ceiling)

    # 4. Negative-prompt attention (NASA) in cross-attention: A(q, k+, v+) - alpha A(q, k-, v-).
    k_neg, v_neg = rand(b, h, n_k, d), rand(b, h, n_k, d)
    rows += _variant("negative-prompt attention (NASA)", f"B{b} H{h} N{n_q}x{n_k}+{n_k} D{d}",
                     lambda: attention(q, k, v, negative=(k_neg, v_neg), negative_scale=0.5),
                     lambda: F.scaled_dot_product_attention(q, k, v)
                     - 0.5 * F.scaled_dot_product_attention(q, k_neg, v_neg),
                     "2 x sdpa + sub", 2 * _flops(b, h, n_q, n_k, d), device, quick, ceiling)

    # 5. A key mask: PixArt's cross-attention over T5 text padded to 300 tokens, diffusers' additive (B, 1, N_k)
    # mask ((1 - mask) * -10000), which the stock processor repeats per head for SDPA.
    b, h, d, n_q, n_k = (2, 16, 72, 4096, 300) if gpu else (2, 2, 72, 256, 77)
    q, k, v = rand(b, h, n_q, d), rand(b, h, n_k, d), rand(b, h, n_k, d)
    real = torch.arange(n_k, device=device)[None, :] < torch.tensor([[40], [n_k // 2]], device=device)
    bias = ((1.0 - real.to(dtype)) * -10000.0)[:, None]  # (B, 1, N_k), as PixArt builds it

    def masked_stock():
        mask = bias.repeat_interleave(h, 0).view(b, h, 1, n_k)  # prepare_attention_mask, then the processor's view
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    rows += _variant("key mask (PixArt text padding)", f"B{b} H{h} N{n_q}x{n_k} D{d}",
                     lambda: attention(q, k, v, attn_mask=bias[:, None]), masked_stock,
                     "repeat mask per head + sdpa with it", _flops(b, h, n_q, n_k, d), device, quick, ceiling)

    # 5b. Wan's image-to-video cross-attention: the text's attention plus the image context's, (B, N, H, D)
    # projections as its processor has them; ours reads q once (the negative stream at scale -1).
    b, h, d, n_q, n_txt, n_ctx = (1, 40, 128, 8192, 512, 257) if gpu else (1, 2, 64, 256, 77, 33)
    q = rand(b, n_q, h, d)
    text_kv, image_kv = [rand(b, n_txt, h, d) for _ in range(2)], [rand(b, n_ctx, h, d) for _ in range(2)]

    def summed_stock():
        def sdpa(k, v):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (sdpa(*text_kv) + sdpa(*image_kv)).transpose(1, 2).flatten(2)

    rows += _variant("text + image-context attention (Wan I2V)", f"B{b} H{h} N{n_q}x({n_txt}+{n_ctx}) D{d}",
                     lambda: attention(q, *text_kv, layout="bnhd", negative=tuple(image_kv),
                                       negative_scale=-1.0).flatten(2),
                     summed_stock, "2 x sdpa + add", _flops(b, h, n_q, n_txt + n_ctx, d), device, quick, ceiling)

    # 6. Variable-length segments (e.g. image groups of different sizes) packed along the tokens.
    h, d = (24, 64) if gpu else (2, 64)
    lengths = [1024, 3072, 2048, 2048] if gpu else [64, 96, 32, 64]
    total = sum(lengths)
    x = [rand(1, h, total, d) for _ in range(3)]
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    cu = torch.tensor(offsets, device=device, dtype=torch.int32)

    def segments_stock():
        return torch.cat([F.scaled_dot_product_attention(*(t[:, :, s:e] for t in x))
                          for s, e in zip(offsets, offsets[1:])], 2)

    flops = sum(_flops(1, h, length, length, d) for length in lengths)
    rows += _variant("packed segments (cu_seqlens)", f"H{h} segments {lengths} D{d}",
                     lambda: attention(*x, cu_seqlens_q=cu, max_seqlen_q=max(lengths)), segments_stock,
                     "loop of sdpa per segment", flops, device, quick, ceiling)

    # 7. Block-sparse video attention (Kandinsky 6 SR's NABLA: 64 x 64 blocks, each query block attending to its own
    # key block and about a fifth of the others, per head): the figure counts the attended blocks' work only.
    b, h, d, n = (1, 16, 128, 16384) if gpu else (1, 2, 64, 512)
    q, k, v = rand(b, h, n, d), rand(b, h, n, d), rand(b, h, n, d)
    blocks = torch.rand(b, h, n // 64, n // 64, device=device) < 0.2
    blocks |= torch.eye(n // 64, dtype=torch.bool, device=device)
    keep = blocks.repeat_interleave(64, 2).repeat_interleave(64, 3)
    flops = _flops(b, h, n, n, d) * blocks.float().mean().item()
    rows += _variant("block-sparse attention (NABLA, 64 x 64 blocks)", f"B{b} H{h} N{n} D{d}, "
                     f"{blocks.float().mean().item():.0%} of blocks",
                     lambda: attention(q, k, v, block_mask=blocks, block_size=64),
                     lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=keep),
                     "sdpa with the blocks as a boolean mask", flops, device, quick, ceiling)
    if gpu:
        from torch.nn.attention.flex_attention import flex_attention

        from pydiff.reference.attention import flex_block_mask

        flex_mask = flex_block_mask(blocks, 64)
        flex = torch.compile(flex_attention)
        rows += _variant("block-sparse attention (NABLA, 64 x 64 blocks)", f"B{b} H{h} N{n} D{d}, "
                         f"{blocks.float().mean().item():.0%} of blocks",
                         lambda: attention(q, k, v, block_mask=flex_mask),
                         lambda: flex(q, k, v, block_mask=flex_mask), "flex attention (torch.compile)", flops,
                         device, quick, ceiling)
    # 8. A BlockMask with a mask_mod whose partial blocks fall off the block grid (Wan-Animate 2's in-context mask,
    # 480p frames of 1560 tokens): ours with its partial blocks as tiles, made once (as its processor makes them);
    # the figure counts the kept elements' work only.
    from torch.nn.attention.flex_attention import create_mask

    from pydiff.attention import block_mask_tiles
    from pydiff.reference.attention import in_context_block_mask

    frames, hw, b, h, d = (8, 1560, 1, 16, 128) if gpu else (2, 100, 1, 2, 64)
    in_context, n_q, n_k = in_context_block_mask(frames, hw, device)
    tokens = (frames + 1) * hw  # (the queries past them, the block's padding, attend to none: SDPA's would be NaN)
    q, k, v = rand(b, h, n_q, d), rand(b, h, n_k, d), rand(b, h, n_k, d)
    made = block_mask_tiles(in_context, tokens, n_k)
    dense = create_mask(in_context.mask_mod, 1, 1, tokens, n_k, device=device)
    kept = dense.float().mean().item()
    shape = f"B{b} H{h} Nq{tokens} Nk{n_k} D{d}, {kept:.0%} kept, {made['block_tiles'][1].shape[0] - 1} partial tiles"
    flops = _flops(b, h, tokens, n_k, d) * kept
    name = "block-sparse attention (Wan-Animate 2 in-context BlockMask, partial blocks as tiles)"
    rows += _variant(name, shape, lambda: attention(q[:, :, :tokens], k, v, **made),
                     lambda: F.scaled_dot_product_attention(q[:, :, :tokens], k, v, attn_mask=dense),
                     "sdpa with the mask_mod's elements as a boolean mask", flops, device, quick, ceiling)
    if gpu:
        whole = block_mask_tiles(in_context, n_q, n_k)
        rows += _variant(name, shape, lambda: attention(q, k, v, **whole),
                         lambda: flex(q, k, v, block_mask=in_context), "flex attention (torch.compile)", flops,
                         device, quick, ceiling)
    # 9. Causal attention (Cosmos 3's understanding pathway, MiniMax Music 3's depth decoder; AnyFlow FAR's chunks):
    # the lower triangle of 128 x 128 blocks, against SDPA's is_causal; the figure counts the triangle's work.
    b, h, d, n = (1, 16, 128, 8192) if gpu else (1, 2, 64, 512)
    q, k, v = rand(b, h, n, d), rand(b, h, n, d), rand(b, h, n, d)
    rows += _variant("causal attention (block-sparse over the triangle)", f"B{b} H{h} N{n} D{d}",
                     lambda: attention(q, k, v, causal=True),
                     lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), "sdpa is_causal",
                     _flops(b, h, n, n, d) / 2, device, quick, ceiling)
    # 10. Differential attention (Stable Audio 3: A(q1, k1, v) - A(q2, k2, v)) in one pass, against two SDPA calls
    # and their difference; the figure counts both attentions.
    b, h, d, n = (2, 24, 64, 4096) if gpu else (1, 2, 64, 256)
    q, q2, k, k2, v = (rand(b, h, n, d) for _ in range(5))
    rows += _variant("differential attention (Stable Audio 3)", f"B{b} H{h} N{n} D{d}",
                     lambda: attention(q, k, v, negative=(q2, k2, v)),
                     lambda: F.scaled_dot_product_attention(q, k, v) - F.scaled_dot_product_attention(q2, k2, v),
                     "2 x sdpa + sub", 2 * _flops(b, h, n, n, d), device, quick, ceiling)
    # ... its cross-attention under the context mask (both streams' keys; a second sample's last quarter padded),
    # one pass against two masked SDPA calls
    context = 512 if gpu else 64
    k, k2, v = (rand(b, h, context, d) for _ in range(3))
    padding = torch.ones(b, 1, 1, context, dtype=torch.bool, device=device)
    padding[-1, ..., 3 * context // 4:] = False
    rows += _variant("differential cross-attention under a key mask (Stable Audio 3)",
                     f"B{b} H{h} N{n}x{context} D{d}",
                     lambda: attention(q, k, v, negative=(q2, k2, v), attn_mask=padding),
                     lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=padding) -
                     F.scaled_dot_product_attention(q2, k2, v, attn_mask=padding), "2 x masked sdpa + sub",
                     2 * _flops(b, h, n, context, d), device, quick, ceiling)
    # 11. A sliding window's dense band (ACE-Step 1.5's: |i - j| <= 128 as an additive finfo.min mask, a quarter of
    # the second sample padding) with its blocks that keep any weight (``mask_block_mask``, 64 x 64, made once per
    # forward for every sliding layer) against SDPA under the band; the figure counts the band's work
    from pydiff.attention import mask_block_mask

    b, h, d, n, window = (2, 16, 128, 4096, 128) if gpu else (2, 2, 64, 512, 32)
    q, k, v = rand(b, h, n, d), rand(b, h, n, d), rand(b, h, n, d)
    position = torch.arange(n, device=device)
    keep = ((position[:, None] - position[None, :]).abs() <= window)[None, None].repeat(b, 1, 1, 1)
    keep[-1, ..., 3 * n // 4:] = False
    band = torch.zeros(keep.shape, dtype=q.dtype, device=device).masked_fill(~keep, torch.finfo(q.dtype).min)
    blocks = mask_block_mask(band, n, n, 64)
    rows += _variant("sliding-window band, its empty blocks skipped (ACE-Step)", f"B{b} H{h} N{n} D{d} w{window}",
                     lambda: attention(q, k, v, attn_mask=band, **blocks),
                     lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=band), "sdpa with the band",
                     _flops(b, h, n, n, d) * keep.float().mean().item(), device, quick, ceiling)
    # 12. Neighborhood attention (LTX-2's diffusion decoder: 3-D windows shifted inward at the borders), over the
    # grid's tiled layout (``pydiff.neighborhood``, made once per stage; the gathers into it and back timed with it)
    # against SDPA under the dense window mask on the CPU and compiled flex attention over the windows' BlockMask on
    # the GPU (the stock processor's, its BlockMask built compiled: the stock build's dense N^2 mask does not fit);
    # the figure counts the windows' work.
    from pydiff.neighborhood import neighborhood_attention, neighborhood_layout
    from pydiff.reference.attention import neighborhood_mask_mod, neighborhood_mask_reference

    (grid, window), b, h, d = (((16, 64, 64), (11, 11, 11)), 1, 4, 64) if gpu else (((4, 12, 16), (3, 5, 5)), 1, 2, 64)
    n = math.prod(grid)
    q, k, v = (rand(b, *grid, h, d) for _ in range(3))
    layout = neighborhood_layout(grid, window, device)
    flops = _flops(b, h, n, math.prod(window), d)
    shape = f"B{b} H{h} grid {'x'.join(map(str, grid))} D{d} window {'x'.join(map(str, window))}"
    name = "neighborhood attention, 3-D windows (LTX-2 decoder)"
    if gpu:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        windows = create_block_mask(neighborhood_mask_mod(grid, window), None, None, n, n, device=device,
                                    _compile=True)
        flex = torch.compile(flex_attention)
        flat = [t.flatten(1, -3).transpose(1, 2) for t in (q, k, v)]
        rows += _variant(name, shape, lambda: neighborhood_attention(q, k, v, window, layout=layout).flatten(1, -3),
                         lambda: flex(*flat, block_mask=windows).transpose(1, 2),
                         "flex attention over the windows' BlockMask (torch.compile)", flops, device, quick, ceiling)
    else:
        mask = neighborhood_mask_reference(grid, window, device)
        flat = [t.flatten(1, -3).transpose(1, 2) for t in (q, k, v)]
        rows += _variant(name, shape, lambda: neighborhood_attention(q, k, v, window, layout=layout).flatten(1, -3),
                         lambda: F.scaled_dot_product_attention(*flat, attn_mask=mask).transpose(1, 2),
                         "sdpa with the windows as a boolean mask", flops, device, quick, ceiling)
    return rows


def _variant(name, shape, ours_fn, stock_fn, peer, flops, device, quick, ceiling) -> List[Dict[str, object]]:
    """Ours vs the stock sequence, eagerly and (on CUDA) under graph replay, where the stock sequence's several
    launches and ours compare by device time alone; first our outputs against the stock sequence's
    (``_max_diff``: the Flux and SD3 joint calls differ by under 1% of the largest output in bf16)."""
    def outputs(fn):
        result = fn()
        return list(result) if isinstance(result, (tuple, list)) else [result]

    try:
        diff = _max_diff(outputs(ours_fn), outputs(stock_fn))
        ours = _time(ours_fn, device, quick)
        tile = _tile()
        stock = _time(stock_fn, device, quick)
    except (RuntimeError, ValueError) as exc:  # e.g. out of memory on a small card: report, keep going
        return [{"area": "attention", "name": name, "shape": shape, "peer": peer, "error": str(exc)[:200]}]
    rows = [_row(name, shape, ours, f"stock ops: {peer}", stock, flops, ceiling, max_diff=diff, **tile)]
    if device == "cuda":
        try:
            rows.append(_row(f"{name} (graph replay)", shape, measure_graph(ours_fn),
                             f"stock ops: {peer} (graph replay)", measure_graph(stock_fn), flops, ceiling))
        except RuntimeError as exc:
            rows.append({"area": "attention", "name": f"{name} (graph replay)", "shape": shape, "peer": peer,
                         "unavailable": str(exc).splitlines()[0][:160]})
    return rows


@contextlib.contextmanager
def _autotune(enabled: bool):
    """The tuner on or off; with it on, every specialisation is tuned in this run (no choice kept on disk from an
    earlier one): its timings of the candidates are reported beside each row (``_tile``)."""
    settings = {"PYDIFF_ATTENTION_AUTOTUNE": "1" if enabled else "0", "PYDIFF_TUNING_CACHE": "0"}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def run(quick: bool, device: str, progress: bool = False, experiments: bool = False) -> List[Dict[str, object]]:
    """Rows: the matmul ceiling, ours vs every SDPA backend per shape, then each variant vs its stock sequence (and
    on a GPU the host time and, unless quick, the experiments). experiments: the ceiling, the autotuned kernel at the
    experiments' plain shapes (``_tuned_rows``) and the experiments alone, for a short GPU lease."""
    import pydiff
    from benchmarks.bench_ceilings import ceilings

    gpu = device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch sees no CUDA device")
    dtype = torch.bfloat16 if gpu else torch.float32
    measured = ceilings(device, quick)
    ceiling_name = "bf16_matmul_TFLOPs" if gpu else "fp32_matmul_TFLOPs"
    ceiling = measured.get(ceiling_name)
    backend = "triton" if gpu else "torch"
    tuned = gpu and (experiments or not quick)
    rows: List[Dict[str, object]] = [{"area": "attention", "name": ceiling_name, "value": ceiling,
                                      "ours_backend": backend, "autotuned": tuned,
                                      "dtype": str(dtype).replace("torch.", "")}]
    shapes = [GPU_SHAPES[i] for i in GPU_QUICK] if gpu and quick else (GPU_SHAPES if gpu else CPU_SHAPES)
    def report(new: List[Dict[str, object]]) -> List[Dict[str, object]]:
        # every row goes to the log as soon as it is measured: a run cut short by its time limit keeps them
        for r in new if progress else ():
            if "speedup" in r:
                print(f"    {r['name']} | {r['shape']} | vs {r['peer']}: {r['speedup']:.2f}x, ours "
                      f"{r.get('ours_TFLOPs', float('nan')):.3g} TFLOP/s ({r['ours_ms']['median']:.4f} ms), peer "
                      f"{r.get('peer_TFLOPs', float('nan')):.3g}"
                      + (f", tile {r['tile']}" if r.get("tile") else "") + _loads_summary(r), file=sys.stderr,
                      flush=True)
            else:
                print(f"    {r['name']} vs {r.get('peer')}: {r.get('unavailable') or r.get('error')}", file=sys.stderr,
                      flush=True)
        return new

    with pydiff.use_backend(backend), _autotune(tuned), torch.no_grad():
        if experiments:
            rows += report(_tuned_rows(device, dtype, ceiling, pydiff.attention))
            return rows + report(_experiment_rows(device, dtype, ceiling))
        for shape in shapes:
            if progress:
                print(f"  attention: {shape.name} {shape}", file=sys.stderr)
            rows += report(_plain_rows(shape, device, dtype, quick, ceiling,
                                       lambda q, k, v: pydiff.attention(q, k, v)))
        if progress:
            print("  attention: variants", file=sys.stderr)
        rows += report(_variant_rows(device, dtype, quick, ceiling, pydiff.attention))
        if gpu:
            rows += report(_host_rows(device, dtype, pydiff.attention))
            if not quick:
                rows += report(_experiment_rows(device, dtype, ceiling))
    return rows


def section(rows) -> str:
    head = [r for r in rows if "value" in r]
    lines = []
    for r in head:
        lines.append(f"Ceiling: {r['name']} = {r['value']:.3g} (ours = backend `{r['ours_backend']}`, dtype "
                     f"{r['dtype']}, autotuned: {r['autotuned']}). TFLOP/s count 4 B H Nq Nk D per attention. "
                     "Eager rows on CUDA: 10 calls back to back per sample; graph-replay rows: 20 calls captured "
                     "in one CUDA graph (device time alone); the host-time row: the launch work per call.")
    figures = [r for r in rows if "speedup" in r]
    extra = ["ours_TFLOPs", "peer_TFLOPs", "ours_of_ceiling"] + (["tile"] if any(r.get("tile") for r in figures)
                                                                 else [])
    lines += ["", comparison_table(figures, extra_columns=extra)]
    skipped = [r for r in rows if "unavailable" in r or "error" in r]
    if skipped:
        lines += ["", "Not measured:"]
        lines += [f"- {r['name']} vs {r['peer']}: {r.get('unavailable') or r.get('error')}" for r in skipped]
    return "\n".join(lines)


def plots(rows, out_dir) -> List:
    """TFLOP/s vs sequence length (queries x keys) for the plain shapes: ours and every SDPA backend."""
    import re
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = [r for r in rows if "speedup" in r and "ours_TFLOPs" in r and str(r.get("peer", "")).startswith("sdpa")
             and "graph replay" not in r["peer"]]
    if not plain:
        return []

    def tokens(shape: str) -> float:
        n_q, n_k = map(int, re.search(r"N(\d+)x(\d+)", shape).groups())
        return (n_q * n_k) ** 0.5

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ours = {r["shape"]: r for r in plain}
    xs = sorted(ours, key=tokens)
    ax.plot([tokens(s) for s in xs], [ours[s]["ours_TFLOPs"] for s in xs], "o-", lw=2, label="pydiff (ours)")
    for i, peer in enumerate(dict.fromkeys(r["peer"] for r in plain)):
        pts = sorted((r for r in plain if r["peer"] == peer), key=lambda r: tokens(r["shape"]))
        ax.plot([tokens(r["shape"]) for r in pts], [r["peer_TFLOPs"] for r in pts], "s--", alpha=0.7, label=peer,
                color=f"C{i + 1}")
    for s in xs:
        ax.annotate(ours[s]["name"], (tokens(s), ours[s]["ours_TFLOPs"]), fontsize=6, alpha=0.7,
                    xytext=(3, 3), textcoords="offset points")
    ceiling = next((r["value"] for r in rows if "value" in r and r["value"]), None)
    if ceiling:
        ax.axhline(ceiling, color="gray", linestyle=":", label=f"matmul ceiling ({ceiling:.0f} TFLOP/s)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (sqrt(Nq x Nk) tokens)")
    ax.set_ylabel("TFLOP/s (4 B H Nq Nk D / time)")
    ax.set_title(f"Attention throughput vs sequence length ({plain[0].get('dtype', rows[0].get('dtype', ''))})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(out_dir) / "attention_tflops_vs_seqlen.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv=None) -> int:
    from benchmarks.report import write_area

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing, no autotuning")
    parser.add_argument("--experiments", action="store_true",
                        help="only the experiments, beside the autotuned kernel at their shapes (a short GPU lease)")
    parser.add_argument("--out", default=None, metavar="DIR", help="also write results.json and report.md here")
    args = parser.parse_args(argv)
    if args.experiments and args.device != "cuda":
        parser.error("--experiments: the experiments run at production shapes on a GPU (the tests run them on CPU "
                     "at tiny shapes)")
    rows = run(quick=args.quick, device=args.device, progress=True, experiments=args.experiments)
    print(section(rows))
    if args.out:
        suite = "attention experiments" if args.experiments else ("quick" if args.quick else "full")
        report = write_area("benchmarks.bench_attention", rows, args.out, suite, args.device)
        print(f"wrote {Path(args.out) / 'results.json'} and {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
