"""A Triton driver for hosts without a GPU: kernels compile for a real CUDA target (Triton's own compiler and
ptxas), and a launch records what it would have passed to the GPU instead of running.

It measures and checks the host side of a launch (argument binding, specialisation, pydiff's launch plans) on a
CPU-only machine. Use it in a process that never set ``TRITON_INTERPRET`` (interpreted kernels do not compile)::

    with stub_cuda_driver() as stub:
        attention_forward(...)            # CPU tensors stand in for CUDA ones
    grid, function, args = stub.launches[-1]
    name, metadata = stub.compiled[-1]   # what the last kernel was compiled with
"""

from __future__ import annotations

import collections
import contextlib
import itertools

from triton.backends.compiler import GPUTarget
from triton.runtime import driver

# H100/H200 limits that Triton's runtime reads from a device
_PROPERTIES = {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32}


class _Utils:
    def __init__(self):
        self._handles = itertools.count(1)

    def load_binary(self, name, kernel, shared, device):
        """(module, function, registers, spills, max threads): each loaded kernel gets a handle of its own, so a
        check can tell which compiled kernel a launch used."""
        return 0, next(self._handles), 128, 0, 1024

    def unload_module(self, module):  # (Triton 3.9+ unloads a compiled kernel's module when it is collected)
        pass

    def get_device_properties(self, device):
        return dict(_PROPERTIES)


class StubCudaDriver:
    """Triton's driver interface as the JIT and compiled kernels use it. ``launches`` keeps
    ``(grid, function, kernel arguments)`` of the last 64 launches (a growing list would make timing loops measure
    the garbage collector); ``compiled`` has ``(kernel name, compile metadata)`` of every kernel loaded. A launch
    calls the launch hooks it is passed, as Triton's launchers do."""

    def __init__(self, capability: int = 90):
        self.target = GPUTarget("cuda", capability, 32)
        self.utils = _Utils()
        self.launches = collections.deque(maxlen=64)
        self.compiled = []
        stub = self

        class Launcher:
            def __init__(self, src, metadata):
                stub.compiled.append((metadata.name, metadata))

            def __call__(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata,
                         enter_hook, exit_hook, *args):
                # the hooks as Triton's launchers call them (a profiler's), around the launch
                if enter_hook is not None:
                    enter_hook(launch_metadata)
                stub.launches.append(((grid_x, grid_y, grid_z), function, args))
                if exit_hook is not None:
                    exit_hook(launch_metadata)

        self.launcher_cls = Launcher

    def is_active(self):
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_benchmarker(self):
        """What Triton's autotuner times its candidates with: each runs (compiling it) once, at a made-up time."""
        def bench(kernel_call, quantiles=None, **_):
            kernel_call()
            return [1.0] * len(quantiles) if quantiles else 1.0

        return bench

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


@contextlib.contextmanager
def stub_cuda_driver(capability: int = 90):
    """Make a ``StubCudaDriver`` Triton's active driver for the block; yields it."""
    stub = StubCudaDriver(capability)
    previous = driver._active  # reset_active() would create the default driver, which fails without a GPU
    driver.set_active(stub)
    try:
        yield stub
    finally:
        driver._active = previous
