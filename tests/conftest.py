"""Test set-up: on a machine without CUDA, Triton kernels run in Triton's interpreter.

The interpreter is chosen when triton is first imported, so the variable is set here, before any test module
(or pydiff) imports triton.
"""

import os

# Tests time the tuner's candidates where they tune: a choice an earlier run kept on disk would skip that (the tests
# of the store turn it on over a directory of their own)
os.environ.setdefault("PYDIFF_TUNING_CACHE", "0")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The interpreter's dots are numpy matmuls on tiny blocks: BLAS thread spin-up costs more than the math
    # (about 100x slower on a loaded 2-core machine), so keep BLAS single-threaded in the test process.
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:
        pass

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def cuda_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")
