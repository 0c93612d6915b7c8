"""pydiff: fused Triton/CUDA/C++ kernels for fast diffusion-model inference.

    import pydiff
    pydiff.info()                                   # versions, devices, usable backends
    x = pydiff.sample(model, noise, sampler="dpmpp_2m", steps=20, schedule=..., guidance_scale=...)
    out = pydiff.attention(q, k, v)                 # (B, H, N, D), like F.scaled_dot_product_attention
"""

from importlib import import_module

__version__ = "0.1.0"

from .ops import add_noise, current_backend, use_backend  # noqa: E402
from .runtime import info  # noqa: E402

# Imported eagerly so that ``pydiff.attention`` is the function: the first import of a submodule binds its name
# on the package, and the from-import below rebinds it to the function (``from pydiff.attention import ...``
# still reaches the module through sys.modules).
from .attention import attention  # noqa: E402

# Heavier parts load on first use, so `import pydiff` stays fast and layer order stays one-way.
_LAZY = {
    "sample": ("pydiff.samplers", "sample"),
    "schedules": ("pydiff.schedules", None),
    "samplers": ("pydiff.samplers", None),
    "models": ("pydiff.models", None),
    "metrics": ("pydiff.metrics", None),
    "teleport": ("pydiff.teleport", None),
    "export": ("pydiff.export", None),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'pydiff' has no attribute {name!r}")


__all__ = ["__version__", "add_noise", "attention", "current_backend", "info", "sample", "use_backend"]
