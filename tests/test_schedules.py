"""pydiff.schedules: float64 math against independent formulas, and exact parity with diffusers' schedulers.

Parity rule: our timesteps equal the scheduler's ``timesteps`` after ``set_timesteps(n)`` exactly; sigmas,
alpha_t and sigma_t match to 1e-6 relative (diffusers holds them in float32).
"""

import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
scipy_special = pytest.importorskip("scipy.special")
scipy_stats = pytest.importorskip("scipy.stats")

from pydiff.schedules import (PREDICTION_TYPES, Discretization, Schedule, alphas_cumprod, beta_ppf,  # noqa: E402
                              conversion_coefficients, convert_prediction, flux_mu, karras_sigmas, shift_dynamic,
                              shift_static, sigma_ramp, sigma_to_t, spaced_timesteps, stretch_to_terminal)

# diffusers' own numpy deprecation notices and its 0/0 on single-step terminal grids (asserted below) are noise.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning:diffusers")]

STEPS = (1, 2, 7, 50, 1000)
BETAS = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
}
SPACINGS = ("leading", "trailing", "linspace")
SPACING_FLAGS = {None: {}, "karras": dict(use_karras_sigmas=True), "exponential": dict(use_exponential_sigmas=True),
                 "beta": dict(use_beta_sigmas=True), "lambda": dict(use_lu_lambdas=True)}
RTOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def memoized_reference_helpers():
    """Memoize two pure functions diffusers calls once per step (scipy's beta.ppf, the schedulers'
    _sigma_to_t): the reference numbers stay exactly diffusers' own, the 1000-step grids get cheap."""
    ppf_cache, t_cache = {}, {}
    ppf = scipy_stats.beta.ppf

    def cached_ppf(q, a, b):
        if np.ndim(q):
            return ppf(q, a, b)
        key = (float(q), float(a), float(b))
        if key not in ppf_cache:
            ppf_cache[key] = ppf(q, a, b)
        return ppf_cache[key]

    def memoized_sigma_to_t(original):
        def cached(self, sigma, log_sigmas):
            sigma_array = np.asarray(sigma)
            key = (original, sigma_array.dtype.str, sigma_array.tobytes(), log_sigmas.dtype.str, log_sigmas.tobytes())
            if key not in t_cache:
                t_cache[key] = original(self, sigma, log_sigmas)
            return t_cache[key]
        return cached

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scipy_stats.beta, "ppf", cached_ppf)
        for cls in (diffusers.EulerDiscreteScheduler, diffusers.HeunDiscreteScheduler,
                    diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler):
            patch.setattr(cls, "_sigma_to_t", memoized_sigma_to_t(cls._sigma_to_t))
        yield


def f64(values):
    """Tensors keep their values (float32 ones upcast exactly); lists and scalars are read as float64."""
    return values.to(torch.float64) if isinstance(values, torch.Tensor) else torch.as_tensor(values,
                                                                                          dtype=torch.float64)


def close(ours, theirs, rtol=RTOL):
    torch.testing.assert_close(f64(ours), f64(theirs), rtol=rtol, atol=0)


def close_norm(ours, theirs, tol):
    """||ours - theirs|| / ||theirs|| <= tol, for tensors that diffusers computes in float32."""
    ours, theirs = f64(ours), f64(theirs)
    err = (ours - theirs).norm() / theirs.norm()
    assert err <= tol, f"relative error {err:.3g} > {tol}"


def their_grid(scheduler, steps):
    """diffusers' timesteps and sigmas, without the extra timestep -1 its trailing spacing can append (we drop it)."""
    timesteps, sigmas = scheduler.timesteps.to(torch.float64), scheduler.sigmas.to(torch.float64)
    if timesteps.numel() == steps + 1 and timesteps[-1] == -1:
        return timesteps[:-1], torch.cat([sigmas[:-2], sigmas[-1:]])
    return timesteps, sigmas


def check_discretization_shape(d: Discretization):
    n = d.steps
    assert d.timesteps.shape == (n,) and d.sigmas.shape == (n + 1,)
    assert d.alpha_t.shape == d.sigma_t.shape == (n + 1,) and d.alpha_next.shape == d.sigma_next.shape == (n,)
    for t in (d.timesteps, d.sigmas, d.alpha_t, d.sigma_t, d.alpha_next, d.sigma_next):
        assert t.dtype == torch.float64
    finite = torch.isfinite(d.sigmas)
    if d.kind == "vp":
        close((d.alpha_t ** 2 + d.sigma_t ** 2), torch.ones_like(d.alpha_t), rtol=1e-12)
        close(d.sigma_t[finite] / d.alpha_t[finite], d.sigmas[finite], rtol=1e-12)
    elif d.kind == "flow":
        close(d.alpha_t + d.sigma_t, torch.ones_like(d.alpha_t), rtol=1e-15)
    else:
        assert torch.equal(d.alpha_t, torch.ones_like(d.alpha_t)) and torch.equal(d.sigma_t, d.sigmas)


def check_vp_sigma_scheduler(scheduler, schedule, steps):
    """Sigma-based VP schedulers (Euler family, DPM-Solver, UniPC)."""
    scheduler.set_timesteps(steps)
    d = schedule.discretize(steps)
    timesteps, sigmas = their_grid(scheduler, steps)
    assert torch.equal(d.timesteps, timesteps), (d.timesteps[:8], timesteps[:8])
    close(d.sigmas, sigmas)
    check_discretization_shape(d)
    if hasattr(scheduler, "_sigma_to_alpha_sigma_t"):
        alpha, sigma_t = scheduler._sigma_to_alpha_sigma_t(sigmas)
        close(d.alpha_t, alpha)
        close(d.sigma_t, sigma_t)
    if hasattr(scheduler, "init_noise_sigma"):
        close(d.init_noise_sigma, float(scheduler.init_noise_sigma))
    return d


# ------------------------------------------------------------------------------------------ training tables
# Which diffusers scheduler defines each beta schedule (and whether it offers zero-SNR rescaling).
TABLE_CASES = [(name, "DDIMScheduler", zero_snr) for name in sorted(BETAS) for zero_snr in (False, True)] + [
    ("exp", "HeunDiscreteScheduler", False), ("laplace", "DDPMScheduler", False),
    ("sigmoid", "DDPMScheduler", False), ("sigmoid", "DDPMScheduler", True)]


