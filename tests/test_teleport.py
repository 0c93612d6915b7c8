"""pydiff.teleport: the Gaussian probability-flow map against an independent ODE solution, sampling with it on exact
Gaussian models and on the bundled digits model, and every bad input."""

from __future__ import annotations

import math

import pytest
import torch

import pydiff
from pydiff.models.analytic import AnalyticDenoiser
from pydiff.samplers import grid_for, resolve_sampler, run_plan
from pydiff.schedules import Schedule
from pydiff.teleport import GaussianTeleport, sample_teleported

VP = dict(_class_name="DPMSolverMultistepScheduler", beta_schedule="scaled_linear", beta_start=0.00085,
          beta_end=0.012, num_train_timesteps=1000, prediction_type="epsilon", timestep_spacing="linspace")


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def random_gaussians(k: int, shape, seed: int = 0):
    """Means (k, *shape) and dense SPD covariances (k, D, D) with eigenvalues spread over [0.1, 3.1]."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    means = torch.randn((k, *shape), generator=g, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=torch.float64))[0]
    lam = 0.1 + 3.0 * torch.rand(k, d, generator=g, dtype=torch.float64) ** 2
    return means, (basis * lam[:, None, :]) @ basis.transpose(1, 2)


def cosine_alpha_sigma(t: float):
    return math.cos(0.5 * math.pi * t), math.sin(0.5 * math.pi * t)


def reference_pf_ode(x, means, covs, t_from, t_to, labels, uncond=None, w=1.0, n=500):
    """RK4 in VP time t (alpha = cos(pi t / 2), sigma = sin(pi t / 2)) on the probability-flow ODE
    dx/dt = (alpha'/alpha) x - sigma^2 d/dt log(sigma/alpha) grad log p_t(x), with the score of
    N(alpha mu, alpha^2 Sigma + sigma^2 I) from a linear solve (no eigendecomposition); guided: the score
    w s_c + (1 - w) s_u. x (B, *shape), rows picking components by labels (and uncond). From t = 0.95 the
    500 steps are converged to ~1e-11 relative (checked against 2000)."""
    batch = x.shape[0]
    flat = x.double().reshape(batch, -1)
    mu, cov = means.reshape(means.shape[0], -1), covs
    eye = torch.eye(flat.shape[1], dtype=torch.float64)

    def score(y, t, comp):
        alpha, sigma = cosine_alpha_sigma(t)
        a = alpha ** 2 * cov[comp] + sigma ** 2 * eye
        return -torch.linalg.solve(a, (y - alpha * mu[comp])[..., None])[..., 0]

    def velocity(y, t):
        alpha, sigma = cosine_alpha_sigma(t)
        dalpha, dsigma = -0.5 * math.pi * sigma, 0.5 * math.pi * alpha
        s = score(y, t, labels)
        if uncond is not None:
            s = w * s + (1 - w) * score(y, t, uncond)
        return (dalpha / alpha) * y - sigma ** 2 * (dsigma / sigma - dalpha / alpha) * s

    h = (t_to - t_from) / n
    for i in range(n):
        t = t_from + i * h
        k1 = velocity(flat, t)
        k2 = velocity(flat + 0.5 * h * k1, t + 0.5 * h)
        k3 = velocity(flat + 0.5 * h * k2, t + 0.5 * h)
        k4 = velocity(flat + h * k3, t + h)
        flat = flat + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return flat.reshape(x.shape)


class FullGaussians:
    """Data x0 ~ N(means[y], covs[y]) for test models: exact posterior by linear solves; y None -> the last one."""

    def __init__(self, means, covs):
        self.means, self.covs = means, covs

    @property
    def shape(self):
        return self.means.shape[1:]

    def posterior(self, x, alpha, sigma, y=None):
        batch = x.shape[0]
        comp = torch.full((batch,), self.means.shape[0] - 1) if y is None else y.cpu()
        mu, cov = self.means.reshape(self.means.shape[0], -1)[comp], self.covs[comp]
        alpha, sigma = alpha.reshape(batch, 1), sigma.reshape(batch, 1)
        a = alpha[..., None] ** 2 * cov + sigma[..., None] ** 2 * torch.eye(cov.shape[-1], dtype=torch.float64)
        sol = torch.linalg.solve(a, (x.reshape(batch, -1) - alpha * mu)[..., None])[..., 0]
        x0 = mu + alpha * (cov @ sol[..., None])[..., 0]
        return x0.reshape(x.shape), (sigma * sol).reshape(x.shape)


# ------------------------------------------------------------------------------------------------ the map


@pytest.mark.parametrize("shape", [(1, 5, 7), (6,)])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("t_to", [0.3, 0.0])
def test_teleport_is_the_exact_probability_flow_map(shape, batch, t_to):
    """Against RK4 on the ODE in VP time, down to sigma_to = 0; float32 input: float32 output, float64 math."""
    means, covs = random_gaussians(1, shape, seed=batch)
    tp = GaussianTeleport.from_moments(means[0], covs[0])
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = reference_pf_ode(x, means, covs, 0.95, t_to, torch.zeros(batch, dtype=torch.int64))
    for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 1e-6)):
        out = tp.teleport(x.to(dtype), *cosine_alpha_sigma(0.95), *cosine_alpha_sigma(t_to))
        assert out.dtype == dtype and out.shape == x.shape
        assert rel(out, ref) < tolerance


def test_teleport_runs_backwards_and_composes():
    """The ODE flows both ways: 0.9 -> 0.2 -> 0.6 -> 0.9 returns the start; 0.9 -> 0.2 equals 0.9 -> 0.6 -> 0.2."""
    means, covs = random_gaussians(1, (2, 3, 4), seed=3)
    tp = GaussianTeleport.from_moments(means[0], covs[0])
    x = torch.randn(5, 2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b, c = (cosine_alpha_sigma(t) for t in (0.9, 0.2, 0.6))
    there = tp.teleport(x, *a, *b)
    assert rel(tp.teleport(tp.teleport(there, *b, *c), *c, *a), x) < 1e-12
    assert rel(tp.teleport(tp.teleport(x, *a, *c), *c, *b), there) < 1e-12


def test_labels_pick_each_rows_gaussian():
    means, covs = random_gaussians(3, (1, 5, 7), seed=4)
    tp = GaussianTeleport.from_moments(means, covs)
    labels = torch.tensor([2, 0, 1, 2, 2, 0, 1])
    x = torch.randn(7, 7, 5, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64).permute(0, 3, 2, 1)
    assert not x.is_contiguous()
    out = tp.teleport(x, *cosine_alpha_sigma(0.9), *cosine_alpha_sigma(0.4), labels)
    ref = reference_pf_ode(x, means, covs, 0.9, 0.4, labels)
    assert rel(out, ref) < 1e-9
    for k in range(3):
        alone = GaussianTeleport.from_moments(means[k], covs[k])
        rows = labels == k
        assert torch.equal(out[rows], alone.teleport(x[rows], *cosine_alpha_sigma(0.9), *cosine_alpha_sigma(0.4)))


@pytest.mark.parametrize("w", [1.5, 3.0, -0.5])
def test_guided_teleport_matches_the_guided_ode(w):
    """Classifier-free guidance of two Gaussians (not co-diagonal): RK4 in log sigma against RK4 in VP time."""
    means, covs = random_gaussians(3, (1, 5, 7), seed=5)
    tp = GaussianTeleport.from_moments(means, covs)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    uncond = torch.tensor([2, 2, 2, 2, 0, 1, 2])  # includes rows whose two components coincide (closed form)
    x = torch.randn(7, 1, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = tp.teleport(x, *cosine_alpha_sigma(0.9), *cosine_alpha_sigma(0.4), labels, guidance_scale=w,
                      uncond_labels=uncond)
    ref = reference_pf_ode(x, means, covs, 0.9, 0.4, labels, uncond, w)
    assert rel(out, ref) < 1e-6
    conditional = tp.teleport(x, *cosine_alpha_sigma(0.9), *cosine_alpha_sigma(0.4), labels)
    assert rel(conditional, ref) > 1e-2  # guidance matters: the conditional map alone is not the guided one


def test_from_data_fits_mean_and_full_covariance():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(300, 1, 5, 7, generator=g) @ torch.randn(7, 7, generator=g)  # correlated columns
    labels = torch.arange(300) % 3
    tp = GaussianTeleport.from_data(x0, labels, num_classes=3)
    assert tp.num_components == 4 and tp.shape == (1, 5, 7)
    for k, rows in enumerate([labels == 0, labels == 1, labels == 2, torch.ones(300, dtype=torch.bool)]):
        flat = x0[rows].double().reshape(int(rows.sum()), -1)
        assert torch.allclose(tp.means[k], flat.mean(0), atol=1e-12)
        assert torch.allclose(tp.covariance(k), torch.cov(flat.T), atol=1e-10)
    single = GaussianTeleport.from_data(x0)
    assert single.num_components == 1 and torch.allclose(single.covariance(), tp.covariance(3), atol=1e-12)


def test_rank_deficient_covariance_is_clamped_to_psd():
    """Fewer samples than dimensions: the covariance is singular, its tiny negative eigenvalues become 0, and the
    map is still the exact one (directions without variance shrink with sigma)."""
    x0 = torch.randn(10, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tp = GaussianTeleport.from_data(x0)
    assert (tp.eigenvalues >= 0).all() and int((tp.eigenvalues > 1e-10).sum()) == 9
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = tp.teleport(x, *cosine_alpha_sigma(0.9), *cosine_alpha_sigma(0.5))
    ref = reference_pf_ode(x, tp.means, torch.cov(x0.T)[None], 0.9, 0.5, torch.zeros(3, dtype=torch.int64))
    assert rel(out, ref) < 1e-9


# ------------------------------------------------------------------------------------------------ sampling


class EDMModel:
    """Exact epsilon model of `FullGaussians` on EDM's VE path x = x0 + sigma eps, timestep t = log(sigma) / 4."""

    def __init__(self, data):
        self.data = data

    def __call__(self, x, t, y=None):
        sigma = torch.exp(4 * t.double())
        return self.data.posterior(x.double(), torch.ones_like(sigma), sigma, y)[1].to(x.dtype)


def gaussian_model(shape=(1, 5, 7), k: int = 1, schedule=VP, seed: int = 0):
    means, covs = random_gaussians(k, shape, seed=seed)
    data = FullGaussians(means, covs)
    model = EDMModel(data) if isinstance(schedule, Schedule) and schedule.kind == "ve" else \
        AnalyticDenoiser(data, schedule)
    return model, GaussianTeleport.from_moments(means, covs)


def exact_endpoint(tp, noise, sampler, steps, schedule=VP):
    """The exact ODE solution from the grid's first point (where the sampler starts from noise) to x0."""
    grid = grid_for(schedule, steps, resolve_sampler(sampler))
    return tp.teleport(noise * sampler_init_scale(grid, sampler), *grid.alpha_sigma(0), 1.0, 0.0)


def sampler_init_scale(grid, sampler):
    return resolve_sampler(sampler).plan(grid, None).init_scale


def noise(batch=7, shape=(1, 5, 7), seed=0, dtype=torch.float64):
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def test_skip_zero_is_plain_sampling():
    model, tp = gaussian_model()
    x = noise()
    plain = pydiff.sample(model, x, "dpmpp_2m", 8, schedule=VP)
    assert torch.equal(sample_teleported(model, x, tp, skip=0, sampler="dpmpp_2m", steps=8, schedule=VP), plain)
    assert torch.equal(sample_teleported(model, x, tp, skip=0.1, sampler="dpmpp_2m", steps=8, schedule=VP), plain)


def test_teleport_then_sampling_converges_to_plain_sampling():
    """On Gaussian data teleporting half the way is exact, so teleport + the rest differs from plain sampling on the
    same grid only by plain's error over the skipped half (and the first-order restart), which vanishes at the
    solver's order as the steps grow; both share the error of the low-noise half (the final step's dominates)."""
    model, tp = gaussian_model()
    x = noise()
    gap, plain_error = {}, {}
    for steps in (40, 80):
        tele = sample_teleported(model, x, tp, skip=0.5, sampler="dpmpp_2m", steps=steps, schedule=VP)
        plain = pydiff.sample(model, x, "dpmpp_2m", steps, schedule=VP)
        gap[steps], plain_error[steps] = rel(tele, plain), rel(plain, exact_endpoint(tp, x, "dpmpp_2m", steps))
    assert gap[80] < gap[40] / 2
    assert gap[80] < 0.02 * plain_error[80]


SAME_NFE = [  # (sampler, steps, skip, plain steps with the same number of model calls, schedule)
    ("dpmpp_2m", 10, 4, 6, VP), ("dpmpp_3m", 10, 4, 6, VP), ("unipc", 10, 4, 6, VP), ("euler", 10, 4, 6, VP),
    ("heun", 6, 2, 4, VP), ("ddim", 10, 4, 6, VP), ("flow_euler", 10, 4, 6, "flow"), ("euler", 10, 4, 6, "edm"),
]
SCHEDULES = {"flow": Schedule.flow(), "edm": Schedule.edm(sigma_max=20.0)}


@pytest.mark.parametrize("sampler,steps,skip,plain_steps,schedule", SAME_NFE,
                         ids=[c[0] + ("" if c[4] is VP else f"-{c[4]}") for c in SAME_NFE])
def test_teleport_beats_plain_sampling_at_equal_model_calls(sampler, steps, skip, plain_steps, schedule):
    """Exact Gaussian model: teleporting the first steps then sampling is about as accurate as all the steps, and
    more accurate than plain sampling with the same model calls (it spends them all where the noise is low).
    Covers VP-space, k-space (Euler; Heun: two stages a step), DDIM's training-table, UniPC, flow and EDM (VE, its
    initial noise scaled by sqrt(sigma_max^2 + 1)) samplers: the teleported state must land in each one's model
    space, at the right stage."""
    schedule = SCHEDULES[schedule] if isinstance(schedule, str) else schedule
    model, tp = gaussian_model(schedule=schedule)
    x = noise()
    calls = {"n": 0}

    def counted(*args, **kw):
        calls["n"] += 1
        return model(*args, **kw)

    exact = exact_endpoint(tp, x, sampler, steps, schedule)
    tele = sample_teleported(counted, x, tp, skip=skip, sampler=sampler, steps=steps, schedule=schedule)
    tele_calls, calls["n"] = calls["n"], 0
    plain = pydiff.sample(counted, x, sampler, plain_steps, schedule=schedule)
    assert tele_calls == calls["n"]
    full = pydiff.sample(model, x, sampler, steps, schedule=schedule)
    assert rel(tele, exact) < 0.75 * rel(plain, exact)
    assert rel(tele, exact) < 1.15 * rel(full, exact)


def test_guided_sampling_of_class_gaussians():
    """Guidance with per-class Gaussian models (label 2 = unconditional): the guided teleport is the ODE the guided
    sampler follows, so with many steps teleport + rest agrees with plain guided sampling far better than the
    conditional-only teleport does."""
    model, tp = gaussian_model(k=3, seed=6)
    x = noise()
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0])
    kw = dict(sampler="dpmpp_2m", steps=60, schedule=VP, guidance_scale=2.0, cond={"y": labels},
              uncond={"y": torch.full_like(labels, 2)})
    plain = pydiff.sample(model, x, **kw)
    guided = sample_teleported(model, x, tp, skip=0.5, guided_teleport=True, **kw)
    conditional = sample_teleported(model, x, tp, skip=0.5, **kw)  # the default
    assert rel(guided, plain) < 2e-3 and rel(conditional, plain) > 10 * rel(guided, plain)


