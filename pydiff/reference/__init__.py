"""Pure-torch references: the ground truth in tests and the baseline in benchmarks (float64 when asked).

Layer 1: imports nothing else from pydiff.
"""

from .lincomb import lincomb_reference

__all__ = ["lincomb_reference"]
