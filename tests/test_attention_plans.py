"""Eager launch plans of the attention kernels (``pydiff.kernels.attention._PLANS``) against Triton's own launch.

The check compiles the real kernels for sm_90 (Triton's compiler, no GPU) and compares what each launch would pass
to the GPU; it runs in a process of its own, since this one interprets Triton kernels (see
tests/attention_plan_check.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def test_plans_launch_what_triton_launches():
    from pydiff.kernels import attention as kernels

    if not kernels._PLANNABLE:
        pytest.skip(f"Triton {triton.__version__}: launch plans need 3.3+")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "attention_plan_check.py")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    cases = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert len(cases) == 6, result.stdout
