"""The op registry and its first op, pydiff::lincomb (+ fused forward noising), over every backend."""

import os
import subprocess
import sys

import pytest
import torch

import pydiff
from pydiff.ops import REGISTRY, add_noise, lincomb, use_backend
from pydiff.ops.linear import MAX_INPUTS, MAX_OUTPUTS
from pydiff.reference import lincomb_reference

CPU_BACKENDS = ["torch", "cpp", "triton"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def poison_empty():
    """Uninitialized memory is filled with NaN, so an element a kernel forgets to write fails the test."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = previous[1]


def _rel(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _random_case(shape, n_in, n_out, dtype, coef_batch, generator, noncontiguous=False):
    inputs = []
    for _ in range(n_in):
        if noncontiguous:  # a transposed view: same shape, strides not row-major
            t = torch.randn(*reversed(shape), generator=generator).to(dtype).permute(*reversed(range(len(shape))))
        else:
            t = torch.randn(*shape, generator=generator).to(dtype)
        inputs.append(t)
    coefs = torch.randn(coef_batch, n_out + 1, n_in + 1, generator=generator, dtype=torch.float64)
    return inputs, coefs


def _check_against_float64(inputs, coefs, clamp, outs):
    dtype = inputs[0].dtype
    ref64 = lincomb_reference([t.double() for t in inputs], coefs, clamp)
    if dtype in (torch.float32, torch.float64):
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        for o, r in zip(outs, ref64):
            assert o.dtype == dtype and o.shape == r.shape
            assert torch.isfinite(o).all()
            assert _rel(o, r) <= tol
    else:
        # low precision: at most 2x PyTorch's own error of the same computation in that dtype, plus atol
        torch_lowp = lincomb_reference(inputs, coefs, clamp, compute_dtype=dtype)
        for o, r, t in zip(outs, ref64, torch_lowp):
            err = (o.double() - r).abs().max().item()
            torch_err = (t.double() - r).abs().max().item()
            assert err <= 2 * torch_err + 1e-3 * max(1.0, r.abs().max().item())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n_in,n_out,coef_batch,clamp,noncontig", [
    ((1, 1), 1, 1, 1, 0.0, False),
    ((3, 7), 3, 2, 3, 0.0, True),
    ((2, 77), 5, 3, 1, 0.5, False),
    ((5, 97, 3), 2, 2, 5, 0.0, True),
    ((1, 333), MAX_INPUTS, MAX_OUTPUTS, 1, 1.5, False),
    ((2, 1025), 4, 4, 2, 0.0, False),
])
def test_lincomb_matches_float64(backend, dtype, shape, n_in, n_out, coef_batch, clamp, noncontig):
    g = torch.Generator().manual_seed(hash((shape, n_in, n_out)) % 2**31)
    inputs, coefs = _random_case(shape, n_in, n_out, dtype, coef_batch, g, noncontig)
    with use_backend(backend):
        outs = lincomb(inputs, coefs, clamp)
    assert len(outs) == n_out
    _check_against_float64(inputs, coefs, clamp, outs)


def test_lincomb_large_cpp_uses_threads_and_matches():
    g = torch.Generator().manual_seed(0)
    inputs, coefs = _random_case((3, 4, 64, 65), 4, 2, torch.float32, 1, g)
    with use_backend("cpp"):
        outs = lincomb(inputs, coefs, 0.0)
    _check_against_float64(inputs, coefs, 0.0, outs)


def test_outputs_alias_nothing_and_inputs_untouched():
    g = torch.Generator().manual_seed(1)
    inputs, coefs = _random_case((2, 9), 3, 3, torch.float32, 1, g)
    before = [t.clone() for t in inputs]
    outs = lincomb(inputs, coefs)
    for t, b in zip(inputs, before):
        assert torch.equal(t, b)
    ptrs = {t.data_ptr() for t in inputs}
    assert all(o.data_ptr() not in ptrs for o in outs)


@pytest.mark.parametrize("target", ["epsilon", "v_prediction", "sample", "flow_prediction"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_add_noise_targets(target, backend):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 3, 5, 7, generator=g)
    noise = torch.randn(4, 3, 5, 7, generator=g)
    t = torch.rand(4, generator=g, dtype=torch.float64)
    if target == "flow_prediction":
        alpha, sigma = 1 - t, t
    else:
        abar = torch.rand(4, generator=g, dtype=torch.float64)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    with use_backend(backend):
        x_t, tgt = add_noise(x0, noise, alpha, sigma, target)
    a, s = alpha.view(4, 1, 1, 1), sigma.view(4, 1, 1, 1)
    x0d, nd = x0.double(), noise.double()
    expected = {"epsilon": nd, "v_prediction": a * nd - s * x0d, "sample": x0d, "flow_prediction": nd - x0d}[target]
    assert _rel(x_t, a * x0d + s * nd) < 1e-6
    assert _rel(tgt, expected) < 1e-6


def test_add_noise_matches_diffusers_ddpm():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                    beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 4, 8, 8, generator=g)
    noise = torch.randn(3, 4, 8, 8, generator=g)
    timesteps = torch.tensor([0, 499, 999])
    abar = sched.alphas_cumprod.double()[timesteps]
    x_t, v = add_noise(x0, noise, abar.sqrt(), (1 - abar).sqrt(), "v_prediction")
    assert _rel(x_t, sched.add_noise(x0, noise, timesteps)) < 1e-6
    assert _rel(v, sched.get_velocity(x0, noise, timesteps)) < 1e-6


@pytest.mark.parametrize("clamp", [0.0, 0.7])
@pytest.mark.parametrize("coef_batch", [1, 3])
def test_lincomb_gradients_match_finite_differences(clamp, coef_batch):
    """The op's backward (inputs and coefs) against finite differences in float64, through any backend's forward;
    non-contiguous inputs."""
    g = torch.Generator().manual_seed(6)
    inputs, coefs = _random_case((3, 5, 7), 3, 2, torch.float64, coef_batch, g, noncontiguous=True)
    assert not inputs[0].is_contiguous()
    leaves = [t.clone().requires_grad_(True) for t in inputs] + [coefs.clone().requires_grad_(True)]
    assert torch.autograd.gradcheck(lambda *a: lincomb(list(a[:-1]), a[-1], clamp), leaves)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_add_noise_backward_is_the_chain_rule(backend):
    """x_t = alpha x0 + sigma noise and the v target, differentiated in float32 through add_noise: the gradients
    of x0, noise, alpha and sigma are the hand-written ones (1e-6 relative)."""
    g = torch.Generator().manual_seed(7)
    x0, noise, w1, w2 = (torch.randn(4, 3, 5, generator=g) for _ in range(4))
    abar = torch.rand(4, generator=g, dtype=torch.float64) * 0.9 + 0.05
    alpha, sigma = abar.sqrt().requires_grad_(True), (1 - abar).sqrt().requires_grad_(True)
    x0.requires_grad_(True), noise.requires_grad_(True)
    with use_backend(backend):
        x_t, v = add_noise(x0, noise, alpha, sigma, "v_prediction")
    ((x_t * w1).sum() + (v * w2).sum()).backward()
    a, s = (c.detach().view(4, 1, 1) for c in (alpha, sigma))
    assert _rel(x0.grad, a * w1.double() - s * w2.double()) < 1e-6
    assert _rel(noise.grad, s * w1.double() + a * w2.double()) < 1e-6
    x0d, nd, w1d, w2d = (t.detach().double() for t in (x0, noise, w1, w2))
    assert _rel(alpha.grad, (x0d * w1d + nd * w2d).sum((1, 2))) < 1e-6
    assert _rel(sigma.grad, (nd * w1d - x0d * w2d).sum((1, 2))) < 1e-6


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    g = torch.Generator().manual_seed(4)
    inputs, coefs = _random_case((2, 33), 3, 2, torch.float32, 2, g)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.pydiff.lincomb.default, (inputs, coefs, 0.7))


def test_compile_fullgraph():
    @torch.compile(fullgraph=True, backend="eager")
    def noised(x0, noise, coefs):
        x_t, tgt = lincomb([x0, noise], coefs)
        return x_t * 2, tgt

    g = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    coefs = torch.randn(1, 3, 3, generator=g, dtype=torch.float64)
    x_t, tgt = noised(x0, noise, coefs)
    ref = lincomb_reference([x0, noise], coefs, 0.0)
    assert _rel(x_t, 2 * ref[0]) < 1e-6 and _rel(tgt, ref[1]) < 1e-6


def test_compile_inductor_fullgraph():
    @torch.compile(fullgraph=True)
    def step(x, m, coefs):
        return lincomb([x, m], coefs)[0] + 1

    g = torch.Generator().manual_seed(6)
    x, m = torch.randn(2, 17, generator=g), torch.randn(2, 17, generator=g)
    coefs = torch.randn(1, 2, 3, generator=g, dtype=torch.float64)
    assert _rel(step(x, m, coefs), lincomb_reference([x, m], coefs, 0.0)[0] + 1) < 1e-6


@pytest.mark.parametrize("bad,match", [
    (lambda x, c: lincomb([], c), "inputs"),
    (lambda x, c: lincomb([x, x[:1]], c), r"inputs\[1\]"),
    (lambda x, c: lincomb([x, x.double()], c), r"inputs\[1\]"),
    (lambda x, c: lincomb([x.int(), x.int()], c), "dtype"),
    (lambda x, c: lincomb([x, x], c.float()), "coefs"),
    (lambda x, c: lincomb([x, x], c[:, :, :2]), "coefs"),
    (lambda x, c: lincomb([x, x], torch.zeros(3, 2, 3, dtype=torch.float64)), "batch"),
    (lambda x, c: lincomb([x] * (MAX_INPUTS + 1), torch.zeros(1, 2, MAX_INPUTS + 2, dtype=torch.float64)),
     "inputs"),
    (lambda x, c: lincomb([x, x], c, float("nan")), "clamp"),
    (lambda x, c: add_noise(x, x[:1], 1.0, 0.0), "noise"),
    (lambda x, c: add_noise(x, x, torch.ones(5), 0.0), "alpha_t"),
    (lambda x, c: add_noise(x, x, 1.0, 0.0, target="score"), "target"),
])
def test_bad_input_is_a_clear_error(bad, match):
    x = torch.randn(2, 5)
    c = torch.randn(1, 2, 3, dtype=torch.float64)
    with pytest.raises((ValueError, TypeError), match=match):
        bad(x, c)


def test_backend_forcing_and_env():
    table = REGISTRY["pydiff::lincomb"]
    cpu = torch.device("cpu")
    assert table.select(cpu)[0] == "cpp"
    with use_backend("torch"):
        assert table.select(cpu)[0] == "torch"
        with use_backend("triton"):
            assert pydiff.current_backend() == "triton"
        assert pydiff.current_backend() == "torch"
    with use_backend("cuda"), pytest.raises(RuntimeError, match="cuda"):
        table.select(cpu)
    with pytest.raises(ValueError, match="use_backend"):
        with use_backend("fastest"):
            pass
    env = dict(os.environ, PYDIFF_BACKEND="torch")
    code = "import pydiff; print(pydiff.current_backend())"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "torch"


def test_environment_reader_follows_changes(monkeypatch):
    """The raw settings cached calls key on follow every change made through os.environ."""
    from pydiff.ops.backend import backend_key, environment_reader

    read = environment_reader("PYDIFF_TEST_SWITCH_A", "PYDIFF_TEST_SWITCH_B")
    monkeypatch.delenv("PYDIFF_TEST_SWITCH_A", raising=False)
    monkeypatch.setenv("PYDIFF_TEST_SWITCH_B", "1")
    first = read()
    assert first[0] is None and first[1] in ("1", b"1")
    monkeypatch.setenv("PYDIFF_TEST_SWITCH_A", "0")
    monkeypatch.setenv("PYDIFF_TEST_SWITCH_B", "2")
    second = read()
    assert second[0] in ("0", b"0") and second[1] in ("2", b"2")
    monkeypatch.delenv("PYDIFF_TEST_SWITCH_A")
    assert read()[0] is None
    monkeypatch.setenv("PYDIFF_BACKEND", "torch")
    unforced = backend_key()
    with use_backend("triton"):
        assert backend_key() != unforced
    monkeypatch.setenv("PYDIFF_BACKEND", "auto")
    assert backend_key() != unforced


def test_info_reports_backends(monkeypatch, tmp_path):
    data = pydiff.info()
    assert data["torch"] == torch.__version__
    assert data["backends"]["cpp (CPU C++/OpenMP)"]["usable"]
    assert "pydiff::lincomb" in data["ops"]
    assert "cpp" in data["ops"]["pydiff::lincomb"]["cpu"]
    if data["triton"] is not None:
        assert "launch plans" in data["backends"]["triton (GPU)"]["detail"]
        # where the autotuner's choices are kept (Triton's cache directory), that the store is off, or why not
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
        monkeypatch.setenv("PYDIFF_TUNING_CACHE", "1")
        assert f"tuned choices kept: {tmp_path}" in pydiff.info()["backends"]["triton (GPU)"]["detail"]
        monkeypatch.setenv("PYDIFF_TUNING_CACHE", "0")
        assert "tuned choices kept: off" in pydiff.info()["backends"]["triton (GPU)"]["detail"]
        monkeypatch.setenv("PYDIFF_TUNING_CACHE", "maybe")
        assert "PYDIFF_TUNING_CACHE must be 0 or 1" in pydiff.info()["backends"]["triton (GPU)"]["detail"]


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "pydiff", "info"], capture_output=True, text=True, check=True).stdout
    assert "pydiff::lincomb" in out and "cpp (CPU C++/OpenMP)" in out
    assert "export: onnx " in out and "tensorrt " in out


def test_cli_names_a_command_not_built(capsys, monkeypatch):
    from pydiff import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "distill", ("a command whose package is missing", "pydiff.unbuilt.cli"))
    assert cli.main(["distill"]) == 2
    assert "pydiff distill: not built yet (pydiff has no pydiff.unbuilt)" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lincomb_gpu(backend, dtype, cuda_device):
    g = torch.Generator().manual_seed(7)
    for shape, n_in, n_out in [((1, 1), 1, 1), ((3, 333), 5, 3), ((2, 4, 64, 65), 4, 2), ((4, 1 << 20), 3, 2)]:
        inputs, coefs = _random_case(shape, n_in, n_out, dtype, shape[0], g)
        inputs = [t.to(cuda_device) for t in inputs]
        with use_backend(backend):
            outs = lincomb(inputs, coefs.to(cuda_device), 0.8)
        _check_against_float64([t.cpu() for t in inputs], coefs, 0.8, [o.cpu() for o in outs])