@pytest.mark.parametrize("name,scheduler_name,zero_snr", TABLE_CASES)
def test_float32_table_is_diffusers_table(name, scheduler_name, zero_snr):
    betas = BETAS.get(name, dict(beta_schedule=name, beta_start=1e-4, beta_end=0.02))
    extra = dict(rescale_betas_zero_snr=True) if zero_snr else {}
    ref = getattr(diffusers, scheduler_name)(num_train_timesteps=997, **betas, **extra)
    ours = alphas_cumprod(num_train_timesteps=997, rescale_betas_zero_snr=zero_snr, **betas)
    assert torch.equal(ours, ref.alphas_cumprod)


def test_float64_table_against_closed_forms():
    n = 1000
    lin = np.linspace(1e-4, 0.02, n)
    close(alphas_cumprod("linear", 1e-4, 0.02, n, dtype=torch.float64), np.cumprod(1 - lin), rtol=1e-13)
    sq = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, n) ** 2
    close(alphas_cumprod("scaled_linear", 0.00085, 0.012, n, dtype=torch.float64), np.cumprod(1 - sq), rtol=1e-13)
    # The cosine product telescopes: abar_t = f((t+1)/N) / f(0) until max_beta caps a step.
    f = np.cos((np.arange(n + 1) / n + 0.008) / 1.008 * np.pi / 2) ** 2
    cos64 = alphas_cumprod("squaredcos_cap_v2", num_train_timesteps=n, dtype=torch.float64).numpy()
    uncapped = 1 - f[1:] / f[:-1] < 0.999
    last = np.flatnonzero(~uncapped)[0]
    close(cos64[:last], (f[1:] / f[0])[:last], rtol=1e-12)
    # The float32 table (diffusers' ground truth) stays within float32 accumulation error of exact arithmetic.
    close(alphas_cumprod("scaled_linear", 0.00085, 0.012, n), np.cumprod(1 - sq), rtol=2e-6)


def test_zero_terminal_snr_rescale():
    base = alphas_cumprod("scaled_linear", 0.00085, 0.012, 1000, dtype=torch.float64)
    rescaled = alphas_cumprod("scaled_linear", 0.00085, 0.012, 1000, rescale_betas_zero_snr=True,
                              dtype=torch.float64)
    assert rescaled[-1] == 0
    close(rescaled[0], base[0], rtol=1e-13)
    # Lin et al. Alg. 1 is an affine map of sqrt(abar): check it against the two end points.
    s0, s_t = base[0].sqrt(), base[-1].sqrt()
    close(rescaled.sqrt(), (base.sqrt() - s_t) * s0 / (s0 - s_t), rtol=1e-10)
    clamped = alphas_cumprod("scaled_linear", 0.00085, 0.012, 1000, rescale_betas_zero_snr=True,
                             clamp_terminal=True)
    assert clamped[-1] == 2.0 ** -24


# ------------------------------------------------------------------------------------------ spacings
def test_spacing_functions_against_definitions():
    sigma_min, sigma_max, n = 0.0292, 14.61, 37
    k = karras_sigmas(np.linspace(0, 1, n), sigma_min, sigma_max, 7.0)
    close(k[[0, -1]], [sigma_max, sigma_min], rtol=1e-13)
    assert np.allclose(np.diff(k ** (1 / 7)), (sigma_min ** (1 / 7) - sigma_max ** (1 / 7)) / (n - 1), rtol=1e-10)
    e = sigma_ramp("exponential", sigma_min, sigma_max, n)
    assert np.allclose(np.diff(np.log(e)), math.log(sigma_min / sigma_max) / (n - 1), rtol=1e-10)
    lam = sigma_ramp("lambda", sigma_min, sigma_max, n)
    close(lam, e, rtol=1e-13)
    b = sigma_ramp("beta", sigma_min, sigma_max, n, beta_alpha=0.6, beta_beta=0.6)
    position = (b - sigma_min) / (sigma_max - sigma_min)
    close(scipy_special.betainc(0.6, 0.6, position), 1 - np.linspace(0, 1, n), rtol=1e-10)
    assert np.all(np.diff(b) < 0)


@pytest.mark.parametrize("a,b", [(0.6, 0.6), (0.3, 3.0), (2.0, 5.0), (5.0, 0.5), (1.0, 1.0)])
def test_beta_ppf_against_scipy(a, b):
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(301), [0.0, 1.0, 1e-12, 1 - 1e-12, 0.5], 1 - np.linspace(0, 1, 97)])
    ours = beta_ppf(p, a, b)
    ref = scipy_stats.beta.ppf(p, a, b)
    close(ours, ref, rtol=1e-12)
    assert set(ours[p == 0].tolist()) == {0.0} and set(ours[p == 1].tolist()) == {1.0}


def test_sigma_to_t_inverts_the_table():
    abar = alphas_cumprod("scaled_linear", 0.00085, 0.012, 1000).numpy()
    table = np.sqrt((1 - abar) / abar)
    log_table = np.log(table)
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 999, 333))
    # log sigma linear between integer timesteps, as sigma_to_t assumes.
    sigmas = np.exp(np.interp(t, np.arange(1000), log_table.astype(np.float64)))
    np.testing.assert_allclose(sigma_to_t(sigmas, log_table), t, rtol=0, atol=1e-8)
    # At the table's own sigmas only the float32 rounding of its logs separates t from the integers.
    np.testing.assert_allclose(sigma_to_t(table.astype(np.float64), log_table), np.arange(1000), rtol=0, atol=1e-3)
    # Outside the table the time clamps to its ends.
    np.testing.assert_array_equal(sigma_to_t(np.array([1e-6, 1e6]), log_table), [0.0, 999.0])


def test_spaced_timesteps_definitions():
    np.testing.assert_array_equal(spaced_timesteps("leading", 1000, 4, 1), [751, 501, 251, 1])
    np.testing.assert_array_equal(spaced_timesteps("trailing", 1000, 4), [999, 749, 499, 249])
    np.testing.assert_array_equal(spaced_timesteps("linspace", 1000, 4), [999, 666, 333, 0])
    np.testing.assert_array_equal(spaced_timesteps("linspace", 1000, 3, extra_point=True), [999, 666, 333])
    np.testing.assert_array_equal(spaced_timesteps("leading", 1000, 3, extra_point=True), [750, 500, 250])
    np.testing.assert_allclose(spaced_timesteps("linspace", 1000, 4, round_linspace=False), [999, 666, 333, 0])
    for steps in range(1, 1001):
        t = spaced_timesteps("trailing", 1000, steps)
        assert t.size == steps and t[-1] >= 0 and t[0] == 999


