"""Export for deployment: a model, or a whole few-step sampler with its model (``pydiff.samplers.SamplerModule``),
as an ONNX file verified with ONNX Runtime, an AOTInductor package verified by loading it, or a TensorRT engine
built from the ONNX file.

Lowering: every pydiff op in the exported program becomes its pure-torch reference (``OpBackends.reference``), so
an ONNX graph holds standard ONNX ops only and needs no plugin, whatever device the model was exported on.
AOTInductor compiles the same program, but on CUDA it keeps ``pydiff::attention``, a ``triton_op`` there, and
compiles pydiff's Triton kernel into the package.

Files: each is written into a scratch folder beside its target and moved into place only after it verified. An
existing file is replaced only if pydiff made it (the ``pydiff.export`` marker: ONNX metadata, a ``.pt2``
archive's comment) or with ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.utils import _pytree as pytree

from ..ops.backend import REGISTRY

#: the key of pydiff's marker in the files it writes
MARKER = "pydiff.export"

#: (atol, rtol) of the check against the eager model, by the outputs' dtype: |exported - eager| <= atol + rtol |eager|
TOLERANCES = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2),
              torch.bfloat16: (5e-2, 5e-2)}


@dataclass(frozen=True)
class Exported:
    """What an export wrote and how it checked: ``max_abs_error`` of its outputs against the eager model's on the
    example inputs, within ``tolerance`` (atol, rtol); both None when not verified."""

    path: Path
    format: str
    seconds: float
    max_abs_error: Optional[float] = None
    tolerance: Optional[Tuple[float, float]] = None

    def __str__(self) -> str:
        size = self.path.stat().st_size / 2**20 if self.path.exists() else float("nan")
        check = "not verified" if self.max_abs_error is None else \
            f"max |exported - eager| {self.max_abs_error:.3g} (atol {self.tolerance[0]:g}, rtol {self.tolerance[1]:g})"
        return f"{self.format}: {self.path} ({size:.2f} MiB, {self.seconds:.1f} s), {check}"


class ExportMismatch(ValueError):
    """The exported program's outputs differ from the eager model's beyond the tolerance."""


def lower(program: torch.export.ExportedProgram, keep: Sequence[str] = ()) -> torch.export.ExportedProgram:
    """``program`` with every pydiff op, except those named in ``keep`` (``"pydiff::attention"``), replaced by its
    pure-torch reference."""
    table = {}
    for name, ops in REGISTRY.items():
        if name in keep:
            continue
        if ops.reference is None:
            raise RuntimeError(f"{name} has no reference to lower it to (OpBackends.op_reference)")
        namespace, op = name.split("::")
        table[getattr(getattr(torch.ops, namespace), op).default] = ops.reference
    return program.run_decompositions(table)


def _check_call(model, args) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple of the model's positional inputs, got {type(args).__name__}")


def export_program(model: torch.nn.Module, args: Sequence[Any], kwargs: Optional[Dict[str, Any]] = None,
                   dynamic_shapes=None, keep: Sequence[str] = ()) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model(*args, **kwargs)`` in inference mode (no autograd), lowered (`lower`)."""
    _check_call(model, args)
    with torch.no_grad():
        program = torch.export.export(model, tuple(args), kwargs=kwargs, dynamic_shapes=dynamic_shapes)
    return lower(program, keep)


def _eager(model: torch.nn.Module, args: Sequence[Any], kwargs: Optional[Dict[str, Any]]):
    """The model's outputs on the example inputs, before it is exported: what the file is checked against, and a
    first call that makes what pydiff builds on the host once and caches (neighborhood layouts, launch plans), which
    the exported graph then holds as constants."""
    _check_call(model, args)
    with torch.no_grad():
        return model(*args, **(kwargs or {}))


def _tensors(tree) -> list:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _made_by_pydiff(path: Path) -> bool:
    try:
        if path.suffix == ".onnx":
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            return any(prop.key == MARKER for prop in model.metadata_props)
        if path.suffix == ".pt2":
            with zipfile.ZipFile(path) as archive:
                return archive.comment.startswith(MARKER.encode())
    except Exception:  # not a file of that format: not ours
        return False
    return False


