"""Host time per eager ``pydiff.attention`` call, measured on a machine without a GPU.

The kernels compile for sm_90 with Triton's own compiler and each launch goes to ``benchmarks.stub_driver``,
which records it instead of running it. What is timed is therefore the host side alone: the argument checks,
output allocation, the launcher, and Triton's launch. Ours: a call whose signature was seen before replays the
compiled kernels its body launched (``pydiff.kernels.plans``), skipping the op's checks and launcher (call plans,
``pydiff.attention._CALLS``). Peer: Triton's JIT launch on every call (plans off), in the same process. Tiles are
the untuned defaults (no autotuning: nothing runs to time).

CPU tensors stand in for CUDA ones, so pydiff's CUDA route is bound by hand below. Run in a process without
TRITON_INTERPRET (interpreted kernels do not compile):

    python3 -m benchmarks.attention_host        # prints the table last
    python3 -m benchmarks.attention_host --first-call [--candidates N]

``--first-call`` times instead the first call of a new signature with the autotuner on, which compiles every tile
the tuner keeps (the Hopper list, descriptor-load tiles included: the launcher is told the keys fit them) before
timing them: ours compiles them on ``pydiff.kernels.plans.compile_threads()`` threads first (``precompile``); the
peer is Triton's autotuner compiling each as it times it (``PYDIFF_COMPILE_THREADS=1``). Each measurement starts
from an empty Triton cache, alternating between the two; ``--candidates N`` keeps the tuner's first N tiles.

``--stored`` times the first tuned call of a signature in a new process (the launcher's, the tuner's and Triton's
in-memory state cleared) whose Triton cache already holds the compiled candidates: ours launches the choice an
earlier process kept on disk (``plans.store_choice``), loading one compiled tile; the peer tunes again
(``PYDIFF_TUNING_CACHE=0``), loading every candidate and timing each. The stub's timings are made up and take no
time, so on a GPU the peer also pays the real timing of each candidate (Triton's benchmarker: 25 ms warm-up and
100 ms of runs per candidate by default).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

if __package__ in (None, ""):  # run as a script: make the repository root importable for ``benchmarks.*``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import Timing, comparison_row, comparison_table, measure  # noqa: E402
from benchmarks.stub_driver import stub_cuda_driver  # noqa: E402


def _cases():
    """(name, shape, call) at production shapes, bf16."""
    bf16 = dict(dtype=torch.bfloat16)
    q = torch.randn(2, 10, 4096, 64, **bf16)
    k, v = torch.randn(2, 10, 77, 64, **bf16), torch.randn(2, 10, 77, 64, **bf16)
    lens = torch.tensor([77, 60], dtype=torch.int32)
    k_neg, v_neg = torch.randn_like(k), torch.randn_like(v)
    text_padding = ((torch.arange(77) >= lens[:, None]) * -10000.0).to(torch.bfloat16)[:, None, None]  # (B,1,1,Nk)
    # Flux: 4096 image + 512 text tokens, (B, N, H, D), per-stream QK norm, RoPE over the joined sequence
    image = [torch.randn(1, 4096, 24, 128, **bf16) for _ in range(3)]
    text = [torch.randn(1, 512, 24, 128, **bf16) for _ in range(3)]
    cos, sin = torch.rand(4608, 128), torch.rand(4608, 128)
    norms = [(torch.rand(128) + 0.5).to(torch.bfloat16) for _ in range(4)]  # a bf16 model holds them in bf16
    tokens = torch.arange(4608) < 4300  # Chroma: its token mask's outer product, (B, 1, N, N) bool
    outer = (tokens[:, None] & tokens[None, :])[None, None]
    attention = importlib.import_module("pydiff").attention
    # block-sparse: NABLA's 64 x 64 blocks (about a fifth attended), and causal attention (MiniMax Music 3's depth
    # decoder: a few tokens per call), whose block lists the launcher builds on every call
    video = [torch.randn(1, 24, 4096, 128, **bf16) for _ in range(3)]
    nabla = torch.rand(1, 24, 64, 64, generator=torch.Generator().manual_seed(0)) < 0.2
    depth = [torch.randn(8, 16, 9, 64, **bf16) for _ in range(3)]
    # neighborhood attention (LTX-2's decoder, a stage-2 grid of 18 x 32 x 48 tokens, 3 x 7 x 7 windows): its
    # block lists made once (pydiff.neighborhood), the tokens already in the tiled layout, QK norms and RoPE
    hood = importlib.import_module("pydiff.neighborhood").neighborhood_layout((18, 32, 48), (3, 7, 7))
    tiled = [torch.randn(1, hood.tokens, 16, 64, **bf16) for _ in range(3)]
    angles = torch.rand(hood.tokens, 32)
    hood_rope, hood_norms = (angles.cos(), angles.sin()), [(torch.rand(64) + 0.5).to(torch.bfloat16) for _ in range(2)]
    return [
        ("SDXL cross", "B2 H10 N4096x77 D64", lambda: attention(q, k, v)),
        ("key padding", "B2 H10 N4096x77 D64", lambda: attention(q, k, v, kv_lens=lens)),
        ("key mask", "B2 H10 N4096x77 D64", lambda: attention(q, k, v, attn_mask=text_padding)),
        ("negative prompt (NASA)", "B2 H10 N4096x77+77 D64", lambda: attention(q, k, v, negative=(k_neg, v_neg))),
        ("Flux joint + QK norm + RoPE", "B1 H24 N4096+512 D128", lambda: attention(
            *image, layout="bnhd", joint=tuple(text), rope=(cos, sin), q_norm_weight=norms[0],
            k_norm_weight=norms[1], joint_q_norm_weight=norms[2], joint_k_norm_weight=norms[3])),
        ("Chroma: the same + mask per query", "B1 H24 N4096+512 D128", lambda: attention(
            *image, layout="bnhd", joint=tuple(text), rope=(cos, sin), q_norm_weight=norms[0],
            k_norm_weight=norms[1], joint_q_norm_weight=norms[2], joint_k_norm_weight=norms[3], attn_mask=outer)),
        ("block-sparse (NABLA 64 x 64)", "B1 H24 N4096 D128", lambda: attention(*video, block_mask=nabla,
                                                                                  block_size=64)),
        ("causal (a depth decoder's step)", "B8 H16 N9 D64", lambda: attention(*depth, causal=True)),
        ("neighborhood (LTX-2 decoder, 3 x 7 x 7)", "B1 H16 grid 18x32x48 D64", lambda: attention(
            *tiled, layout="bnhd", block_lists=hood.blocks, rope=hood_rope, q_norm_weight=hood_norms[0],
            k_norm_weight=hood_norms[1])),
    ]


def run(rounds: int = 3):
    """Rows of ours (plans) vs Triton's JIT launch, host microseconds per call: the best median of ``rounds``
    alternating measurements of each."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("attention_host: run without TRITON_INTERPRET (interpreted kernels do not compile)")
    os.environ["PYDIFF_ATTENTION_AUTOTUNE"] = "0"
    module = importlib.import_module("pydiff.attention")
    plans = importlib.import_module("pydiff.kernels.plans")
    module.bind_gpu_kernels()
    cuda_route = mock.patch.object(module.backends, "select", lambda device: ("triton", module._attention_triton_cuda))
    rows = []
    with stub_cuda_driver(), cuda_route:
        for name, shape, call in _cases():
            call()  # compiles, and leaves the plans
            planned, jit = [], []
            for _ in range(rounds):  # alternated, so a drift in the host's speed hits both sides alike
                planned.append(measure(call, batch=200))
                with mock.patch.object(plans, "ENABLED", False):
                    jit.append(measure(call, batch=200))
            planned, jit = (min(timings, key=lambda t: t.median) for timings in (planned, jit))
            rows.append(comparison_row("attention-host", name, shape, planned, "Triton JIT launch", jit,
                                       ours_us=planned.median * 1e6, peer_us=jit.median * 1e6))
            print(f"{name}: {planned.median * 1e6:.1f} us planned, {jit.median * 1e6:.1f} us JIT", flush=True)
    return rows


