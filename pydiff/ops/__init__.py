"""pydiff's custom ops (``torch.ops.pydiff.*``) and backend dispatch over the compiled core and Triton."""

from .backend import BACKENDS, REGISTRY, current_backend, use_backend
from .linear import add_noise, lincomb
from .moments import pair_moments

__all__ = ["BACKENDS", "REGISTRY", "add_noise", "current_backend", "lincomb", "pair_moments", "use_backend"]