def test_flow_shifts():
    s = np.linspace(1, 1e-3, 53)
    close(shift_dynamic(s, math.log(3.0)), shift_static(s, 3.0), rtol=1e-14)
    close(shift_dynamic(s, 2.5, "linear"), 2.5 * s / (2.5 * s + 1 - s), rtol=1e-14)
    # The static shift is a Moebius map whose inverse is the shift by 1/s.
    close(shift_static(shift_static(s, 3.0), 1 / 3.0), s, rtol=1e-13)
    stretched = stretch_to_terminal(shift_static(s, 3.0), 0.1)
    assert stretched[-1] == pytest.approx(0.1, rel=1e-14) and stretched[0] == pytest.approx(1.0, rel=1e-14)
    assert flux_mu(256) == pytest.approx(0.5, rel=1e-14) and flux_mu(4096) == pytest.approx(1.15, rel=1e-14)
    assert flux_mu(1024) == pytest.approx(0.5 + 0.65 * 768 / 3840, rel=1e-14)


# ------------------------------------------------------------------------------------------ prediction types
def _all_predictions(x0, eps, alpha, sigma):
    r = torch.sqrt(alpha ** 2 + sigma ** 2)
    return {"epsilon": eps, "sample": x0, "v_prediction": (alpha * eps - sigma * x0) / r,
            "flow_prediction": eps - x0}


POINTS = ("vp", "flow", "ve", "arbitrary")


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("shape", [(7,), (3, 97), (2, 4, 5, 333)])
def test_conversions_recover_every_type(point, shape):
    g = torch.Generator().manual_seed(10 * len(shape) + POINTS.index(point))
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    u = float(torch.rand((), generator=g)) * 0.9 + 0.05
    alpha, sigma = {"vp": (math.sqrt(1 - u), math.sqrt(u)), "flow": (1 - u, u), "ve": (1.0, 20 * u),
                    "arbitrary": (0.3 + u, 2.1 * u)}[point]
    x = alpha * x0 + sigma * eps
    preds = _all_predictions(x0, eps, torch.tensor(alpha, dtype=torch.float64), torch.tensor(sigma,
                                                                                             dtype=torch.float64))
    for src in PREDICTION_TYPES:
        for dst in PREDICTION_TYPES:
            c_x, c_pred = conversion_coefficients(src, dst, alpha, sigma)
            close(c_x * x + c_pred * preds[src], preds[dst], rtol=1e-10)
            # Non-contiguous input: every other element of a wider tensor.
            wide_pred = torch.stack([preds[src], torch.full_like(x, float("nan"))], dim=-1)[..., 0]
            wide_x = torch.stack([x, torch.full_like(x, float("nan"))], dim=-1)[..., 0]
            assert not wide_pred.is_contiguous()
            close(convert_prediction(wide_pred, wide_x, alpha, sigma, src, dst), preds[dst], rtol=1e-10)


def test_convert_prediction_batched_coefficients_and_dtypes():
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(5, 3, 11, generator=g, dtype=torch.float64), torch.randn(5, 3, 11, generator=g,
                                                                                   dtype=torch.float64)
    s = torch.rand(5, generator=g, dtype=torch.float64) * 0.9 + 0.05
    alpha, sigma = (1 - s).view(5, 1, 1), s.view(5, 1, 1)
    x = alpha * x0 + sigma * eps
    preds = _all_predictions(x0, eps, alpha, sigma)
    out = convert_prediction(preds["flow_prediction"], x, alpha, sigma, "flow", "v")
    close(out, preds["v_prediction"], rtol=1e-10)
    out32 = convert_prediction(preds["epsilon"].float(), x.float(), alpha, sigma, "eps", "x0")
    assert out32.dtype == torch.float32
    assert (out32.double() - preds["sample"]).abs().max() < 1e-4


def test_conversion_coefficients_tensors_and_singular_points():
    alpha = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    sigma = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    c_x, c_pred = conversion_coefficients("epsilon", "sample", alpha, sigma)
    assert torch.isinf(c_x[0]) and torch.isfinite(c_x[1:]).all()
    c_x, c_pred = conversion_coefficients("v_prediction", "sample", alpha, sigma)
    r = (alpha ** 2 + sigma ** 2).sqrt()
    close(c_x, alpha / r ** 2, rtol=1e-15)
    close(c_pred, -sigma / r, rtol=1e-15)
    assert conversion_coefficients("sample", "x0", 0.0, 1.0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="alpha_t=0.0"):
        conversion_coefficients("epsilon", "sample", 0.0, 1.0)
    with pytest.raises(ValueError, match="sigma_t=0.0"):
        conversion_coefficients("sample", "epsilon", 1.0, 0.0)
    with pytest.raises(ValueError, match="from_type"):
        conversion_coefficients("score", "sample", 0.5, 0.5)
    with pytest.raises(ValueError, match="to_type"):
        conversion_coefficients("epsilon", "x_start", 0.5, 0.5)
    with pytest.raises(TypeError, match="alpha_t"):
        conversion_coefficients("epsilon", "sample", "0.5", 0.5)
    with pytest.raises(ValueError, match="same shape"):
        convert_prediction(torch.ones(3), torch.ones(4), 0.5, 0.5, "eps", "x0")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_conversions_match_dpmsolver(prediction_type):
    scheduler = diffusers.DPMSolverMultistepScheduler(prediction_type=prediction_type,
                                                      beta_schedule="scaled_linear", beta_start=0.00085,
                                                      beta_end=0.012)
    d = Schedule.from_diffusers(scheduler).discretize(13)
    scheduler.set_timesteps(13)
    g = torch.Generator().manual_seed(4)
    for i in (0, 6, 12):
        scheduler._step_index = i
        x, pred = torch.randn(2, 4, 9, 9, generator=g), torch.randn(2, 4, 9, 9, generator=g)
        ref = scheduler.convert_model_output(pred, sample=x)
        ours = convert_prediction(pred.double(), x.double(), d.alpha_t[i], d.sigma_t[i], prediction_type, "sample")
        close_norm(ours, ref, 1e-5)