def first_call_rows(rounds: int = 2, candidates: int = 0):
    """One row: the first tuned call of a new signature (SDXL cross-attention's shape, a new key count each time),
    ours (the tuner's tiles compiled at once) against one compile after another, ``rounds`` alternated
    measurements of each from an empty Triton cache; ``candidates``: keep the tuner's first N tiles (0: all)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("attention_host: run without TRITON_INTERPRET (interpreted kernels do not compile)")
    ka = importlib.import_module("pydiff.kernels.attention")
    plans = importlib.import_module("pydiff.kernels.plans")
    tuner, plain = ka._attn_fwd_autotuned, ka._attn_fwd_kernel
    threads = plans.compile_threads()
    if threads < 2:
        raise SystemExit(f"attention_host --first-call: {threads} compile thread(s) here, nothing to compare")
    kept = tuner.configs[:candidates] if candidates else tuner.configs
    times = {"ours": [], "peer": []}
    counts = []
    with stub_cuda_driver(), mock.patch.object(ka, "tma_usable", lambda kv: True), \
            mock.patch.object(tuner, "configs", kept), mock.patch.dict(os.environ, {"PYDIFF_COMPILE_THREADS": ""}), \
            mock.patch.object(plans, "precompile", lambda *a, _p=plans.precompile: counts.append(len(a[4])) or _p(*a)):
        for i in range(2 * rounds):
            side = ("ours", "peer")[i % 2]
            os.environ["PYDIFF_COMPILE_THREADS"] = str(threads) if side == "ours" else "1"
            os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="pydiff-first-call-")
            plain.device_caches.clear()  # (Triton's in-memory kernels: every compile starts afresh)
            q = torch.randn(2, 10, 4096, 64, dtype=torch.bfloat16)
            # (a new key count for the tuner each time, never a multiple of 16: the same specialisation)
            k, v = (torch.randn(2, 10, 77 + 2 * i, 64, dtype=torch.bfloat16) for _ in range(2))
            start = time.perf_counter()
            ka.attention_forward(tuner, q, k, v, torch.empty_like(q), scale=0.125, tuned=(tuner, plain))
            times[side].append(time.perf_counter() - start)
            print(f"{side}: {times[side][-1]:.1f} s", file=sys.stderr, flush=True)
    ours, peer = (Timing(min(t), statistics.median(t), max(t), len(t)) for t in (times["ours"], times["peer"]))
    return [comparison_row("attention-host", f"first tuned call, {max(counts)} tiles on {threads} threads",
                           "B2 H10 N4096x77 D64", ours, "one compile after another", peer)]


def stored_choice_rows(rounds: int = 5, candidates: int = 0):
    """One row: the first tuned call of a signature (SDXL cross-attention's shape) in a new process whose Triton
    cache holds the compiled candidates, launching the choice kept on disk against tuning again, ``rounds``
    alternated measurements of each; ``candidates``: keep the tuner's first N tiles (0: all)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("attention_host: run without TRITON_INTERPRET (interpreted kernels do not compile)")
    ka = importlib.import_module("pydiff.kernels.attention")
    plans = importlib.import_module("pydiff.kernels.plans")
    tuner, plain = ka._attn_fwd_autotuned, ka._attn_fwd_kernel
    kept = tuner.configs[:candidates] if candidates else tuner.configs
    q = torch.randn(2, 10, 4096, 64, dtype=torch.bfloat16)
    k, v = (torch.randn(2, 10, 77, 64, dtype=torch.bfloat16) for _ in range(2))
    times, tiles = {"ours": [], "peer": []}, []
    precompile = plans.precompile
    with stub_cuda_driver(), mock.patch.object(ka, "tma_usable", lambda kv: True), \
            mock.patch.object(tuner, "configs", kept), \
            mock.patch.object(plans, "precompile", lambda *a: tiles.append(len(a[4])) or precompile(*a)), \
            mock.patch.dict(os.environ, {"TRITON_CACHE_DIR": tempfile.mkdtemp(prefix="pydiff-stored-"),
                                         "PYDIFF_TUNING_CACHE": "1"}):
        for i in range(-1, 2 * rounds):  # (-1: the process that compiles the candidates and stores its choice)
            side = "peer" if i % 2 == 1 and i >= 0 else "ours"
            os.environ["PYDIFF_TUNING_CACHE"] = "0" if side == "peer" else "1"
            ka._TUNED.clear()
            plans.CACHE.clear()
            tuner.cache.clear()
            plain.device_caches.clear()
            start = time.perf_counter()
            ka.attention_forward(tuner, q, k, v, torch.empty_like(q), scale=0.125, tuned=(tuner, plain))
            if i >= 0:
                times[side].append(time.perf_counter() - start)
                print(f"{side}: {times[side][-1]:.2f} s", file=sys.stderr, flush=True)
    ours, peer = (Timing(min(t), statistics.median(t), max(t), len(t)) for t in (times["ours"], times["peer"]))
    return [comparison_row("attention-host", f"first tuned call in a new process, {max(tiles)} tiles compiled: "
                           f"the stored choice", "B2 H10 N4096x77 D64", ours, "tuning again", peer)]


def main():
    import triton

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-call", action="store_true", help="time the first tuned call's compiles instead")
    parser.add_argument("--stored", action="store_true",
                        help="time a new process's first tuned call with the stored choice instead")
    parser.add_argument("--candidates", type=int, default=0,
                        help="with --first-call or --stored: the tuner's first N tiles")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --first-call or --stored: measurements of each side")
    options = parser.parse_args()
    machine = f"torch {torch.__version__}, Triton {triton.__version__}, {os.cpu_count()} CPUs"
    if options.stored:
        rows = stored_choice_rows(options.rounds, options.candidates)
        print(f"\nFirst tuned call in a new process, Triton's cache warm, no GPU (a stub driver), {machine}")
        print(comparison_table(rows))
        return
    if options.first_call:
        rows = first_call_rows(options.rounds, options.candidates)
        print(f"\nFirst tuned call, compiles for sm_90 without a GPU (a stub driver), {machine}")
        print(comparison_table(rows))
        return
    rows = run()
    print(f"\nHost time per eager call (no GPU: launches go to a stub driver), {machine}")
    print(comparison_table(rows, extra_columns=["ours_us", "peer_us"]))


if __name__ == "__main__":
    main()
