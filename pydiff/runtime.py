"""What this installation can run: versions, devices and the usable backend of every op."""

from __future__ import annotations

import os
import platform
from typing import Any, Dict

import torch

from .ops import REGISTRY, current_backend, native


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


def info() -> Dict[str, Any]:
    """Versions of pydiff, torch, triton and CUDA; devices; which backends are built and usable."""
    from . import __version__

    cpu_mod, cuda_mod = native.cpu_module(), native.cuda_module()
    cuda_devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    triton_version = _version("triton")
    interpreting = native.triton_interpreting() if triton_version else False
    backends = {
        "cpp (CPU C++/OpenMP)": {
            "built": cpu_mod is not None,
            "usable": cpu_mod is not None,
            "detail": f"{cpu_mod.openmp_threads()} OpenMP threads" if cpu_mod else native.cpp_why_not(
                torch.device("cpu")),
        },
        "cuda (CUDA C++)": {
            "built": cuda_mod is not None,
            "usable": cuda_mod is not None and bool(cuda_devices),
            "detail": (f"CUDA runtime {cuda_mod.runtime_version()}" if cuda_mod else
                       native.cuda_why_not(torch.device("cuda"))) + ("" if cuda_devices else "; no CUDA device"),
        },
        "triton (GPU)": {
            "built": triton_version is not None,
            "usable": triton_version is not None and bool(cuda_devices) and not interpreting,
            "detail": f"triton {triton_version}, {_launch_plans()}" if triton_version else native.triton_error(),
        },
        "triton (interpreter, CPU)": {
            "built": triton_version is not None,
            "usable": triton_version is not None and interpreting,
            "detail": "TRITON_INTERPRET=1" if interpreting else "set TRITON_INTERPRET=1 to use",
        },
    }
    ops = {}
    for name, table in sorted(REGISTRY.items()):
        ops[name] = {
            device: [b for b in table.impls if table.why_not(b, torch.device(device)) is None]
            for device in (["cpu"] + (["cuda"] if cuda_devices else []))
        }
    return {
        "pydiff": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "cpu_threads": torch.get_num_threads(),
        "cuda_devices": cuda_devices,
        "backend_in_force": current_backend(),
        "PYDIFF_BACKEND": os.environ.get("PYDIFF_BACKEND"),
        "backends": backends,
        "ops": ops,
        # what pydiff.export writes with: ONNX (checked by ONNX Runtime), AOTInductor (torch's), TensorRT (optional)
        "export": {module: _version(module) for module in ("onnx", "onnxscript", "onnxruntime", "tensorrt")},
    }


def _launch_plans() -> str:
    """Whether repeated eager launches skip Triton's JIT, and where the autotuner's choices are kept
    (``pydiff.kernels.plans``)."""
    from pydiff.kernels import plans

    try:
        store = f"tuned choices kept: {plans.tuning_store_place()}"
    except ValueError as error:  # (a bad PYDIFF_TUNING_CACHE: info still reports the rest)
        store = str(error)
    return ("eager launch plans" if plans.ENABLED else "no eager launch plans (they need Triton 3.3+)") + f", {store}"


def format_info(data: Dict[str, Any]) -> str:
    """``info()`` as the aligned text ``pydiff info`` prints."""
    lines = [f"pydiff {data['pydiff']}  (python {data['python']}, {data['platform']})",
             f"torch {data['torch']} (CUDA {data['torch_cuda']}), triton {data['triton']}, "
             f"{data['cpu_threads']} CPU threads",
             f"CUDA devices: {', '.join(data['cuda_devices']) or 'none'}",
             f"backend in force: {data['backend_in_force']}", "backends:"]
    for name, b in data["backends"].items():
        state = "usable" if b["usable"] else ("built" if b["built"] else "missing")
        lines.append(f"  {name:<28} {state:<8} {b['detail'] or ''}")
    lines.append("ops (usable backends per device):")
    for op, per_device in data["ops"].items():
        lines.append(f"  {op:<28} " + "; ".join(f"{d}: {', '.join(bs)}" for d, bs in per_device.items()))
    lines.append("export: " + ", ".join(f"{m} {v or 'missing'}" for m, v in data["export"].items()))
    return "\n".join(lines)
