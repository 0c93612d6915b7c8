"""Checks shared by the model configs."""

from __future__ import annotations


def require_positive_ints(config, names) -> None:
    """Raise ValueError naming the first field of ``config`` in ``names`` that is not an int >= 1 (bools refused)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")
