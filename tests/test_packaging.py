"""The Triton kernels ship inside the package as pydiff.kernels, for editable and regular wheel installs."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pydiff

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_ships_kernels_and_core():
    import pydiff._C_cpu
    import pydiff.kernels.lincomb as lincomb

    assert Path(lincomb.__file__).resolve() == (ROOT / "kernels" / "lincomb.py").resolve()
    assert pydiff._C_cpu.max_inputs == 10


def test_cuda_module_built_when_nvcc_present():
    nvcc_found = subprocess.run(["bash", "-c", "command -v nvcc"], capture_output=True).returncode == 0
    if not nvcc_found or os.environ.get("PYDIFF_CUDA") == "OFF":
        pytest.skip("no nvcc on this machine (or PYDIFF_CUDA=OFF): the CUDA module is not expected")
    import pydiff._C_cuda as cuda

    assert cuda.runtime_version() >= 11000  # linked against a real CUDA runtime; imports without a driver


def test_regular_wheel_ships_kernels(tmp_path):
    """Build a real wheel (CUDA off for speed), install it elsewhere and import the kernels from it."""
    env = dict(os.environ, PYDIFF_CUDA="OFF")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, env=env, timeout=600)
    wheel = next((tmp_path / "dist").glob("pydiff-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pydiff/kernels/lincomb.py" in names and any(n.startswith("pydiff/_C_cpu") for n in names)
    # the bundled demo model and classifier ship inside the package (no download at run time)
    weights = "pydiff/models/weights/"
    assert {weights + "digits_dit.safetensors", weights + "digits_classifier.safetensors"} <= set(names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # An editable install of this checkout puts a redirecting finder on sys.meta_path; drop it so the wheel's
    # files are what gets imported.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'Redirect' not in type(f).__name__]; "
            "import pydiff, pydiff.kernels.lincomb as k, pydiff._C_cpu; "
            "print(pydiff.__file__); print(k.__file__)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target))).stdout.split()
    assert all(Path(p).resolve().is_relative_to(target.resolve()) for p in out), out
    assert pydiff.__version__ in wheel.name
