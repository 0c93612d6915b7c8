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


class _DirectOp:
    """An op's backend as ``pydiff::<op>`` would select it, bound when made (per run), called without the dispatch;
    arguments are checked the first time each ``key`` (their metadata) is seen."""

    def __init__(self, op_backends, device: torch.device, use_op: bool, check_every_call: bool):
        self.device = torch.device(device)
        self.use_op = use_op or USE_OP
        self.check_every_call = check_every_call
        # compiling, every call goes through the registered op (below): nothing to select
        self.backend, self._impl = (None, None) if torch.compiler.is_compiling() else op_backends.select(self.device)
        self._checked = set()

    def _call(self, key, op, check, run, *args):
        if self.use_op or torch.compiler.is_compiling():
            return op(*args)
        if self.check_every_call or key not in self._checked:
            # metadata only; within a run the loop builds every later call of the same key alike
            check(*args)
            self._checked.add(key)
        return run(self._impl, *args)


class StepKernel(_DirectOp):
    """``kernel(inputs, coefs, clamp) -> outputs``: lincomb's backend, bound when made (per run)."""

    def __init__(self, device: torch.device, use_op: bool = False, check_every_call: bool = False):
        super().__init__(backends, device, use_op, check_every_call)

    def __call__(self, inputs: Sequence[torch.Tensor], coefs: torch.Tensor, clamp: float) -> List[torch.Tensor]:
        key = (len(inputs), tuple(coefs.shape), inputs[0].shape, inputs[0].dtype)
        return self._call(key, lincomb, check_lincomb_args, run_lincomb, inputs, coefs, clamp)


class MomentsKernel(_DirectOp):
    """``moments(a, b) -> float64 (B, 5)`` per-row sums (see pydiff/ops/moments.py): its backend, bound per run."""

    def __init__(self, device: torch.device, use_op: bool = False):
        super().__init__(moments.backends, device, use_op, check_every_call=False)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._call((a.shape, a.dtype, b.shape, b.dtype), moments.pair_moments,
                          moments.check_pair_moments_args, moments.run_pair_moments, a, b)
