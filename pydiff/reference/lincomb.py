"""Reference for the lincomb op (see csrc/pydiff_core.h for the definition)."""

from __future__ import annotations

from typing import List, Sequence

import torch


def lincomb_reference(inputs: Sequence[torch.Tensor], coefs: torch.Tensor, clamp: float,
                      compute_dtype: torch.dtype | None = None) -> List[torch.Tensor]:
    """``d = clamp(C[:,0,:n] . in)``; ``out_o = C[:,1+o,:n] . in + C[:,1+o,n] * d`` per batch row.

    inputs: n tensors (B, ...); coefs: (1 or B, n_out+1, n+1). Computed in ``compute_dtype`` (float32 for
    16-bit inputs by default) and returned in the inputs' dtype.
    """
    dtype = inputs[0].dtype
    if compute_dtype is None:
        compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    n_in = len(inputs)
    batch = inputs[0].shape[0] if inputs[0].dim() else 1
    stacked = torch.stack([t.reshape(batch, -1).to(compute_dtype) for t in inputs], dim=1)  # (B, n, inner)
    c = coefs.to(compute_dtype)
    d = torch.einsum("bj,bji->bi", c[:, 0, :n_in].expand(batch, -1), stacked)
    if clamp > 0:
        d = d.clamp(-clamp, clamp)
    outs = torch.einsum("boj,bji->boi", c[:, 1:, :n_in].expand(batch, -1, -1), stacked)
    outs = outs + c[:, 1:, n_in:].expand(batch, -1, -1) * d[:, None, :]
    return [o.reshape(inputs[0].shape).to(dtype) for o in outs.unbind(1)]
