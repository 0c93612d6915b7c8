"""Backend selection: the backend follows the tensor's device and can be forced.

Backends: ``torch`` (the pure-torch reference), ``cpp`` (compiled C++/OpenMP, CPU tensors), ``cuda`` (compiled
CUDA C++, CUDA tensors), ``triton`` (Triton kernels: compiled on CUDA tensors, run by the Triton interpreter on
CPU tensors). ``auto`` picks per device: CPU -> cpp, CUDA -> the op's fastest measured GPU backend.
Force one with ``pydiff.use_backend("triton")`` or the ``PYDIFF_BACKEND`` environment variable.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Callable, Dict, Iterator, Sequence

import torch

BACKENDS = ("auto", "torch", "cpp", "cuda", "triton")

#: every op's backend table by op name (``pydiff::lincomb`` ...), filled as op modules are imported
REGISTRY: Dict[str, "OpBackends"] = {}

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("pydiff_backend", default=None)


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name


def env_switch(name: str, default: bool = True) -> bool:
    """An on/off environment setting: 1/0, true/false or on/off (any case; unset or empty: ``default``); anything
    else is an error naming it."""
    value = os.environ.get(name, "").strip().lower()
    if value not in ("0", "1", "false", "true", "off", "on", ""):
        raise ValueError(f"{name} must be 0 or 1 (or false/true, off/on), got {value!r}")
    return default if value == "" else value in ("1", "true", "on")


def environment_reader(*names: str) -> Callable[[], tuple]:
    """A function giving the raw values of these environment variables (None where unset) in one cheap read, for
    the keys of cached calls that must follow them. On POSIX it reads ``os.environ``'s own bytes mapping, which
    every change through ``os.environ`` updates: ``os.environ.get`` takes ~1 us per unset name (a KeyError inside),
    a sixth of a planned attention call's host time for three names."""
    data = getattr(os.environ, "_data", None)
    if os.name == "posix" and isinstance(data, dict):
        keys = tuple(os.fsencode(name) for name in names)
        return lambda: tuple(map(data.get, keys))
    return lambda: tuple(map(os.environ.get, names))


def backend_key_reader(*names: str) -> Callable[[], tuple]:
    """A function giving what decides ``current_backend()`` (the forced name and the raw setting), without checking
    it, and the raw values of the other environment variables ``names``, in one read (``environment_reader``): a
    key for cached calls, each made after ``current_backend()`` accepted the same two."""
    read = environment_reader("PYDIFF_BACKEND", *names)
    return lambda: (_forced.get(), *read())


backend_key = backend_key_reader()


def current_backend() -> str:
    """The backend in force: ``use_backend`` first, then ``PYDIFF_BACKEND``, else ``auto``."""
    forced = _forced.get()
    if forced is not None:
        return forced
    return _check_name(os.environ.get("PYDIFF_BACKEND", "auto") or "auto", "PYDIFF_BACKEND")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Force ``name`` for every pydiff op called inside the block (per thread / task)."""
    token = _forced.set(_check_name(name, "use_backend(name)"))
    try:
        yield name
    finally:
        _forced.reset(token)


class OpBackends:
    """The implementations of one op, keyed by backend name, with the order ``auto`` tries on each device."""

    def __init__(self, op: str, gpu_order: Sequence[str] = ("cuda", "triton", "torch")):
        self.op = op
        self.gpu_order = tuple(gpu_order)
        self.impls: Dict[str, Callable] = {}
        self.usable: Dict[str, Callable[[torch.device], str | None]] = {}
        #: the op as one pure-torch function of its own arguments returning its outputs: what exporters lower it to
        #: (pydiff.export), so exported graphs hold standard ops only
        self.reference: Callable | None = None
        REGISTRY[op] = self

    def op_reference(self, fn: Callable) -> Callable:
        """Keep ``fn`` as the op's reference (`reference`); returns it, so it decorates too."""
        self.reference = fn
        return fn

    def register(self, backend: str, usable: Callable[[torch.device], str | None]):
        """Decorator: register ``fn`` for ``backend``; ``usable(device)`` returns None or why it cannot run."""
        _check_name(backend, "backend")

        def wrap(fn):
            self.impls[backend] = fn
            self.usable[backend] = usable
            return fn

        return wrap

    def why_not(self, backend: str, device: torch.device) -> str | None:
        if backend not in self.impls:
            return f"{self.op} has no {backend!r} implementation"
        return self.usable[backend](device)

    def select(self, device: torch.device) -> tuple[str, Callable]:
        backend = current_backend()
        if backend == "auto":
            order = ("cpp", "torch") if device.type == "cpu" else self.gpu_order
            for name in order:
                if self.why_not(name, device) is None:
                    return name, self.impls[name]
            raise RuntimeError(f"{self.op}: no usable backend for device {device}")
        reason = self.why_not(backend, device)
        if reason is not None:
            raise RuntimeError(f"{self.op}: backend {backend!r} cannot run on {device}: {reason}")
        return backend, self.impls[backend]
