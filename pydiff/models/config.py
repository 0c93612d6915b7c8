"""Checks shared by the model configs and the models' inputs."""

from __future__ import annotations

from typing import Optional

import torch


def require_positive_ints(config, names) -> None:
    """Raise ValueError naming the first field of ``config`` in ``names`` that is not an int >= 1 (bools refused)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")


def check_labels(labels, batch: int, count: int, name: str, device: Optional[torch.device] = None) -> torch.Tensor:
    """``labels`` (batch,) int64/int32 in [0, count), on ``device`` when given, as int64. The range check reads the
    labels on the host; while a CUDA graph is being captured (which cannot) it is left out."""
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 tensor of labels, got "
                        f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(labels.shape)}")
    if device is not None and labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the sample is on {device}")
    capturing = labels.is_cuda and torch.cuda.is_current_stream_capturing()
    if batch and not capturing and ((labels < 0) | (labels >= count)).any():
        raise ValueError(f"{name} must lie in [0, {count - 1}], got values in [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    return labels.long()
