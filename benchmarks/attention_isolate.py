"""Attention accuracy on a GPU, every case in a process of its own: for finding which case breaks when the GPU
tests fail.

A CUDA error such as an illegal memory access is sticky: every later test in the same process fails too. On an
H200 (2026-11-26), one miscompiled case took 40 of 63 GPU tests down with it. Here each (case, mode) runs alone,
and its line says which output elements are wrong or which CUDA error it raised.

    python3 benchmarks/attention_isolate.py                  # every GPU grid case, each mode; a table, last
    python3 benchmarks/attention_isolate.py bf16-d80-1x97-mqa --modes tma noalign   # chosen cases and modes

Modes (combinable with +; default: plain, tma, rowsum, streamk, overlap):
- plain: the default tile, pointer loads;
- tma: key/value loads through tensor descriptors;
- tuner: the autotuner's extra descriptor-load tiles that apply to the case (one warpgroup of 128 rows above head
  dim 64, 64 x 128 up to 64; others report n/a), each in turn, as the descriptor stage's test runs them; asked
  for, the production-size cases of that test (SD3's size, Flux's joint call) join the default cases;
- warpspec: the warp-specialised tiles (``_WARP_SPEC_TILES``), each in turn, on the cases of the descriptor stage's
  test of them (others report n/a), which join the default cases when asked for;
- rowsum: the ROWSUM_MMA experiment;
- streamk: the stream-K experiment over as many programs as SMs (plain and joint cases; others report n/a);
- overlap: the OVERLAP experiment (each block's softmax under the next block's scores);
- noalign: without the row-alignment hint (ROW_ALIGN 1);
- noplans: without launch plans;
- default: the library's untuned launch (``default_config``'s tile, warps and stages), as the GPU test of the random
  cases (``random-N``, by name) runs it.

Not a test: it reports, and exits non-zero when a case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ["plain", "tma", "tuner", "warpspec", "rowsum", "streamk", "overlap", "noalign", "noplans", "default"]
DEFAULT_MODES = ["plain", "tma", "rowsum", "streamk", "overlap"]


def _case(name: str):
    sys.path.insert(0, str(ROOT / "tests"))
    import test_attention as T

    cases = {c.name: c for c in T.GRID + T.GPU_GRID + T.DESCRIPTOR_PRODUCTION_CASES + T.WARP_SPEC_GPU_CASES +
             T.RANDOM_GPU_CASES}
    if name not in cases:
        raise SystemExit(f"unknown case {name!r}; known: {', '.join(cases)}")
    return T, cases[name]


def run_one(name: str, mode: str) -> dict:
    """One case in this process: per output stream, the largest error against float64, PyTorch's own in that
    dtype (None for fp32), the elements off by more than 0.05, and the GPU tests' verdict (their check's failure
    message, or None)."""
    import torch

    import pydiff.kernels.attention as A
    from pydiff.kernels import plans

    T, case = _case(name)
    parts = mode.split("+")
    if "noalign" in parts:
        A._row_align = lambda *args: 1
    if "noplans" in parts:
        plans.ENABLED = False
    stream_k = None
    if "streamk" in parts:
        if case.negative is not None or case.kv_lens is not None or case.cu_q is not None or \
                case.block_mask is not None:
            return {"streams": [], "skipped": "stream-K: plain and joint only"}
    if "overlap" in parts and case.block_mask is not None:
        return {"streams": [], "skipped": "the overlap: not block-sparse"}
        stream_k = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 7
    # (BLOCK_M, BLOCK_N, warps, stages) of each tile to run
    if "tuner" in parts:
        tiles = T._tuner_descriptor_tiles(case)
        if not tiles:
            return {"streams": [], "skipped": "no extra descriptor tile applies"}
    elif "warpspec" in parts:
        if case not in T.WARP_SPEC_GPU_CASES:
            return {"streams": [], "skipped": "warp-specialised tiles: their own cases"}
        tiles = T._warp_spec_tiles(case)
    else:
        tiles = [(*(T._overlap_tile(case) if "overlap" in parts else T._gpu_default_tile(case)), 4, 2)]
    if "default" in parts:  # (the library's untuned launch, as the GPU test of the random cases runs it)
        launches = T._default_launches(case)
    else:
        launches = [dict(blocks=(block_m, block_n), warps=warps, stages=stages, stream_k=stream_k,
                         use_tma=None if "tuner" in parts else "tma" in parts or "warpspec" in parts,
                         rowsum_mma="rowsum" in parts, overlap="overlap" in parts, warp_spec="warpspec" in parts)
                    for block_m, block_n, warps, stages in tiles]
    q, k, v, kw = T._on_device(case, "cuda" if torch.cuda.is_available() else "cpu")
    streams = []
    for launch in launches:
        out = T.run_kernel(q, k, v, kw, **launch)
        block_m, block_n = launch["blocks"]
        warps, stages = launch["warps"], launch["stages"]
        for got, ref, low, failure in T.gpu_stream_checks(case, out, q, k, v, kw):
            err = (got.double() - ref.double()).abs().nan_to_num(float("inf"))
            bad = err > 0.05
            streams.append({"err": err.max().item(), "failure": failure, "tile": [block_m, block_n, warps, stages],
                            "torch": None if low is None else (low.double() - ref.double()).abs().max().item(),
                            "bad": int(bad.sum()), "of": err.numel(), "first_bad": bad.nonzero()[:3].tolist()})
    return {"streams": streams}


def _describe(stream: dict) -> str:
    torch_err = "-" if stream["torch"] is None else f"{stream['torch']:.3g}"
    block_m, block_n, warps, stages = stream["tile"]
    return (f"{block_m}x{block_n} w{warps} s{stages}: err {stream['err']:.3g} (torch {torch_err}), {stream['bad']} of "
            f"{stream['of']} off by > 0.05"
            + (f", first {stream['first_bad']}" if stream["bad"] else "")
            + (f"; {stream['failure']}" if stream["failure"] else ""))


def _spawn(name: str, mode: str, timeout: float) -> tuple:
    """(failed, table row) of one (case, mode) in a process of its own."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--one", name, mode], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if lines:
            result = json.loads(lines[0][len("RESULT "):])
            streams = result["streams"]
            failed = any(s["failure"] is not None for s in streams)
            status, cells = ("FAIL" if failed else "ok"), "; ".join(_describe(s) for s in streams)
            if "skipped" in result:
                status, cells = "n/a", result["skipped"]
        else:
            failed, status = True, "ERROR"
            cells = " | ".join((done.stderr.strip().splitlines() or ["no output"])[-2:])[-240:].replace("|", "/")
    except subprocess.TimeoutExpired:
        failed, status, cells = True, "TIMEOUT", f"over {timeout:.0f} s"
    return failed, f"| {name} | {mode} | {status} | {cells} | {time.perf_counter() - start:.0f} s |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="case names (default: the GPU grid)")
    parser.add_argument("--modes", nargs="+", default=DEFAULT_MODES, help=f"of {MODES}, combinable with + "
                        "(default: plain tma rowsum streamk overlap)")
    parser.add_argument("--jobs", type=int, default=min(12, os.cpu_count() or 1), help="processes at once")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per process")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(*args.one)), flush=True)
        return 0
    for mode in args.modes:
        unknown = [part for part in mode.split("+") if part not in MODES]
        if unknown:
            parser.error(f"--modes: unknown {unknown}; expected parts of {MODES}")
    if args.cases:
        names = args.cases
        for name in names:
            _case(name)
    else:
        T = _case("f32-d64-97x97")[0]
        asked = {part for mode in args.modes for part in mode.split("+")}
        names = [c.name for c in T.GPU_GRID + (T.DESCRIPTOR_PRODUCTION_CASES if "tuner" in asked else [])
                 + (T.WARP_SPEC_GPU_CASES if "warpspec" in asked else [])]
    jobs = [(name, mode) for name in names for mode in args.modes]
    print("| case | mode | result | per output stream | time |\n|---|---|---|---|---|", flush=True)
    failures = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        # each row as soon as its process ends: a run cut short by a time limit keeps what it found
        for done in as_completed([pool.submit(_spawn, name, mode, args.timeout) for name, mode in jobs]):
            failed, row = done.result()
            failures += failed
            print(row, flush=True)
    print(f"\n{failures} of {len(jobs)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