def test_noise_sampler_gets_stage_indices_of_the_whole_run():
    model, tp = gaussian_model()
    seen = []

    def draws(i, x):
        seen.append(i)
        return torch.zeros_like(x)

    sample_teleported(model, noise(), tp, skip=3, sampler="euler_ancestral", steps=7, schedule=VP,
                      noise_sampler=draws)
    assert seen == [3, 4, 5, 6]


def test_digits_model_keeps_its_quality_when_teleported():
    """The bundled class-conditional DiT, guidance 1.5: teleporting 3 of 10 dpmpp_2m steps (either way of treating
    guidance) keeps the samples near the full run's, and their classifier accuracy, much nearer than starting those
    7 steps from the raw noise (the teleport replaced by the identity) does."""
    from pydiff.metrics import evaluate
    from pydiff.models import load, load_digits

    model = load("digits")
    data = load_digits("train", size=16)
    tp = GaussianTeleport.from_data(data.images, data.labels, num_classes=10)
    labels = torch.arange(100) % 10
    x = torch.randn(100, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(sampler="dpmpp_2m", steps=10, schedule=model.scheduler_config, guidance_scale=1.5,
              cond={"y": labels}, uncond={"y": torch.full_like(labels, 10)})
    full = pydiff.sample(model, x, **kw)
    sampler = resolve_sampler("dpmpp_2m")
    plan = sampler.plan(grid_for(model.scheduler_config, 10, sampler), 1.5, start=3)
    with torch.no_grad():
        untouched = run_plan(model, x, plan, {"y": torch.cat([labels, torch.full_like(labels, 10)])}, True, None,
                             None, guidance_scale=1.5)
    accuracy = evaluate(full, labels)["accuracy"]
    for guided_teleport in (False, True):
        tele = sample_teleported(model, x, tp, skip=3, guided_teleport=guided_teleport, **kw)
        assert tele.dtype == torch.float32 and torch.isfinite(tele).all()
        assert rel(tele, full) < 0.5 * rel(untouched, full)
        assert evaluate(tele, labels)["accuracy"] >= accuracy - 0.03


# ------------------------------------------------------------------------------------------------ bad input


def _tp(k=1, shape=(2, 3)):
    means, covs = random_gaussians(k, shape)
    return GaussianTeleport.from_moments(means if k > 1 else means[0], covs if k > 1 else covs[0])


X = torch.randn(4, 2, 3)
LEVELS = (0.1, 0.99, 0.8, 0.6)
NOT_PSD = torch.diag(torch.tensor([1.0, -0.5, 2.0, 1.0, 1.0, 1.0]))

BAD = [
    (lambda: GaussianTeleport.from_data([[1.0, 2.0]]), TypeError, "x0 must be a floating-point tensor"),
    (lambda: GaussianTeleport.from_data(torch.ones(5, 3, dtype=torch.int64)), TypeError, "x0 must be a floating"),
    (lambda: GaussianTeleport.from_data(torch.randn(5)), ValueError, r"x0 must be \(N, \*shape\)"),
    (lambda: GaussianTeleport.from_data(torch.randn(1, 3)), ValueError, "at least 2 samples"),
    (lambda: GaussianTeleport.from_data(torch.tensor([[1.0, math.nan], [0.0, 1.0]])), ValueError, "x0 must be finite"),
    (lambda: GaussianTeleport.from_data(torch.randn(6, 3), torch.arange(6) % 2), ValueError, "together"),
    (lambda: GaussianTeleport.from_data(torch.randn(6, 3), torch.arange(6) % 2, 0), ValueError, "num_classes"),
    (lambda: GaussianTeleport.from_data(torch.randn(6, 3), torch.arange(5), 6), ValueError, r"labels must have shape"),
    (lambda: GaussianTeleport.from_data(torch.randn(6, 3), torch.zeros(6), 2), TypeError, "labels must be an int64"),
    (lambda: GaussianTeleport.from_data(torch.randn(6, 3), torch.arange(6) % 3, 2), ValueError,
     r"labels must lie in \[0, 1\]"),
    (lambda: GaussianTeleport.from_data(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 1, 2]), 3), ValueError,
     "class 2 has 1 samples"),
    (lambda: GaussianTeleport.from_moments(torch.zeros(6), torch.eye(6)[:5]), ValueError, r"cov must be \(D, D\)"),
    (lambda: GaussianTeleport.from_moments(torch.zeros(5), torch.eye(6)), ValueError, "mean must be"),
    (lambda: GaussianTeleport.from_moments(torch.zeros(3, 6), torch.eye(6).expand(2, 6, 6)), ValueError,
     "mean must be"),
    (lambda: GaussianTeleport.from_moments(torch.zeros(6), NOT_PSD), ValueError, "positive semi-definite"),
    (lambda: GaussianTeleport.from_moments(torch.zeros(6), torch.eye(6) * math.inf), ValueError,
     "cov must be finite"),
    (lambda: GaussianTeleport.from_moments(torch.zeros(6), torch.eye(6, dtype=torch.int64)), TypeError, "cov must"),
    (lambda: _tp().teleport(torch.randn(4, 3, 2), *LEVELS), ValueError, r"x must have shape \(B, 2, 3\)"),
    (lambda: _tp().teleport(X.long(), *LEVELS), TypeError, "x must be a floating-point tensor"),
    (lambda: _tp().teleport(X, 0.1, 0.0, 0.8, 0.6), ValueError, "sigma_from must be > 0"),
    (lambda: _tp().teleport(X, 0.1, 0.99, -0.8, 0.6), ValueError, "alpha_to must be a finite number >= 0"),
    (lambda: _tp().teleport(X, 0.1, 0.99, 0.8, math.nan), ValueError, "sigma_to must be a finite number"),
    (lambda: _tp().teleport(X, 0.1, 0.99, 0.0, 0.0), ValueError, "cannot both be 0"),
    (lambda: _tp(3).teleport(X, *LEVELS), ValueError, "labels are required"),
    (lambda: _tp(3).teleport(X, *LEVELS, torch.tensor([0, 1, 3, 0])), ValueError, r"labels must lie in \[0, 2\]"),
    (lambda: _tp(3).teleport(X, *LEVELS, torch.tensor([0, 1, 2])), ValueError, r"labels must have shape \(4,\)"),
    (lambda: _tp(3).teleport(X, *LEVELS, torch.zeros(4, dtype=torch.int64, device="meta")), ValueError,
     "labels is on meta but the sample is on cpu"),
    (lambda: _tp(3).teleport(X, *LEVELS, torch.zeros(4, dtype=torch.int64), guidance_scale=2.0), ValueError,
     "needs uncond_labels"),
    (lambda: _tp(3).teleport(X, *LEVELS, torch.zeros(4, dtype=torch.int64), guidance_scale=math.nan), ValueError,
     "guidance_scale must be a finite number"),
    (lambda: _tp(3).teleport(X, 0.1, 0.99, 1.0, 0.0, torch.zeros(4, dtype=torch.int64), guidance_scale=2.0,
                             uncond_labels=torch.full((4,), 2)), ValueError, "sigma_to > 0"),
    (lambda: _tp(3).teleport(X, *LEVELS, torch.zeros(4, dtype=torch.int64), guidance_scale=2.0,
                             uncond_labels=torch.full((4,), 2), max_step=0.0), ValueError, "max_step"),
]