# ------------------------------------------------------------------------------------------ diffusers parity
def _vp_id(*parts):
    return "-".join(str(p) for p in parts)


@pytest.mark.parametrize("betas", sorted(BETAS))
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_parity(betas, spacing, prediction_type, set_alpha_to_one):
    scheduler = diffusers.DDIMScheduler(timestep_spacing=spacing, prediction_type=prediction_type,
                                        set_alpha_to_one=set_alpha_to_one, **BETAS[betas])
    schedule = Schedule.from_diffusers(scheduler)
    abar = scheduler.alphas_cumprod.double()
    final = scheduler.final_alpha_cumprod.double()
    for steps in STEPS:
        scheduler.set_timesteps(steps)
        d = schedule.discretize(steps)
        assert torch.equal(d.timesteps, scheduler.timesteps.double())
        check_discretization_shape(d)
        at_t = abar[scheduler.timesteps]
        close(d.alpha_t ** 2, torch.cat([at_t, final.view(1)]))
        close(d.sigmas[:-1], ((1 - at_t) / at_t).sqrt())
        prev = scheduler.timesteps - scheduler.config.num_train_timesteps // steps
        target = torch.where(prev >= 0, abar[prev.clamp(min=0)], final)
        close(d.alpha_next ** 2, target)
        assert d.prediction_type == prediction_type and d.init_noise_sigma == 1.0


@pytest.mark.parametrize("betas", sorted(BETAS))
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sigma_spacing", [None, "karras", "exponential", "beta"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction", "v_prediction+continuous"])
def test_euler_parity(betas, spacing, sigma_spacing, prediction_type):
    continuous = prediction_type.endswith("+continuous")
    scheduler = diffusers.EulerDiscreteScheduler(
        timestep_spacing=spacing, prediction_type=prediction_type.split("+")[0],
        timestep_type="continuous" if continuous else "discrete", **SPACING_FLAGS[sigma_spacing], **BETAS[betas])
    schedule = Schedule.from_diffusers(scheduler)
    assert schedule.config["timestep_type"] == ("continuous" if continuous else "discrete")
    for steps in STEPS:
        check_vp_sigma_scheduler(scheduler, schedule, steps)


def check_multistep_scheduler(scheduler, spacing: str) -> None:
    """A multistep (DPM-Solver / UniPC) scheduler's sigmas and timesteps at every step count in STEPS."""
    schedule = Schedule.from_diffusers(scheduler)
    for steps in STEPS:
        if spacing == "leading" and steps >= 1000:
            # steps + 1 points cannot be spaced by N // (steps + 1) = 0; diffusers returns all-zero timesteps.
            with pytest.raises(ValueError, match="steps"):
                schedule.discretize(steps)
            continue
        check_vp_sigma_scheduler(scheduler, schedule, steps)


@pytest.mark.parametrize("betas", sorted(BETAS))
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sigma_spacing", [None, "karras", "exponential", "beta", "lambda"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow_prediction"])
def test_dpmsolver_parity(betas, spacing, sigma_spacing, prediction_type):
    scheduler = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing, prediction_type=prediction_type,
                                                      **SPACING_FLAGS[sigma_spacing], **BETAS[betas])
    check_multistep_scheduler(scheduler, spacing)


@pytest.mark.parametrize("betas", sorted(BETAS))
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sigma_spacing", [None, "karras", "exponential", "beta"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow_prediction"])
def test_unipc_parity(betas, spacing, sigma_spacing, prediction_type):
    scheduler = diffusers.UniPCMultistepScheduler(timestep_spacing=spacing, prediction_type=prediction_type,
                                                  **SPACING_FLAGS[sigma_spacing], **BETAS[betas])
    check_multistep_scheduler(scheduler, spacing)


FLOW_CASES = {
    "static1": dict(shift=1.0), "static3": dict(shift=3.0), "static3-terminal": dict(shift=3.0, shift_terminal=0.1),
    "dynamic-exp": dict(use_dynamic_shifting=True), "dynamic-linear": dict(use_dynamic_shifting=True,
                                                                           time_shift_type="linear"),
    "dynamic-terminal": dict(use_dynamic_shifting=True, shift_terminal=0.02),
}


