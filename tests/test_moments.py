"""pydiff::pair_moments (per-row raw moments of two tensors, the reduction behind guidance rescale), every backend."""

import pytest
import torch
from test_ops import poison_empty  # noqa: F401  (autouse: uninitialized outputs are NaN, so unwritten rows fail)

from pydiff.ops import REGISTRY, pair_moments, use_backend
from pydiff.ops.moments import MOMENTS, pair_moments_reference

CPU_BACKENDS = ["torch", "cpp", "triton"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _pair(shape, dtype, seed, noncontiguous=False, device="cpu"):
    """Two random tensors of ``shape`` with a non-zero mean (so sums and squares differ); strided views if asked."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for offset in (0.3, -0.7):
        if noncontiguous:  # a transposed view: same shape, strides not row-major
            t = torch.randn(*reversed(shape), generator=g, dtype=torch.float64).permute(*reversed(range(len(shape))))
        else:
            t = torch.randn(*shape, generator=g, dtype=torch.float64)
        out.append((t * 1.5 + offset).to(device=device, dtype=dtype))
    return out


def _check(out, a, b, backend):
    """Against the float64 sums of the same (already rounded) inputs, with the error measured per moment against
    its sum of absolute terms (the size a summation error scales with)."""
    batch = a.shape[0]
    assert out.dtype == torch.float64 and out.shape == (batch, len(MOMENTS)) and out.device == a.device
    out = out.cpu()
    x = a.detach().cpu().double().reshape(batch, -1)
    y = b.detach().cpu().double().reshape(batch, -1)
    ref = pair_moments_reference(x, y)
    scale = torch.stack([x.abs().sum(1), y.abs().sum(1), (x * x).sum(1), (y * y).sum(1), (x * y).abs().sum(1)], 1)
    # float64 accumulation everywhere, except Triton's float32 block sums of 16/32-bit data
    rtol = 2e-6 if backend == "triton" and a.dtype != torch.float64 else 1e-13
    assert torch.isfinite(out).all()
    assert ((out - ref).abs() <= rtol * scale + 1e-300).all(), ((out - ref).abs() / scale).max().item()


def _usable(backend, device):
    reason = REGISTRY["pydiff::pair_moments"].why_not(backend, torch.device(device))
    if reason is not None:
        pytest.skip(reason)


def _check_backend(backend, shape, dtype, seed, noncontiguous):
    """pair_moments on CPU through ``backend`` for one random pair, against float64."""
    _usable(backend, "cpu")
    a, b = _pair(shape, dtype, seed=seed, noncontiguous=noncontiguous)
    with use_backend(backend):
        out = pair_moments(a, b)
    _check(out, a, b, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("inner", [1, 7, 333, 1025, 4099])
@pytest.mark.parametrize("noncontig", [False, True], ids=["contiguous", "strided"])
def test_matches_float64(backend, dtype, batch, inner, noncontig):
    _check_backend(backend, (batch, inner), dtype, seed=batch * 10007 + inner, noncontiguous=noncontig)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_multi_chunk_rows_and_nd_shapes(backend):
    """Rows longer than one C++ chunk (8192) and one interpreted Triton block (65536), in (B, C, H, W) layout."""
    _check_backend(backend, (2, 4, 131, 137), torch.float32, seed=11, noncontiguous=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_rows_sum_to_zero_and_inputs_untouched(backend):
    _usable(backend, "cpu")
    a, b = torch.empty(3, 0, 5), torch.empty(3, 0, 5)
    with use_backend(backend):
        assert torch.equal(pair_moments(a, b), torch.zeros(3, 5, dtype=torch.float64))
        a, b = _pair((2, 9), torch.float32, seed=5)
        before = (a.clone(), b.clone())
        pair_moments(a, b)
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    _usable(backend, "cpu")
    a, b = _pair((3, 5, 7), torch.float32, seed=3)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.pydiff.pair_moments.default, (a, b))


def test_compile_fullgraph():
    @torch.compile(fullgraph=True, backend="eager")
    def variance_of_a(a, b):
        m = pair_moments(a, b)
        n = a[0].numel()
        return (m[:, 2] - m[:, 0] ** 2 / n) / (n - 1)

    a, b = _pair((2, 3, 11), torch.float32, seed=4)
    expected = a.double().reshape(2, -1).var(1)
    assert torch.allclose(variance_of_a(a, b), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad,match", [
    (lambda x: pair_moments(x.numpy(), x), "a must be a tensor"),
    (lambda x: pair_moments(x, [1.0]), "b must be a tensor"),
    (lambda x: pair_moments(x.int(), x.int()), "a has dtype"),
    (lambda x: pair_moments(x, x.to(torch.complex64)), "b has dtype"),
    (lambda x: pair_moments(x[0, 0], x[0, 0]), "batch dimension"),
    (lambda x: pair_moments(x, x[:1]), "b is"),
    (lambda x: pair_moments(x, x.double()), "b is"),
    (lambda x: pair_moments(x, x.to("meta")), "b is"),
])
def test_bad_input_is_a_clear_error(bad, match):
    x = torch.randn(2, 5)
    with pytest.raises((ValueError, TypeError), match=match):
        bad(x)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_matches_float64(backend, dtype, cuda_device):
    _usable(backend, cuda_device)
    for batch in (1, 3):
        for inner in (1, 7, 333, 1025, 4099, 3 * 64 * 65 + 1):
            for noncontig in (False, True):
                a, b = _pair((batch, inner), dtype, seed=inner + batch, noncontiguous=noncontig, device=cuda_device)
                with use_backend(backend):
                    out = pair_moments(a, b)
                _check(out, a, b, backend)
    a, b = _pair((4, 1 << 20), dtype, seed=9, device=cuda_device)  # many blocks per row: the atomics add up
    with use_backend(backend):
        _check(pair_moments(a, b), a, b, backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_opcheck(backend, cuda_device):
    _usable(backend, cuda_device)
    a, b = _pair((3, 5, 7), torch.float32, seed=3, device=cuda_device)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.pydiff.pair_moments.default, (a, b))