@pytest.mark.parametrize("call,error,match", BAD, ids=[f"{i}-{m[:24]}" for i, (_, _, m) in enumerate(BAD)])
def test_bad_input_raises_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


SAMPLE_BAD = [
    (dict(teleport="gaussian"), TypeError, "teleport must be a GaussianTeleport"),
    (dict(skip=1.0), ValueError, r"skip as a fraction must lie in \[0, 1\)"),
    (dict(skip=8), ValueError, r"skip must lie in \[0, 7\]"),
    (dict(skip=-1), ValueError, r"skip must lie in \[0, 7\]"),
    (dict(skip=True), TypeError, "skip must be an int"),
    (dict(skip="2"), TypeError, "skip must be an int"),
    (dict(sampler="consistency", schedule=Schedule.edm()), ValueError, "cannot start mid-schedule"),
    (dict(teleport=_tp(3, (1, 5, 7))), ValueError, "label_key='y'"),
    (dict(teleport=_tp(1, (5, 7))), ValueError, r"x must have shape \(B, 5, 7\)"),
    (dict(cuda_graph=True), ValueError, "cuda_graph=True needs CUDA tensors"),
]


@pytest.mark.parametrize("override,error,match", SAMPLE_BAD, ids=[m[:30] for _, _, m in SAMPLE_BAD])
def test_sample_teleported_rejects_bad_input(override, error, match):
    model, tp = gaussian_model()
    kw = {**dict(teleport=tp, skip=2, sampler="dpmpp_2m", steps=8, schedule=VP), **override}
    with pytest.raises(error, match=match):
        sample_teleported(model, noise(), **kw)


@pytest.mark.gpu
def test_cuda_graph_matches_eager(cuda_device):
    """Guided class Gaussians on CUDA: the steps after the teleport captured as a CUDA graph give the eager run's
    numbers, and a replay on new noise gives that noise's."""
    model, tp = gaussian_model(k=3, seed=6)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0], device=cuda_device)
    kw = dict(skip=4, sampler="dpmpp_2m", steps=12, schedule=VP, guidance_scale=2.0, cond={"y": labels},
              uncond={"y": torch.full_like(labels, 2)})
    x = noise().to(cuda_device)
    eager = sample_teleported(model, x, tp, **kw)
    graphed = sample_teleported(model, x, tp, cuda_graph=True, **kw)
    again = sample_teleported(model, x * 0.5, tp, cuda_graph=True, **kw)  # a replay on new noise
    assert rel(graphed, eager) < 1e-10
    assert rel(again, sample_teleported(model, x * 0.5, tp, **kw)) < 1e-10