@pytest.mark.parametrize("case", sorted(FLOW_CASES))
@pytest.mark.parametrize("sigma_spacing", [None, "karras", "exponential", "beta"])
@pytest.mark.parametrize("invert", [False, True])
def test_flow_match_parity(case, sigma_spacing, invert):
    config = dict(FLOW_CASES[case], invert_sigmas=invert, **SPACING_FLAGS[sigma_spacing])
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    schedule = Schedule.from_diffusers(scheduler)
    mu = flux_mu(4096 * 3 // 4) if schedule.config["use_dynamic_shifting"] else None
    for steps in STEPS:
        scheduler.set_timesteps(steps, mu=mu)
        if steps == 1 and schedule.config["shift_terminal"]:
            # One step sits at flow time 1, which no stretch moves to the terminal: diffusers divides 0 by 0.
            assert torch.isnan(scheduler.sigmas[0])
            with pytest.raises(ValueError, match="shift_terminal"):
                schedule.discretize(steps, mu=mu)
            continue
        d = schedule.discretize(steps, mu=mu)
        assert torch.equal(d.timesteps, scheduler.timesteps.double())
        close(d.sigmas, scheduler.sigmas)
        check_discretization_shape(d)
        assert d.kind == "flow" and d.prediction_type == "flow_prediction"
    if mu is not None:
        by_length = schedule.discretize(9, image_seq_len=4096 * 3 // 4)
        assert torch.equal(by_length.timesteps, schedule.discretize(9, mu=mu).timesteps)


@pytest.mark.parametrize("case", ["static3", "dynamic-exp"])
def test_flow_match_custom_sigmas_like_flux(case):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**FLOW_CASES[case])
    schedule = Schedule.from_diffusers(scheduler)
    mu = 0.93 if schedule.config["use_dynamic_shifting"] else None
    for steps in (1, 4, 28):
        custom = np.linspace(1.0, 1 / steps, steps)
        scheduler.set_timesteps(sigmas=custom, mu=mu)
        d = schedule.discretize(steps, mu=mu, sigmas=custom)
        assert torch.equal(d.timesteps, scheduler.timesteps.double())
        close(d.sigmas, scheduler.sigmas)


@pytest.mark.parametrize("cls", [diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler])
@pytest.mark.parametrize("flow", [dict(flow_shift=1.0), dict(flow_shift=3.0), dict(flow_shift=5.0,
                                                                                    use_dynamic_shifting=True)])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_dpmsolver_unipc_flow_sigmas_parity(cls, flow, final):
    scheduler = cls(use_flow_sigmas=True, prediction_type="flow_prediction", final_sigmas_type=final, **flow)
    schedule = Schedule.from_diffusers(scheduler)
    assert schedule.kind == "flow"
    for steps in STEPS:
        scheduler = cls(use_flow_sigmas=True, prediction_type="flow_prediction", final_sigmas_type=final, **flow)
        mu = 0.8 if flow.get("use_dynamic_shifting") else None
        scheduler.set_timesteps(steps, mu=mu)
        d = schedule.discretize(steps, mu=mu)
        assert torch.equal(d.timesteps, scheduler.timesteps.double())
        close(d.sigmas, scheduler.sigmas)
        alpha, sigma_t = scheduler._sigma_to_alpha_sigma_t(scheduler.sigmas.double())
        close(d.sigma_t, sigma_t)
        # alpha = 1 - s cancels near s = 1, where diffusers' float32 s leaves an absolute error of 2**-24.
        torch.testing.assert_close(d.alpha_t, alpha, rtol=RTOL, atol=2.0 ** -24)


def test_unipc_flow_terminal_parity():
    kwargs = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0, shift_terminal=0.05)
    schedule = Schedule.from_diffusers(diffusers.UniPCMultistepScheduler(**kwargs))
    for steps in STEPS:
        scheduler = diffusers.UniPCMultistepScheduler(**kwargs)
        scheduler.set_timesteps(steps)
        if steps == 1:
            assert torch.isnan(scheduler.sigmas[0])
            with pytest.raises(ValueError, match="shift_terminal"):
                schedule.discretize(steps)
            continue
        d = schedule.discretize(steps)
        assert torch.equal(d.timesteps, scheduler.timesteps.double())
        close(d.sigmas, scheduler.sigmas)


@pytest.mark.parametrize("cls", [diffusers.EulerDiscreteScheduler, diffusers.DPMSolverMultistepScheduler,
                                 diffusers.UniPCMultistepScheduler])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sigma_spacing", [None, "karras", "exponential", "beta"])
def test_final_sigma_min_parity(cls, spacing, sigma_spacing):
    scheduler = cls(final_sigmas_type="sigma_min", timestep_spacing=spacing, beta_schedule="scaled_linear",
                    beta_start=0.00085, beta_end=0.012, **SPACING_FLAGS[sigma_spacing])
    schedule = Schedule.from_diffusers(scheduler)
    for steps in (1, 7, 50):
        d = check_vp_sigma_scheduler(scheduler, schedule, steps)
        assert d.sigmas[-1] > 0


@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                                  "UniPCMultistepScheduler", "LCMScheduler", "TCDScheduler"])
@pytest.mark.parametrize("variant", ["trained_betas", "zero_snr", "offset1"])
def test_trained_betas_zero_snr_and_offset_parity(name, variant):
    cls = getattr(diffusers, name)
    rng = np.random.default_rng(5)
    kwargs = {
        "trained_betas": dict(trained_betas=np.sort(rng.uniform(1e-4, 0.03, 1000)).tolist()),
        "zero_snr": dict(rescale_betas_zero_snr=True, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, timestep_spacing="trailing"),
        "offset1": dict(steps_offset=1, timestep_spacing="leading", beta_schedule="scaled_linear",
                        beta_start=0.00085, beta_end=0.012),
    }[variant]
    scheduler = cls(**kwargs)
    schedule = Schedule.from_diffusers(scheduler)
    for steps in (1, 2, 7, 50):
        if hasattr(scheduler, "sigmas"):
            check_vp_sigma_scheduler(scheduler, schedule, steps)
            continue
        scheduler.set_timesteps(steps)
        d = schedule.discretize(steps)
        assert torch.equal(d.timesteps, scheduler.timesteps.double())
        close(d.alpha_t[:-1] ** 2, scheduler.alphas_cumprod[scheduler.timesteps])
        check_discretization_shape(d)
    if variant == "offset1" and name in ("DDIMScheduler", "EulerDiscreteScheduler"):
        # 1000 leading steps shifted by one would sample timestep 1000, past the table: we refuse.
        with pytest.raises(ValueError, match="steps_offset"):
            schedule.discretize(1000)


@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                                  "UniPCMultistepScheduler"])
@pytest.mark.parametrize("n_train", [97, 777])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_odd_num_train_timesteps_parity(name, n_train, spacing):
    cls = getattr(diffusers, name)
    sigma_kwargs = {} if name == "DDIMScheduler" else dict(use_karras_sigmas=True)
    for kwargs in ({}, sigma_kwargs):
        scheduler = cls(num_train_timesteps=n_train, timestep_spacing=spacing, beta_schedule="scaled_linear",
                        beta_start=0.00085, beta_end=0.012, **kwargs)
        schedule = Schedule.from_diffusers(scheduler)
        for steps in (1, 2, 7, 50, n_train - 1):
            if name == "DDIMScheduler":
                scheduler.set_timesteps(steps)
                d = schedule.discretize(steps)
                assert torch.equal(d.timesteps, scheduler.timesteps.double())
                close(d.alpha_t[:-1] ** 2, scheduler.alphas_cumprod[scheduler.timesteps])
            else:
                check_vp_sigma_scheduler(scheduler, schedule, steps)


