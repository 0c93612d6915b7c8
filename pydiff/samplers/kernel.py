"""The fused step's kernel call: lincomb's selected backend, called directly on the hot path.

``torch.ops.pydiff.lincomb`` goes through torch.library's Python dispatch (~0.2 ms per call on a 2-core CPU, more
than the kernel itself at 1x4x64x64). A sampling loop calls the same op thousands of times with inputs it built
itself, so it validates once per run and then calls the backend that ``pydiff::lincomb`` would select (same
kernels: C++/OpenMP, CUDA, Triton or the torch reference, following ``use_backend``) on fresh contiguous outputs.
Under torch.compile (or with ``use_op=True``) it calls the registered op, so graphs still see ``pydiff::lincomb``.
`MomentsKernel` does the same for ``pydiff::pair_moments``, the reduction behind guidance rescale.
"""

from __future__ import annotations

from typing import List, Sequence

import torch

from ..ops import moments
from ..ops.linear import backends, check_lincomb_args, lincomb, run_lincomb

#: route every step through the registered op instead (slower; for tracing tools that must see each call)
USE_OP = False


class StepKernel:
    """``kernel(inputs, coefs, clamp) -> outputs``, bound to the backend in force when it was made (per run)."""

    def __init__(self, device: torch.device, use_op: bool = False, check_every_call: bool = False):
        self.device = torch.device(device)
        self.use_op = use_op or USE_OP
        self.check_every_call = check_every_call
        self.backend, self._impl = backends.select(self.device)
        self._checked = set()

    def __call__(self, inputs: Sequence[torch.Tensor], coefs: torch.Tensor, clamp: float) -> List[torch.Tensor]:
        if self.use_op or torch.compiler.is_compiling():
            return lincomb(inputs, coefs, clamp)
        key = (len(inputs), tuple(coefs.shape), inputs[0].shape, inputs[0].dtype)
        if self.check_every_call or key not in self._checked:
            # metadata only; within a run the loop builds every later input of a wiring alike
            check_lincomb_args(inputs, coefs, clamp)
            self._checked.add(key)
        return run_lincomb(self._impl, inputs, coefs, clamp)


class MomentsKernel:
    """``moments(a, b) -> float64 (B, 5)`` per-row sums (see pydiff/ops/moments.py), bound to a backend per run."""

    def __init__(self, device: torch.device, use_op: bool = False):
        self.device = torch.device(device)
        self.use_op = use_op or USE_OP
        self.backend, self._impl = moments.backends.select(self.device)
        self._checked = set()

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.use_op or torch.compiler.is_compiling():
            return moments.pair_moments(a, b)
        key = (a.shape, a.dtype, b.shape, b.dtype)
        if key not in self._checked:
            moments.check_pair_moments_args(a, b)
            self._checked.add(key)
        return moments.run_pair_moments(self._impl, a, b)
