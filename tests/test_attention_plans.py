"""Eager launch plans of the attention kernels (``pydiff.kernels.plans``) against Triton's own launch, the compile
options every pydiff Triton kernel pins (``plans.launch_options``), and the host-time benchmark.

Both compile the real kernels for sm_90 (Triton's compiler, no GPU) behind a stub driver, in a process of their
own, since this one interprets Triton kernels (see tests/attention_plan_check.py and benchmarks/stub_driver.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def _compiled_run(*command) -> str:
    """Run Python with ``command`` in a process that compiles Triton kernels (no TRITON_INTERPRET); its stdout."""
    from pydiff.kernels import plans

    if not plans.ENABLED:
        pytest.skip(f"Triton {triton.__version__}: launch plans need 3.3+")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, *command], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_plans_launch_what_triton_launches():
    out = _compiled_run(str(ROOT / "tests" / "attention_plan_check.py"))
    assert len([line for line in out.splitlines() if line.startswith("ok ")]) == 20, out


def test_diffusers_models_replay_their_calls():
    """The diffusers processors' eager calls get call plans: a model's second forward runs no op body."""
    pytest.importorskip("diffusers")
    out = _compiled_run(str(ROOT / "tests" / "attention_plan_check.py"), "--diffusers")
    assert "ok diffusers models: the second forward replays all" in out, out


def test_host_benchmark_runs():
    """benchmarks/attention_host.py (host time per eager call, no GPU needed): every row is measured."""
    out = _compiled_run("-m", "benchmarks.attention_host")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("|") and "Triton JIT launch" in line]
    assert [row[1].strip() for row in rows] == ["SDXL cross", "key padding", "key mask", "negative prompt (NASA)",
                                                "Flux joint + QK norm + RoPE", "Chroma: the same + mask per query",
                                                "block-sparse (NABLA 64 x 64)", "causal (a depth decoder's step)",
                                                "neighborhood (LTX-2 decoder, 3 x 7 x 7)"], out
    assert all(float(row[-3]) > 0 and float(row[-2]) > 0 for row in rows), out


def test_first_call_benchmark_runs():
    """benchmarks/attention_host.py --first-call (the tuner's compiles at once against one after another, no GPU
    needed) measures both sides; three tiles, one round, to keep it short."""
    out = _compiled_run("-m", "benchmarks.attention_host", "--first-call", "--candidates", "3", "--rounds", "1")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| first tuned call")]
    assert len(rows) == 1 and float(rows[0][-2].strip().rstrip("x")) > 0, out


def test_stored_choice_benchmark_runs():
    """benchmarks/attention_host.py --stored (a new process's first tuned call: the choice kept on disk against
    tuning again, no GPU needed) measures both sides; three tiles, one round, to keep it short."""
    out = _compiled_run("-m", "benchmarks.attention_host", "--stored", "--candidates", "3", "--rounds", "1")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| first tuned call in a new process")]
    assert len(rows) == 1 and "tiles compiled" in rows[0][1] and float(rows[0][-2].strip().rstrip("x")) > 0, out


def test_compile_threads_setting(monkeypatch):
    """PYDIFF_COMPILE_THREADS sets precompile's threads; anything but a whole number is an error naming it."""
    from pydiff.kernels import plans

    monkeypatch.setenv("PYDIFF_COMPILE_THREADS", "3")
    assert plans.compile_threads() == 3
    monkeypatch.setenv("PYDIFF_COMPILE_THREADS", "two")
    with pytest.raises(ValueError, match="PYDIFF_COMPILE_THREADS"):
        plans.compile_threads()
    monkeypatch.delenv("PYDIFF_COMPILE_THREADS")
    assert plans.compile_threads() >= 1
    if hasattr(os, "sched_getaffinity"):  # (the CPUs this process may run on)
        assert plans.compile_threads() == len(os.sched_getaffinity(0))


def test_plan_cache_is_bounded(monkeypatch):
    """The oldest plans go once MAX_PLANS are held (keys hold scalars such as the scale, so they need not repeat)."""
    from types import SimpleNamespace

    from pydiff.kernels import plans

    class Kernel:  # a JIT function's launch interface, returning its compiled kernel
        arg_names = ["x", "n"]
        params = [SimpleNamespace(name="x", has_default=False), SimpleNamespace(name="n", has_default=False)]

        def __getitem__(self, grid):
            return lambda *args, **flags: SimpleNamespace(packed_metadata=None, src=SimpleNamespace(signature="xn"))

    monkeypatch.setattr(plans, "CACHE", {})
    monkeypatch.setattr(plans, "MAX_PLANS", 4)
    for i in range(7):
        plans.launch(Kernel(), (i, 1), ["tensor", i], {}, key=("k", i), leading=1)
    assert list(plans.CACHE) == [("k", i) for i in range(3, 7)]
    assert plans.CACHE[("k", 6)][1:3] == ((6, 1, 1), (6,))