def test_schedules_beyond_diffusers_hold_their_definitions():
    # Combinations diffusers has no scheduler for still follow the shared definitions.
    d = Schedule.vp(convention="euler", sigma_spacing="lambda", timestep_spacing="trailing").discretize(23)
    log_snr = torch.log(d.alpha_t[:-1] / d.sigma_t[:-1])
    close(log_snr.diff(), torch.full((22,), float(log_snr[1] - log_snr[0]), dtype=torch.float64), rtol=1e-12)
    for convention in ("ddim", "euler", "dpmsolver", "unipc", "lcm", "tcd"):
        spacing = None if convention in ("ddim", "lcm", "tcd") else "karras"
        d = Schedule.vp(convention=convention, sigma_spacing=spacing, table_dtype="float64").discretize(7)
        check_discretization_shape(d)
        assert torch.all(d.sigmas[1:] < d.sigmas[:-1])
    d = Schedule.edm(sigma_spacing="beta", beta_alpha=0.5, beta_beta=0.9).discretize(9)
    check_discretization_shape(d)
    close(d.sigmas[[0, -2]], [80.0, 0.002], rtol=1e-12)


def test_trailing_overshoot_is_dropped():
    # np.arange(1000, 0, -1000 / 61) has 62 elements; diffusers' last timestep is then -1.
    for cls in (diffusers.DDIMScheduler, diffusers.EulerDiscreteScheduler, diffusers.DPMSolverMultistepScheduler):
        scheduler = cls(timestep_spacing="trailing")
        scheduler.set_timesteps(61)
        assert scheduler.timesteps[-1] == -1 and len(scheduler.timesteps) == 62
        d = Schedule.from_diffusers(scheduler).discretize(61)
        assert d.steps == 61 and torch.equal(d.timesteps, scheduler.timesteps[:-1].double())


def test_euler_overrides_and_log_linear_parity():
    for kwargs in (dict(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0),
                   dict(use_exponential_sigmas=True, sigma_max=20.0),
                   dict(use_beta_sigmas=True, sigma_min=0.05),
                   dict(use_karras_sigmas=True, interpolation_type="log_linear", timestep_spacing="leading"),
                   dict(use_karras_sigmas=True, rescale_betas_zero_snr=True, timestep_spacing="trailing")):
        scheduler = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                     beta_end=0.012, **kwargs)
        schedule = Schedule.from_diffusers(scheduler)
        for steps in (1, 7, 50):
            check_vp_sigma_scheduler(scheduler, schedule, steps)
    scheduler = diffusers.UniPCMultistepScheduler(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0)
    for steps in (2, 7, 50):
        check_vp_sigma_scheduler(scheduler, Schedule.from_diffusers(scheduler), steps)


def test_dpmsolver_lambda_min_clipped_parity():
    for spacing in SPACINGS:
        scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1,
                                                          timestep_spacing=spacing)
        schedule = Schedule.from_diffusers(scheduler)
        for steps in (1, 7, 50):
            d = check_vp_sigma_scheduler(scheduler, schedule, steps)
            assert d.timesteps.max() < 999


# EulerAncestral has neither sigma spacings nor the 'exp' betas; Heun has both.
ANCESTRAL_HEUN_CASES = [("EulerAncestralDiscreteScheduler", betas, None) for betas in sorted(BETAS)] + [
    ("HeunDiscreteScheduler", betas, sigma_spacing) for betas in sorted(BETAS) + ["exp"]
    for sigma_spacing in (None, "karras", "exponential", "beta")]


@pytest.mark.parametrize("name,betas,sigma_spacing", ANCESTRAL_HEUN_CASES)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_euler_ancestral_and_heun_parity(name, betas, sigma_spacing, spacing):
    cls = getattr(diffusers, name)
    beta_kwargs = BETAS.get(betas, dict(beta_schedule="exp"))
    scheduler = cls(timestep_spacing=spacing, **SPACING_FLAGS[sigma_spacing], **beta_kwargs)
    schedule = Schedule.from_diffusers(scheduler)
    for steps in (1, 2, 7, 50):
        scheduler.set_timesteps(steps)
        d = schedule.discretize(steps)
        timesteps, sigmas = scheduler.timesteps.double(), scheduler.sigmas.double()
        if cls is diffusers.HeunDiscreteScheduler:
            # Heun repeats every interior point for its corrector stage; the samplers interleave ours.
            timesteps = torch.cat([timesteps[:1], timesteps[1::2]])
            sigmas = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
        assert torch.equal(d.timesteps, timesteps)
        close(d.sigmas, sigmas)
        close(d.init_noise_sigma, float(scheduler.init_noise_sigma))


@pytest.mark.parametrize("cls", [diffusers.LCMScheduler, diffusers.TCDScheduler])
@pytest.mark.parametrize("betas", sorted(BETAS))
@pytest.mark.parametrize("original_steps", [50, 7])
def test_lcm_tcd_parity(cls, betas, original_steps):
    scheduler = cls(original_inference_steps=original_steps, **BETAS[betas])
    schedule = Schedule.from_diffusers(scheduler)
    abar = scheduler.alphas_cumprod.double()
    for steps in (1, 2, 4, 7, 50):
        if steps > original_steps:
            with pytest.raises(ValueError, match="original_inference_steps"):
                schedule.discretize(steps)
            with pytest.raises(ValueError):
                scheduler.set_timesteps(steps)
            continue
        scheduler.set_timesteps(steps)
        d = schedule.discretize(steps)
        assert torch.equal(d.timesteps, scheduler.timesteps.double())
        # LCM's last step returns its denoised sample; TCD's lands on training timestep 0.
        final = torch.ones(1, dtype=torch.float64) if cls is diffusers.LCMScheduler else abar[:1]
        close(d.alpha_t ** 2, torch.cat([abar[scheduler.timesteps], final]))


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 40])
def test_consistency_model_parity(steps):
    scheduler = diffusers.CMStochasticIterativeScheduler()
    scheduler.set_timesteps(steps)
    d = Schedule.from_diffusers(scheduler).discretize(steps)
    assert d.kind == "ve"
    assert torch.equal(d.timesteps, scheduler.timesteps.double())
    close(d.sigmas, scheduler.sigmas)
    assert d.init_noise_sigma == scheduler.init_noise_sigma
    check_discretization_shape(d)