def _target(path, suffix: str, overwrite: bool) -> Path:
    """The checked output path: ``suffix``, a folder that exists, and no file pydiff did not make unless
    ``overwrite``."""
    path = Path(path)
    if path.suffix != suffix:
        raise ValueError(f"path must end in {suffix}, got {str(path)!r}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path's folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"path {str(path)!r} is a folder")
    if path.exists() and not overwrite and not _made_by_pydiff(path):
        raise FileExistsError(f"{str(path)!r} exists and pydiff did not make it; pass overwrite=True to replace it")
    return path


def _check_outputs(got, expected, tolerance) -> Tuple[float, Tuple[float, float]]:
    """Max |got - expected| over the outputs; raises ExportMismatch beyond atol + rtol |expected|."""
    expected = _tensors(expected)
    if len(got) != len(expected):
        raise ExportMismatch(f"the exported program returns {len(got)} tensors, the model {len(expected)}")
    if tolerance is None:
        tolerance = TOLERANCES.get(expected[0].dtype, TOLERANCES[torch.float32])
    atol, rtol = tolerance
    worst = 0.0
    for i, (g, e) in enumerate(zip(got, expected)):
        g = torch.as_tensor(g).to(e.device)
        if g.shape != e.shape:
            raise ExportMismatch(f"output {i} is {tuple(g.shape)} exported, {tuple(e.shape)} eager")
        error = (g.double() - e.double()).abs()
        worst = max(worst, float(error.max()) if error.numel() else 0.0)
        if not bool((error <= atol + rtol * e.double().abs()).all()):
            raise ExportMismatch(f"output {i} differs from the eager model's by up to {float(error.max()):.3g} "
                                 f"(atol {atol:g}, rtol {rtol:g})")
    return worst, (float(atol), float(rtol))


def _marker(model: torch.nn.Module, kind: str) -> str:
    import pydiff

    return json.dumps({"version": pydiff.__version__, "torch": torch.__version__, "model": type(model).__name__,
                       "format": kind})


def _finish(scratch: Path, target: Path, overwrite: bool) -> None:
    """Move what the scratch folder holds (the file and any external data beside it) into the target's folder; a
    data file there already is replaced only with the file pydiff made beside it, or with ``overwrite``."""
    items = sorted(scratch.iterdir())
    for item in items:
        beside = target.parent / item.name
        if item.name != target.name and beside.exists() and not overwrite and not _made_by_pydiff(target):
            raise FileExistsError(f"{str(beside)!r} exists and pydiff did not make it; pass overwrite=True to "
                                  "replace it")
    for item in items:
        os.replace(item, target.parent / item.name)


def onnx(model: torch.nn.Module, args: Sequence[Any], path, *, kwargs: Optional[Dict[str, Any]] = None,
         dynamic_shapes=None, opset: Optional[int] = None, optimize: bool = True, overwrite: bool = False,
         verify: bool = True, tolerance: Optional[Tuple[float, float]] = None) -> Exported:
    """``model(*args, **kwargs)`` as an ONNX file at ``path`` (standard ops only), run by ONNX Runtime on the
    example inputs and checked against the eager model (``TOLERANCES`` by dtype, or ``tolerance`` (atol, rtol))
    before it is moved into place. dynamic_shapes: as ``torch.export.export`` takes them; opset: the ONNX opset
    (torch's default when None). optimize: torch.onnx's graph optimizer (constant folding, dead code); it takes
    most of the time of a long graph (65 of 100 s for a 20-step sampler with the digits DiT, which then runs 15%
    faster in ONNX Runtime)."""
    target = _target(path, ".onnx", overwrite)
    start = time.perf_counter()
    expected = _eager(model, args, kwargs)
    program = export_program(model, args, kwargs, dynamic_shapes)
    with torch.no_grad():
        onnx_program = torch.onnx.export(program, tuple(args), kwargs=kwargs, dynamo=True, opset_version=opset,
                                         optimize=optimize, verbose=False)
    onnx_program.model.metadata_props[MARKER] = _marker(model, "onnx")
    scratch = Path(tempfile.mkdtemp(prefix=".pydiff-export-", dir=target.parent))
    try:
        onnx_program.save(str(scratch / target.name))
        error = None
        if verify:
            got = run_onnx(scratch / target.name, *args, **(kwargs or {}))
            error, tolerance = _check_outputs(got, expected, tolerance)
        _finish(scratch, target, overwrite)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Exported(target, "onnx", time.perf_counter() - start, error, tolerance if verify else None)


class OnnxRunner:
    """An ONNX file in one ONNX Runtime session (on CUDA when the inputs are and ONNX Runtime has it), called like
    the model it was exported from: ``runner(*args, **kwargs)`` gives its outputs as CPU tensors, in order."""

    def __init__(self, path, cuda: bool = False):
        import onnxruntime

        providers = ["CPUExecutionProvider"]
        if cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *args, **kwargs) -> list:
        inputs = _runnable(_tensors((args, kwargs)))
        if len(self.names) != len(inputs):
            raise ValueError(f"the ONNX file takes {len(self.names)} inputs ({self.names}), {len(inputs)} tensors "
                             "were given")
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.names, inputs)}
        return [torch.from_numpy(out) for out in self.session.run(None, feed)]


