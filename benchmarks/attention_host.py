"""Host time per eager ``pydiff.attention`` call, measured on a machine without a GPU.

The kernels compile for sm_90 with Triton's own compiler and each launch goes to ``benchmarks.stub_driver``,
which records it instead of running it. What is timed is therefore the host side alone: the argument checks,
output allocation, the launcher, and Triton's launch. Ours: a call whose signature was seen before replays the
compiled kernels its body launched (``pydiff.kernels.plans``), skipping the op's checks and launcher (call plans,
``pydiff.attention._CALLS``). Peer: Triton's JIT launch on every call (plans off), in the same process. Tiles are the untuned defaults (no autotuning: nothing runs to time).

CPU tensors stand in for CUDA ones, so pydiff's CUDA route is bound by hand below. Run in a process without
TRITON_INTERPRET (interpreted kernels do not compile):

    python3 -m benchmarks.attention_host        # prints the table last
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from unittest import mock

if __package__ in (None, ""):  # run as a script: make the repository root importable for ``benchmarks.*``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import comparison_row, comparison_table, measure  # noqa: E402
from benchmarks.stub_driver import stub_cuda_driver  # noqa: E402


def _cases():
    """(name, shape, call) at production shapes, bf16."""
    bf16 = dict(dtype=torch.bfloat16)
    q = torch.randn(2, 10, 4096, 64, **bf16)
    k, v = torch.randn(2, 10, 77, 64, **bf16), torch.randn(2, 10, 77, 64, **bf16)
    lens = torch.tensor([77, 60], dtype=torch.int32)
    k_neg, v_neg = torch.randn_like(k), torch.randn_like(v)
    # Flux: 4096 image + 512 text tokens, (B, N, H, D), per-stream QK norm, RoPE over the joined sequence
    image = [torch.randn(1, 4096, 24, 128, **bf16) for _ in range(3)]
    text = [torch.randn(1, 512, 24, 128, **bf16) for _ in range(3)]
    cos, sin = torch.rand(4608, 128), torch.rand(4608, 128)
    norms = [(torch.rand(128) + 0.5).to(torch.bfloat16) for _ in range(4)]  # a bf16 model holds them in bf16
    attention = importlib.import_module("pydiff").attention
    return [
        ("SDXL cross", "B2 H10 N4096x77 D64", lambda: attention(q, k, v)),
        ("key padding", "B2 H10 N4096x77 D64", lambda: attention(q, k, v, kv_lens=lens)),
        ("negative prompt (NASA)", "B2 H10 N4096x77+77 D64", lambda: attention(q, k, v, negative=(k_neg, v_neg))),
        ("Flux joint + QK norm + RoPE", "B1 H24 N4096+512 D128", lambda: attention(
            *image, layout="bnhd", joint=tuple(text), rope=(cos, sin), q_norm_weight=norms[0],
            k_norm_weight=norms[1], joint_q_norm_weight=norms[2], joint_k_norm_weight=norms[3])),
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


def main():
    import triton

    rows = run()
    print(f"\nHost time per eager call (no GPU: launches go to a stub driver), torch {torch.__version__}, "
          f"Triton {triton.__version__}, {os.cpu_count()} CPUs")
    print(comparison_table(rows, extra_columns=["ours_us", "peer_us"]))


if __name__ == "__main__":
    main()