@pytest.mark.parametrize("cls", [diffusers.EDMEulerScheduler, diffusers.EDMDPMSolverMultistepScheduler])
@pytest.mark.parametrize("sigma_schedule", ["karras", "exponential"])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_edm_parity(cls, sigma_schedule, final):
    scheduler = cls(sigma_schedule=sigma_schedule, final_sigmas_type=final, sigma_min=0.004, sigma_max=120.0)
    schedule = Schedule.from_diffusers(scheduler)
    for steps in STEPS:
        scheduler.set_timesteps(steps)
        d = schedule.discretize(steps)
        assert torch.equal(d.timesteps, scheduler.timesteps.double())
        close(d.sigmas, scheduler.sigmas)
        close(d.init_noise_sigma, float(scheduler.init_noise_sigma))
        check_discretization_shape(d)


@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                  "HeunDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                                  "LCMScheduler", "TCDScheduler", "FlowMatchEulerDiscreteScheduler",
                                  "CMStochasticIterativeScheduler", "EDMEulerScheduler",
                                  "EDMDPMSolverMultistepScheduler"])
def test_plain_dict_uses_class_defaults(name):
    scheduler = getattr(diffusers, name)()
    sparse = Schedule.from_diffusers({"_class_name": name})
    # A config that went through from_config / from_pretrained carries _class_name; a fresh one does not.
    reloaded = getattr(diffusers, name).from_config({**scheduler.config, "_class_name": name}).config
    assert "_class_name" in reloaded and "_class_name" not in scheduler.config
    for source in (scheduler, reloaded, {**scheduler.config, "_class_name": name}):
        full = Schedule.from_diffusers(source)
        assert full.config == sparse.config
    with pytest.raises(ValueError, match="pass the scheduler itself"):
        Schedule.from_diffusers(scheduler.config)
    steps = 4
    d = sparse.discretize(steps)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.double()
    if name == "HeunDiscreteScheduler":
        timesteps = torch.cat([timesteps[:1], timesteps[1::2]])
    assert torch.equal(d.timesteps, timesteps)


def test_direct_builders_match_from_diffusers():
    sd15 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                timestep_spacing="leading")
    direct = Schedule.vp(**sd15, convention="dpmsolver", sigma_spacing="karras")
    mapped = Schedule.from_diffusers(diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, **sd15))
    assert direct.config == mapped.config
    flow = Schedule.flow(shift=3.0)
    assert flow.config == Schedule.from_diffusers(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)).config
    assert Schedule.edm().config == Schedule.from_diffusers(diffusers.EDMEulerScheduler()).config
    assert Schedule.vp().alphas_cumprod.dtype == torch.float64 and Schedule.flow().alphas_cumprod is None


def test_config_round_trip():
    rng = np.random.default_rng(6)
    schedules = [Schedule.vp(trained_betas=rng.uniform(1e-4, 0.02, 1000), convention="unipc",
                             sigma_spacing="beta", beta_alpha=0.5, beta_beta=0.7),
                 Schedule.vp(convention="ddim", final_sigma="sigma_min", table_dtype="float64"),
                 Schedule.flow(use_dynamic_shifting=True, shift_terminal=0.1, invert_sigmas=True),
                 Schedule.edm(convention="cm", num_train_timesteps=18)]
    for schedule in schedules:
        rebuilt = Schedule.from_config(schedule.config)
        mu = 0.7 if schedule.kind == "flow" else None
        a, b = schedule.discretize(9, mu=mu), rebuilt.discretize(9, mu=mu)
        for field in ("timesteps", "sigmas", "alpha_t", "sigma_t", "alpha_next", "sigma_next"):
            assert torch.equal(getattr(a, field), getattr(b, field))
        assert "Schedule." in repr(schedule)


def test_table_dtype_float64_is_exact_arithmetic():
    d64 = Schedule.vp(table_dtype="float64", convention="euler", timestep_spacing="trailing").discretize(10)
    abar = np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2)
    t = np.round(np.arange(1000, 0, -100.0)) - 1
    close(d64.sigmas[:-1], np.sqrt((1 - abar[t.astype(int)]) / abar[t.astype(int)]), rtol=1e-12)


# ------------------------------------------------------------------------------------------ sampling loops
def _toy_model(x, t):
    """A deterministic stand-in denoiser whose output depends on x and t."""
    return torch.tanh(x) * 0.7 + 0.001 * float(t)


def test_ddim_loop_with_our_tables_equals_diffusers():
    for spacing in SPACINGS:
        scheduler = diffusers.DDIMScheduler(timestep_spacing=spacing, beta_schedule="scaled_linear",
                                            beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
                                            clip_sample=False)
        d = Schedule.from_diffusers(scheduler).discretize(7)
        scheduler.set_timesteps(7)
        x_ref = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        x = x_ref.clone()
        for i, t in enumerate(scheduler.timesteps):
            x_ref = scheduler.step(_toy_model(x_ref, t), t, x_ref, eta=0.0).prev_sample
            eps = _toy_model(x, d.timesteps[i])
            x0 = convert_prediction(eps, x, d.alpha_t[i], d.sigma_t[i], "epsilon", "sample")
            x = d.alpha_next[i] * x0 + d.sigma_next[i] * eps
        close_norm(x, x_ref, 1e-6)


def test_euler_and_flow_loops_with_our_tables_equal_diffusers():
    cases = [(diffusers.EulerDiscreteScheduler(use_karras_sigmas=True), None),
             (diffusers.EulerDiscreteScheduler(prediction_type="v_prediction", timestep_spacing="trailing"), None),
             (diffusers.EulerDiscreteScheduler(prediction_type="sample", use_exponential_sigmas=True), None),
             (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), None),
             (diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift_terminal=0.05), 0.9)]
    for scheduler, mu in cases:
        d = Schedule.from_diffusers(scheduler).discretize(11, mu=mu)
        scheduler.set_timesteps(11, **({} if mu is None else {"mu": mu}))
        x_ref = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(8)) * d.init_noise_sigma
        x = x_ref.double()
        for i, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(x_ref, t) if d.kind == "vp" else x_ref
            x_ref = scheduler.step(_toy_model(model_in, t), t, x_ref).prev_sample
            # Both are Euler steps in x / alpha_t (k-diffusion's frame for vp, plain x for flow).
            scale_in = d.alpha_t[i] if d.kind == "vp" else 1.0
            out = _toy_model(x * scale_in, d.timesteps[i])
            x0 = convert_prediction(out, x * scale_in, d.alpha_t[i], d.sigma_t[i], d.prediction_type, "sample")
            eps = convert_prediction(out, x * scale_in, d.alpha_t[i], d.sigma_t[i], d.prediction_type, "epsilon")
            if d.kind == "vp":
                x = x + (d.sigmas[i + 1] - d.sigmas[i]) * (x - x0) / d.sigmas[i]
            else:
                x = x + (d.sigmas[i + 1] - d.sigmas[i]) * (eps - x0)
        close_norm(x, x_ref, 1e-5)


