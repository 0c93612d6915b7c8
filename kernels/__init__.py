"""pydiff's Triton kernels, one op family per module (shipped in the wheel as ``pydiff.kernels``)."""


def launch_options(kernel) -> dict:
    """Compile options every launch pins instead of taking Triton's defaults, for a Triton kernel launched directly
    (a tracer's wrapper, ``torch.library.wrap_triton``, accepts only the launch options it knows): multiply-add
    contraction, which the kernels' arithmetic is written for (Triton 3.9 warns that 3.10 turns it off by default)."""
    from triton.runtime.jit import KernelInterface

    return {"enable_fp_fusion": True} if isinstance(kernel, KernelInterface) else {}
