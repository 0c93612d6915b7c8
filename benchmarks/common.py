"""What every suite shares: the timer, the machine description, and the ours-vs-peer table and plot.

A suite is a module ``benchmarks/bench_<area>.py`` with
    TITLE: str                                  the report section's heading
    ORDER: int                                  where the section goes in the report
    run(quick: bool, device: str, progress) -> list[dict]   rows (see ``comparison_row``)
    section(rows) -> str                        the Markdown section (tables; ``comparison_table`` helps)
    plots(rows, out_dir) -> list[Path]          optional PNGs
so a new area is one new file and one new report section.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Sequence

import torch


@dataclass
class Timing:
    """Seconds per call over ``n`` timed repetitions (after warm-up)."""

    min: float
    median: float
    max: float
    n: int

    def ms(self) -> Dict[str, float]:
        return {"min": self.min * 1e3, "median": self.median * 1e3, "max": self.max * 1e3, "n": self.n}


def measure(fn: Callable[[], object], device: str = "cpu", warmup: int = 2, min_repeat: int = 5,
            max_repeat: int = 200, min_time: float = 0.25, batch: int = 1) -> Timing:
    """Time ``fn``: ``warmup`` untimed calls, then repeat until ``min_time`` s and ``min_repeat`` samples.

    On CUDA each sample is bracketed by CUDA events (no host sync inside it). A sample is ``batch`` calls back to
    back, divided by ``batch``: with 1, the host's launch work for the call is exposed in full (the device idles
    until it is done); with several, later calls are launched while earlier ones run, as in a pipeline, so the
    figure is device time wherever the device is the slower side.
    """
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start_all = time.perf_counter()
    cuda = device.startswith("cuda")
    while len(times) < max_repeat and (len(times) < min_repeat or time.perf_counter() - start_all < min_time):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(batch):
                fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3 / batch)
        else:
            t0 = time.perf_counter()
            for _ in range(batch):
                fn()
            times.append((time.perf_counter() - t0) / batch)
    return Timing(min(times), statistics.median(times), max(times), len(times))


def measure_graph(fn: Callable[[], object], calls: int = 20, repeat: int = 10) -> Timing:
    """Time ``fn`` on CUDA as ``calls`` calls captured in one CUDA graph and replayed: seconds per call.

    Events around each eager call also count the host's launch work (tens of microseconds of Python for any
    Triton or custom-op launch), which can exceed a small kernel; graph replays leave the device time alone.
    ``fn`` must be capturable (no host sync); it is warmed up (compiles, autotuning) outside the capture.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    t = measure(graph.replay, device="cuda", warmup=2, min_repeat=repeat, max_repeat=repeat, min_time=0.0)
    return Timing(t.min / calls, t.median / calls, t.max / calls, t.n * calls)


def machine() -> Dict[str, object]:
    """Machine, versions and date: stamped on every results file."""
    info: Dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for module in ("triton", "diffusers", "onnxruntime"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - optional peers
            info[module] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        try:
            import subprocess

            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            info["driver"] = None
    return info


def comparison_row(area: str, name: str, shape: str, ours: Timing, peer: str, peer_timing: Timing,
                   **extra) -> Dict[str, object]:
    """One ours-vs-peer figure. ``speedup`` = peer median / our median (> 1: we are faster)."""
    return {
        "area": area, "name": name, "shape": shape,
        "ours_ms": ours.ms(), "peer": peer, "peer_ms": peer_timing.ms(),
        "speedup": peer_timing.median / ours.median if ours.median > 0 else float("nan"),
        **extra,
    }


def _fmt_ms(t: Dict[str, float]) -> str:
    return f"{t['median']:.3f} ({t['min']:.3f}–{t['max']:.3f})"


def comparison_table(rows: Sequence[Dict[str, object]], extra_columns: Iterable[str] = ()) -> str:
    """Markdown: one line per figure, ours and the peer as median (min–max) ms, and the speedup."""
    extra_columns = list(extra_columns)
    head = ["case", "shape", "ours ms median (min–max)", "peer", "peer ms median (min–max)",
            "speedup (peer/ours)"] + extra_columns
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["name"]), str(r["shape"]), _fmt_ms(r["ours_ms"]), str(r["peer"]), _fmt_ms(r["peer_ms"]),
                 f"{r['speedup']:.2f}x"] + [_fmt_extra(r.get(c)) for c in extra_columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_extra(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def tile_label(tile) -> str:
    """An attention tile (BLOCK_M, BLOCK_N, warps, stages[, descriptor loads[, warp-specialised]]) as the benchmark
    rows, the resource tables and the tuner's timings name it: "128x64 w4 s2", with " tma" for descriptor loads and
    " ws" for a warp-specialised key loop."""
    return f"{tile[0]}x{tile[1]} w{tile[2]} s{tile[3]}" + (" tma" if len(tile) > 4 and tile[4] else "") + \
        (" ws" if len(tile) > 5 and tile[5] else "")