# ------------------------------------------------------------------------------------------ bad input
BAD_INPUT = [
    (lambda: Schedule.vp(beta_schedule="cosine"), ValueError, "beta_schedule"),
    (lambda: Schedule.vp(timestep_spacing="uniform"), ValueError, "timestep_spacing"),
    (lambda: Schedule.vp(sigma_spacing="polyexponential"), ValueError, "sigma_spacing"),
    (lambda: Schedule.vp(prediction_type="score"), ValueError, "prediction_type"),
    (lambda: Schedule.vp(convention="pndm"), ValueError, "convention"),
    (lambda: Schedule.vp(convention="ddim", sigma_spacing="karras"), ValueError, "sigma_spacing"),
    (lambda: Schedule.vp(trained_betas=[0.01] * 999 + [float("nan")]), ValueError, "trained_betas"),
    (lambda: Schedule.vp(trained_betas=[-0.01] + [0.01] * 999), ValueError, "trained_betas"),
    (lambda: Schedule.vp(trained_betas=[0.01] * 10), ValueError, "trained_betas"),
    (lambda: Schedule.vp(beta_schedule="linear", beta_start=-1e-4), ValueError, "beta_start"),
    (lambda: Schedule.vp(beta_schedule="linear", beta_end=1.5), ValueError, "beta_start/beta_end"),
    (lambda: Schedule.vp(beta_start=float("nan")), ValueError, "beta_start"),
    (lambda: Schedule.vp(num_train_timesteps=1), ValueError, "num_train_timesteps"),
    (lambda: Schedule.vp(num_train_timesteps=1000.0), TypeError, "num_train_timesteps"),
    (lambda: Schedule.vp(steps_offset=-1), ValueError, "steps_offset"),
    (lambda: Schedule.vp(final_sigma="one"), ValueError, "final_sigma"),
    (lambda: Schedule.vp(interpolation_type="log_linear"), ValueError, "interpolation_type"),
    (lambda: Schedule.vp(timestep_type="continuous", convention="dpmsolver"), ValueError, "timestep_type"),
    (lambda: Schedule.vp(sigma_spacing="karras", sigma_min=2.0, sigma_max=1.0), ValueError, "sigma_min"),
    (lambda: Schedule.vp(sigma_min=-1.0), ValueError, "sigma_min"),
    (lambda: Schedule.vp(rho=0.0), ValueError, "rho"),
    (lambda: Schedule.vp(table_dtype="float16"), ValueError, "table_dtype"),
    (lambda: Schedule.vp(convention="lcm", original_inference_steps=2000), ValueError, "original_inference_steps"),
    (lambda: Schedule.vp().discretize(0), ValueError, "steps"),
    (lambda: Schedule.vp().discretize(-3), ValueError, "steps"),
    (lambda: Schedule.vp().discretize(2.5), TypeError, "steps"),
    (lambda: Schedule.vp().discretize(True), TypeError, "steps"),
    (lambda: Schedule.vp().discretize(1001), ValueError, "num_train_timesteps"),
    (lambda: Schedule.vp(convention="dpmsolver", timestep_spacing="leading").discretize(1000), ValueError, "steps"),
    (lambda: Schedule.vp().discretize(4, mu=0.5), ValueError, "mu"),
    (lambda: Schedule.vp().discretize(4, sigmas=[1.0, 0.5, 0.2, 0.1]), ValueError, "sigmas"),
    (lambda: Schedule.flow().discretize(4, sigmas=[1.0, 0.5]), ValueError, "sigmas"),
    (lambda: Schedule.flow(use_dynamic_shifting=True).discretize(4), ValueError, "mu"),
    (lambda: Schedule.flow().discretize(4, mu=0.5, image_seq_len=1024), ValueError, "image_seq_len"),
    (lambda: Schedule.flow(shift=0.0), ValueError, "shift"),
    (lambda: Schedule.flow(shift_terminal=1.5), ValueError, "shift_terminal"),
    (lambda: Schedule.flow(time_shift_type="cubic"), ValueError, "time_shift_type"),
    (lambda: Schedule.flow(convention="unipc", sigma_spacing="karras"), ValueError, "sigma_spacing"),
    (lambda: Schedule.flow(convention="dpmsolver", use_dynamic_shifting=True, time_shift_type="linear"),
     ValueError, "time_shift_type"),
    (lambda: Schedule.flow(final_sigma=1.5), ValueError, "final_sigma"),
    (lambda: Schedule.edm(sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_min"),
    (lambda: Schedule.edm(sigma_spacing=None), ValueError, "sigma_spacing"),
    (lambda: Schedule.edm(convention="cm", sigma_spacing="exponential"), ValueError, "sigma_spacing"),
    (lambda: Schedule.edm(convention="cm").discretize(41), ValueError, "num_train_timesteps"),
    (lambda: Schedule.from_config({"beta_schedule": "linear"}), ValueError, "kind"),
    (lambda: Schedule.from_diffusers({"beta_schedule": "linear"}), ValueError, "_class_name"),
    (lambda: Schedule.from_diffusers({"_class_name": "PNDMScheduler"}), ValueError, "_class_name"),
    (lambda: Schedule.from_diffusers(42), TypeError, "scheduler_or_config"),
    (lambda: Schedule.from_diffusers({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True,
                                      "use_beta_sigmas": True}), ValueError, "sigma spacing"),
    (lambda: Schedule.from_diffusers({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True,
                                      "use_lu_lambdas": True}), ValueError, "use_lu_lambdas"),
    (lambda: Schedule.from_diffusers({"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos"}),
     ValueError, "beta_schedule"),
]


@pytest.mark.parametrize("index", range(len(BAD_INPUT)))
def test_bad_input_raises(index):
    call, error, match = BAD_INPUT[index]
    with pytest.raises(error, match=match):
        call()
