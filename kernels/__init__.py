"""pydiff's Triton kernels, one op family per module (shipped in the wheel as ``pydiff.kernels``); launching them:
``plans``."""