def _runnable(inputs: list) -> list:
    if any(t.dtype == torch.bfloat16 for t in inputs):
        raise TypeError("ONNX Runtime runs no bfloat16 graphs from numpy inputs (numpy has no bfloat16, and its CPU "
                        "kernels lack it): export with verify=False, or verify a float16/float32 copy of the model")
    return inputs


def run_onnx(path, *args, **kwargs) -> list:
    """``OnnxRunner(path)(*args, **kwargs)``: the ONNX file run once like its model."""
    cuda = any(t.is_cuda for t in _runnable(_tensors((args, kwargs))))
    return OnnxRunner(path, cuda=cuda)(*args, **kwargs)


def aoti(model: torch.nn.Module, args: Sequence[Any], path, *, kwargs: Optional[Dict[str, Any]] = None,
         dynamic_shapes=None, overwrite: bool = False, verify: bool = True,
         tolerance: Optional[Tuple[float, float]] = None) -> Exported:
    """``model(*args, **kwargs)`` as an AOTInductor package at ``path`` (.pt2, for
    ``torch._inductor.aoti_load_package``, or C++'s ``AOTIModelPackageLoader``), compiled for the inputs' device,
    loaded again and checked against the eager model before it is moved into place."""
    from .. import attention

    target = _target(path, ".pt2", overwrite)
    start = time.perf_counter()
    cuda = any(t.is_cuda for t in _tensors((tuple(args), kwargs or {})))
    keep = ("pydiff::attention",) if cuda and attention.ATTENTION_IS_TRITON_OP else ()
    expected = _eager(model, args, kwargs)
    program = export_program(model, args, kwargs, dynamic_shapes, keep)
    scratch = Path(tempfile.mkdtemp(prefix=".pydiff-export-", dir=target.parent))
    try:
        package = torch._inductor.aoti_compile_and_package(program, package_path=str(scratch / target.name))
        with zipfile.ZipFile(package, "a") as archive:
            archive.comment = f"{MARKER} {_marker(model, 'aoti')}".encode()
        error = None
        if verify:
            runner = torch._inductor.aoti_load_package(package)
            with torch.no_grad():
                got = _tensors(runner(*args, **(kwargs or {})))
            error, tolerance = _check_outputs(got, expected, tolerance)
        _finish(scratch, target, overwrite)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Exported(target, "aoti", time.perf_counter() - start, error, tolerance if verify else None)


def tensorrt(onnx_path, path, *, fp16: bool = False, shapes: Optional[Dict[str, Tuple[Sequence[int], ...]]] = None,
             workspace_gib: float = 4.0, overwrite: bool = False) -> Exported:
    """A serialized TensorRT engine at ``path`` (.plan) built from the ONNX file ``onnx_path`` (`onnx`'s output,
    already verified with ONNX Runtime), with NVIDIA TensorRT's Python package on a CUDA machine.

    fp16: allow half-precision kernels. shapes: for each input with dynamic dims, its (min, opt, max) shapes (an
    optimization profile). The engine itself is not run here: run it with TensorRT's runtime. Engines carry no
    marker, so an existing one is replaced only with overwrite=True.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError("pydiff.export.tensorrt needs NVIDIA TensorRT's Python package (pip install tensorrt) on a "
                          "CUDA machine; pydiff.export.onnx writes the ONNX file it builds from") from exc
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"onnx_path {str(onnx_path)!r} is not a file")
    target = Path(path)
    if target.suffix not in (".plan", ".engine"):
        raise ValueError(f"path must end in .plan or .engine, got {str(target)!r}")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{str(target)!r} exists; pass overwrite=True to replace it")
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {str(onnx_path)!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = dict(shapes or {})
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            if tensor.name not in shapes:
                raise ValueError(f"input {tensor.name!r} has dynamic shape {tuple(tensor.shape)}: give its (min, opt, "
                                 f"max) shapes in shapes={{{tensor.name!r}: ...}}")
            profile.set_shape(tensor.name, *[tuple(s) for s in shapes.pop(tensor.name)])
        config.add_optimization_profile(profile)
    if shapes:
        raise ValueError(f"shapes names inputs that are not dynamic (or not inputs): {sorted(shapes)}")
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT could not build an engine from {str(onnx_path)!r} (see its log above)")
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".pydiff-export-", delete=False) as scratch:
        scratch.write(memoryview(engine))
    os.replace(scratch.name, target)
    return Exported(target, "tensorrt", time.perf_counter() - start)
