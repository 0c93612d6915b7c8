"""Pure-torch references: the ground truth in tests and the baseline in benchmarks (float64 when asked).

Layer 1: imports nothing else from pydiff.
"""

from .attention import attention_reference, rms_norm_reference, rope_reference
from .lincomb import lincomb_reference

__all__ = ["attention_reference", "lincomb_reference", "rms_norm_reference", "rope_reference"]
