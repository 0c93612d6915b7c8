"""pydiff.models: the digits DiT (shapes, conditioning, RoPE, weight files), the data split, and the exact
analytic Gaussian / Gaussian-mixture models (checked against closed forms, autograd scores and ODE solves)."""

import copy
import dataclasses
import math

import pytest
import torch

import pydiff.models as models
from pydiff.models import ClassifierConfig, GaussianData, GaussianMixtureData
from pydiff.models.dit import DiT, DiTConfig, rope_2d_tables

SMALL = DiTConfig(sample_size=6, in_channels=3, patch_size=2, width=24, depth=2, num_heads=3)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere: the adaLN-Zero initialisation would make every output zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.1  # keeps activations O(1)
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def _linear_abar(n: int = 1000) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, n, dtype=torch.float64), 0)


# ---------------------------------------------------------------------------------------------- DiT


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("batch", [1, 7])
def test_dit_shapes_batch_independence_and_float64_reference(rope, batch):
    model = _randomize(DiT(dataclasses.replace(SMALL, width=48, num_heads=3, rope=rope)))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 6, 6, generator=gen)
    t = torch.rand(batch, generator=gen) * 999
    y = torch.randint(0, 11, (batch,), generator=gen)
    with torch.no_grad():
        out = model(x, t, y=y)
        ref = copy.deepcopy(model).double()(x.double(), t.double(), y=y)
        alone = torch.cat([model(x[i:i + 1], t[i:i + 1], y=y[i:i + 1]) for i in range(batch)])
    assert out.shape == x.shape and out.dtype == torch.float32
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
    assert 0.1 < out.abs().max().item() < 100
    torch.testing.assert_close(alone, out, rtol=1e-4, atol=1e-5)


def test_dit_noncontiguous_scalar_t_and_null_label():
    model = _randomize(DiT(SMALL))
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(5, 6, 6, 3, generator=gen)
    x = base.permute(0, 3, 1, 2)  # non-contiguous NCHW view
    assert not x.is_contiguous()
    with torch.no_grad():
        out = model(x, torch.tensor(437.5), y=torch.tensor([0, 3, 9, 10, 10]))
        ref = model(x.contiguous(), torch.full((5,), 437.5), y=torch.tensor([0, 3, 9, 10, 10]))
        null = model(x, 437.5, y=None)
        null_ref = model(x, 437.5, y=torch.full((5,), 10))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)  # the conv may sum in another order
    torch.testing.assert_close(null, null_ref, rtol=0, atol=0)
    assert not torch.allclose(out[:3], null[:3])  # the label changes the prediction


def test_dit_adaln_zero_starts_at_zero_and_is_deterministic():
    torch.manual_seed(3)
    model = DiT(SMALL).eval()
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        assert model(x, torch.tensor([1.0, 10.0, 100.0, 999.0])).abs().max().item() == 0.0
    torch.manual_seed(4)
    a = _randomize(DiT(SMALL), seed=5)
    b = _randomize(DiT(SMALL), seed=5)
    with torch.no_grad():
        torch.testing.assert_close(a(x, 3.0), b(x, 3.0), rtol=0, atol=0)


def test_unpatchify_inverts_row_major_patches():
    cfg = DiTConfig(sample_size=6, in_channels=3, patch_size=3, width=24, depth=1, num_heads=2)
    model = DiT(cfg)
    x = torch.randn(2, 3, 6, 6)
    grid, p = 2, 3
    tokens = torch.empty(2, grid * grid, p * p * 3)
    for i in range(grid):
        for j in range(grid):
            for pr in range(p):
                for pc in range(p):
                    for c in range(3):
                        tokens[:, i * grid + j, (pr * p + pc) * 3 + c] = x[:, c, i * p + pr, j * p + pc]
    torch.testing.assert_close(model._unpatchify(tokens), x, rtol=0, atol=0)


def test_rope_scores_depend_only_on_relative_position():
    from pydiff.reference.attention import rope_reference

    head_dim, grid = 16, 5
    cos, sin = rope_2d_tables(head_dim, grid)
    assert cos.shape == (grid * grid, head_dim)
    gen = torch.Generator().manual_seed(6)
    q, k = torch.randn(2, 1, 1, 1, head_dim, generator=gen, dtype=torch.float64).unbind(0)
    q = q.expand(1, 1, grid * grid, head_dim)
    k = k.expand(1, 1, grid * grid, head_dim)
    rq = rope_reference(q, cos.double(), sin.double(), interleaved=True)[0, 0]
    rk = rope_reference(k, cos.double(), sin.double(), interleaved=True)[0, 0]
    torch.testing.assert_close(rq.norm(dim=-1), q[0, 0].norm(dim=-1))  # rotations keep the norm

    def score(r1, c1, r2, c2):
        return (rq[r1 * grid + c1] * rk[r2 * grid + c2]).sum()

    torch.testing.assert_close(score(0, 0, 1, 2), score(3, 2, 4, 4))
    torch.testing.assert_close(score(4, 1, 2, 0), score(2, 3, 0, 2))
    assert not torch.allclose(score(0, 0, 1, 2), score(0, 0, 2, 1))  # the two axes are distinguished


@pytest.mark.parametrize("bad, exc, match", [
    (lambda m: m(torch.randn(2, 3, 6, 7), 1.0), ValueError, "x must have shape"),
    (lambda m: m(torch.ones(2, 3, 6, 6, dtype=torch.int64), 1.0), TypeError, "x must be a floating"),
    (lambda m: m(torch.randn(2, 3, 6, 6), torch.ones(3)), ValueError, "t must be a scalar or have shape"),
    (lambda m: m(torch.randn(2, 3, 6, 6), 1.0, y=torch.ones(2)), TypeError, "y must be an int64"),
    (lambda m: m(torch.randn(2, 3, 6, 6), 1.0, y=torch.ones(3, dtype=torch.int64)), ValueError, "y must have"),
])
def test_dit_rejects_bad_inputs(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad(DiT(SMALL))


@pytest.mark.parametrize("field, value", [("patch_size", 4), ("num_heads", 5), ("depth", 0), ("width", 2.5),
                                          ("mlp_ratio", -1.0)])
def test_dit_config_rejects_impossible_values(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(SMALL, **{field: value})


@pytest.mark.parametrize("field, value", [("channels", 0), ("num_classes", True), ("feature_dim", 8.0),
                                          ("sample_size", 18)])
def test_classifier_config_rejects_impossible_values(field, value):
    with pytest.raises(ValueError, match=f"ClassifierConfig.{field} must be"):
        ClassifierConfig(**{field: value})


# ---------------------------------------------------------------------------------------------- weights


def test_load_digits_model_contract():
    model = models.load("digits")
    assert isinstance(model, DiT) and not model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert model.config.sample_size == 16 and model.config.num_classes == 10
    cfg = model.scheduler_config
    assert cfg["prediction_type"] == "epsilon" and cfg["num_train_timesteps"] == 1000
    from diffusers import DPMSolverMultistepScheduler

    from pydiff.schedules import Schedule

    abar = Schedule.from_diffusers(cfg).alphas_cumprod
    torch.testing.assert_close(abar, DPMSolverMultistepScheduler.from_config(cfg).alphas_cumprod.double())
    clf = models.load("digits-classifier")
    assert isinstance(clf, models.DigitsClassifier) and not clf.training


def test_trained_dit_denoises_held_out_digits():
    """One-step check that the committed weights are trained: eps error far below the untrained level (1)."""
    from pydiff.schedules import Schedule

    model = models.load("digits")
    abar = Schedule.from_diffusers(model.scheduler_config).alphas_cumprod.float()
    test = models.load_digits("test")
    gen = torch.Generator().manual_seed(7)
    x0, y = test.images[:97], test.labels[:97]
    t = torch.randint(100, 900, (97,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        eps = model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y=y)
    assert (eps - noise).pow(2).mean().item() < 0.2


def test_guidance_embedding_starts_at_the_model_without_it_and_round_trips(tmp_path):
    base = _randomize(DiT(SMALL))
    embedded = DiT(dataclasses.replace(SMALL, guidance_embed=True))
    assert sorted(embedded.load_state_dict(base.state_dict(), strict=False).missing_keys) == [
        "g_embed.0.bias", "g_embed.0.weight", "g_embed.2.bias", "g_embed.2.weight"]
    x, y = torch.randn(5, 3, 6, 6), torch.tensor([0, 3, 9, 10, 2])
    with torch.no_grad():
        assert torch.equal(embedded(x, 300.0, y, guidance=2.5), base(x, 300.0, y))  # its last layer starts at 0
        torch.nn.init.normal_(embedded.g_embed[2].weight)
        per_row = embedded(x, 300.0, y, guidance=torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]))
        for i, w in enumerate([1.0, 1.5, 2.0, 2.5, 3.0]):
            torch.testing.assert_close(per_row[i:i + 1], embedded(x[i:i + 1], 300.0, y[i:i + 1], guidance=w))
        assert (embedded(x, 300.0, y, guidance=1.0) - embedded(x, 300.0, y, guidance=3.0)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="guidance .* is required"):
        embedded(x, 300.0, y)
    with pytest.raises(ValueError, match="guidance must be a scalar or have shape"):
        embedded(x, 300.0, y, guidance=torch.ones(4))
    with pytest.raises(ValueError, match="no guidance embedding"):
        base(x, 300.0, y, guidance=1.5)
    path = tmp_path / "embedded.safetensors"
    models.save(embedded, path)
    loaded = models.load("digits", path)
    assert loaded.config.guidance_embed
    with torch.no_grad():
        assert torch.equal(loaded(x, 300.0, y, guidance=2.0), embedded(x, 300.0, y, guidance=2.0))
    labels = torch.tensor([1, 2])
    assert base.sampling_kwargs(labels, 2.0)["uncond"]["y"].tolist() == [10, 10]
    kwargs = embedded.sampling_kwargs(labels, 2.0)
    assert kwargs["guidance_scale"] == 1.0 and kwargs["uncond"] is None
    assert kwargs["cond"]["guidance"].tolist() == [2.0, 2.0]


def test_save_load_round_trip_and_file_errors(tmp_path):
    model = _randomize(DiT(SMALL, scheduler_config={"beta_schedule": "linear"}))
    path = tmp_path / "m.safetensors"
    models.save(model, path, provenance={"seed": 3})
    loaded = models.load("digits", path)
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 5.0), model(x, 5.0), rtol=0, atol=0)
    assert loaded.config == SMALL and loaded.scheduler_config == {"beta_schedule": "linear"}

    with pytest.raises(FileNotFoundError, match="not found"):
        models.load("digits", tmp_path / "missing.safetensors")
    data = path.read_bytes()
    for cut in (4, 40, len(data) - 50):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            models.load("digits", tmp_path / "cut.safetensors")
    with pytest.raises(ValueError, match="expected 'classifier'"):
        models.load("digits-classifier", path)
    with pytest.raises(ValueError, match="name must be one of"):
        models.load("imagenet")


def test_load_rejects_wrong_shapes_and_missing_tensors(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    models.save(_randomize(DiT(SMALL)), path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    wrong = dict(tensors, **{"out.weight": torch.randn(5, 24)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"wrong shape: out.weight: expected \(12, 24\), got \(5, 24\)"):
        models.load("digits", tmp_path / "wrong.safetensors")
    missing = {k: v for k, v in tensors.items() if k != "y_embed.weight"}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="missing \\['y_embed.weight'\\]"):
        models.load("digits", tmp_path / "missing.safetensors")
    save_file(tensors, str(tmp_path / "nometa.safetensors"), metadata={"pydiff_model": "dit"})
    with pytest.raises(ValueError, match="invalid model config"):
        models.load("digits", tmp_path / "nometa.safetensors")


# ---------------------------------------------------------------------------------------------- data


def test_digits_split_follows_the_documented_rule():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    train, test = models.load_digits("train"), models.load_digits("test")
    assert train.images.shape == (1437, 1, 16, 16) and test.images.shape == (360, 1, 16, 16)
    assert train.images.min() == -1 and train.images.max() <= 1
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~20% of each class
    raw = load_digits()
    train_idx, test_idx = train_test_split(range(1797), test_size=0.2, stratify=raw.target, random_state=0)
    native = models.load_digits("test", size=8)
    torch.testing.assert_close(native.images, torch.tensor(raw.images[test_idx], dtype=torch.float32)[:, None] / 8 - 1)
    torch.testing.assert_close(models.load_digits("train", 8).labels, torch.tensor(raw.target[train_idx]))
    # bilinear upsampling keeps each image's mean brightness up to the border effects
    torch.testing.assert_close(test.images.mean((1, 2, 3)), native.images.mean((1, 2, 3)), rtol=0, atol=0.1)
    with pytest.raises(ValueError, match="split"):
        models.load_digits("validation")
    with pytest.raises(ValueError, match="size"):
        models.load_digits("train", 12)


# ---------------------------------------------------------------------------------------------- analytic


def _gmm(shape=(2,), k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(k, *shape, generator=gen, dtype=torch.float64) * 1.5
    stds = 0.2 + torch.rand(k, generator=gen, dtype=torch.float64)
    weights = 0.5 + torch.rand(k, generator=gen, dtype=torch.float64)
    return GaussianMixtureData(means, stds, weights)


def test_gaussian_posterior_matches_full_covariance_conditioning():
    gen = torch.Generator().manual_seed(10)
    mean = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    std = 0.3 + torch.rand(2, 3, generator=gen, dtype=torch.float64)
    data = GaussianData(mean, std)
    model = data.denoiser(_linear_abar(), "sample")
    x = torch.randn(5, 2, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.0, 13.0, 250.5, 700.25, 999.0], dtype=torch.float64)
    alpha, sigma = model.alpha_sigma(t)
    out = model(x, t)
    cov0 = torch.diag(std.flatten() ** 2)
    for i in range(5):
        cov_t = alpha[i] ** 2 * cov0 + sigma[i] ** 2 * torch.eye(6, dtype=torch.float64)
        ref = mean.flatten() + alpha[i] * cov0 @ torch.linalg.solve(cov_t, x[i].flatten() - alpha[i] * mean.flatten())
        torch.testing.assert_close(out[i].flatten(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule", ["vp", "flow"])
def test_mixture_denoiser_is_tweedie_of_the_exact_marginal(schedule):
    data = _gmm(shape=(3,), k=4)
    model_x0 = data.denoiser(_linear_abar() if schedule == "vp" else "flow", "sample")
    model_eps = data.denoiser(_linear_abar() if schedule == "vp" else "flow", "epsilon")
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(6, 3, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    t = torch.tensor([3.0, 50.0, 333.3, 500.0, 800.5, 990.0], dtype=torch.float64)
    alpha, sigma = model_x0.alpha_sigma(t)
    a, s = alpha[:, None, None], sigma[:, None, None]
    var_t = a**2 * data.stds[None, :, None] ** 2 + s**2
    log_p = torch.logsumexp(data.weights.log() - 0.5 * ((x[:, None] - a * data.means) ** 2 / var_t
                                                        + var_t.log()).sum(-1), dim=1)
    (score,) = torch.autograd.grad(log_p.sum(), x)
    x = x.detach()
    torch.testing.assert_close(model_x0(x, t), (x + sigma[:, None] ** 2 * score) / alpha[:, None],
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model_eps(x, t), -sigma[:, None] * score, rtol=1e-10, atol=1e-10)


def test_mixture_posterior_matches_monte_carlo():
    data = _gmm(shape=(2,), k=3, seed=1)
    model = data.denoiser(_linear_abar(), "sample")
    gen = torch.Generator().manual_seed(12)
    x0 = data.sample(400_000, gen)
    x_t = torch.tensor([[0.3, -0.8]], dtype=torch.float64)
    alpha, sigma = model.alpha_sigma(300.0)
    log_w = -0.5 * ((x_t - alpha * x0) ** 2).sum(1) / sigma**2
    w = torch.softmax(log_w, 0)
    estimate = (w[:, None] * x0).sum(0)
    torch.testing.assert_close(model(x_t, 300.0)[0], estimate, rtol=0, atol=0.02)


@pytest.mark.parametrize("schedule", ["vp", "flow"])
def test_prediction_types_follow_pydiff_schedules_conversions(schedule):
    from pydiff.schedules import convert_prediction

    data = _gmm(shape=(5,), k=2, seed=4)
    table = _linear_abar() if schedule == "vp" else "flow"
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    t = torch.tensor([77.0, 431.5, 901.0], dtype=torch.float64)
    eps = data.denoiser(table, "epsilon")(x, t)
    alpha, sigma = (v[:, None] for v in data.denoiser(table).alpha_sigma(t))
    for kind in ("sample", "v_prediction", "flow_prediction"):
        expected = convert_prediction(eps, x, alpha, sigma, "epsilon", kind)
        torch.testing.assert_close(data.denoiser(table, kind)(x, t), expected, rtol=1e-10, atol=1e-10)


def test_prediction_types_are_consistent_and_conditioning_selects_a_component():
    data = _gmm(shape=(2, 2), k=3, seed=2)
    abar = _linear_abar()
    preds = {p: data.denoiser(abar, p) for p in ("epsilon", "sample", "v_prediction", "flow_prediction")}
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(4, 2, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([10.0, 200.0, 512.5, 998.0], dtype=torch.float64)
    y = torch.tensor([0, 2, 3, 1])
    out = {p: m(x, t, y=y) for p, m in preds.items()}
    alpha, sigma = (v.view(-1, 1, 1) for v in preds["epsilon"].alpha_sigma(t))
    torch.testing.assert_close(alpha * out["sample"] + sigma * out["epsilon"], x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["v_prediction"], alpha * out["epsilon"] - sigma * out["sample"])
    torch.testing.assert_close(out["flow_prediction"], out["epsilon"] - out["sample"])
    for i, label in enumerate(y.tolist()):
        if label < 3:
            single = GaussianData(data.means[label], data.stds[label]).denoiser(abar, "sample")
            torch.testing.assert_close(out["sample"][i], single(x[i:i + 1], t[i:i + 1])[0], rtol=1e-12, atol=1e-12)
        else:  # the null label is the whole mixture
            torch.testing.assert_close(out["sample"][i], preds["sample"](x[i:i + 1], t[i:i + 1])[0])
    assert preds["sample"](x.float(), t).dtype == torch.float32
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\], got values in \[0, 4\]"):
        preds["sample"](x, t, y=torch.tensor([0, 1, 4, 2]))


def test_fractional_timesteps_match_diffusers_sigma_to_t():
    """A sampler that turns its sigmas into fractional timesteps the diffusers way queries the exact sigma."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                       use_karras_sigmas=True)
    scheduler.set_timesteps(7)
    model = GaussianData(torch.zeros(1) + 0.5, 1.0).denoiser(scheduler)
    t = scheduler.timesteps.double()
    assert (t != t.round()).any()
    alpha, sigma = model.alpha_sigma(t)
    torch.testing.assert_close(sigma / alpha, scheduler.sigmas[:-1].double(), rtol=2e-5, atol=0)
    integer = torch.arange(0, 1000, 37)
    torch.testing.assert_close(model.alpha_sigma(integer)[0] ** 2, scheduler.alphas_cumprod[integer].double(),
                               rtol=1e-12, atol=0)


def test_config_dict_scheduler_object_and_tensor_agree():
    from diffusers import DPMSolverMultistepScheduler

    config = {"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "linear", "beta_start": 1e-4,
              "beta_end": 0.02, "num_train_timesteps": 1000, "prediction_type": "epsilon"}
    data = GaussianData(torch.tensor([0.2, -0.4, 0.9]), torch.tensor([0.5, 1.0, 0.3]))
    from_dict = data.denoiser(config)
    from_object = data.denoiser(DPMSolverMultistepScheduler.from_config(config))
    # diffusers' DPM-Solver keeps a float32 table; pydiff.schedules reproduces it
    table32 = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32), 0)
    from_table = data.denoiser(table32, "epsilon")
    x = torch.randn(3, 3, dtype=torch.float64)
    t = torch.tensor([5.0, 444.0, 999.0])
    torch.testing.assert_close(from_dict(x, t), from_table(x, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(from_object(x, t), from_dict(x, t), rtol=0, atol=0)
    flow = data.denoiser({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                          "shift": 3.0})
    assert flow.kind == "flow" and flow.prediction_type == "flow_prediction"
    torch.testing.assert_close(flow.alpha_sigma(250.0)[1], torch.tensor(0.25, dtype=torch.float64))


def _rk4_pf_ode(data, x, alpha_from, sigma_from, alpha_to, sigma_to, steps=400):
    """Reference: integrate dy/du = sigma_hat * eps(x) with y = x / alpha, u = log(sigma / alpha), RK4, float64."""
    u0, u1 = math.log(sigma_from / alpha_from), math.log(sigma_to / alpha_to)
    h = (u1 - u0) / steps
    y = x / alpha_from

    def f(u, y):
        sh = math.exp(u)
        alpha = 1 / math.sqrt(1 + sh * sh)
        eps = data.posterior(alpha * y, torch.tensor(alpha), torch.tensor(sh * alpha))[1]
        return sh * eps

    u = u0
    for _ in range(steps):
        k1 = f(u, y)
        k2 = f(u + h / 2, y + h / 2 * k1)
        k3 = f(u + h / 2, y + h / 2 * k2)
        k4 = f(u + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        u += h
    return y * alpha_to


@pytest.mark.parametrize("schedule, t_from, t_to", [("vp", 999.0, 0.0), ("vp", 640.5, 120.25),
                                                    ("flow", 950.0, 30.0)])
def test_gaussian_exact_ode_solution_matches_rk4(schedule, t_from, t_to):
    gen = torch.Generator().manual_seed(14)
    data = GaussianData(torch.randn(3, 5, generator=gen), 0.2 + torch.rand(3, 5, generator=gen))
    model = data.denoiser(_linear_abar() if schedule == "vp" else "flow")
    x = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64) * model.alpha_sigma(t_from)[1] + 0.3
    exact = model.exact_ode_solution(x, t_from, t_to)
    (a0, s0), (a1, s1) = model.alpha_sigma(t_from), model.alpha_sigma(t_to)
    ref = _rk4_pf_ode(data, x, a0.item(), s0.item(), a1.item(), s1.item())
    assert ((exact - ref).norm() / ref.norm()).item() < 1e-7  # RK4 truncation ~1e-9


def test_gaussian_exact_ode_solution_reaches_the_data_distribution():
    data = GaussianData(torch.tensor([1.5, -2.0, 0.25]), torch.tensor([0.1, 0.7, 2.0]))
    model = data.denoiser("flow")
    noise = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    x0 = model.exact_ode_solution(noise, 1000.0, None)  # alpha = 0 start: pure noise
    torch.testing.assert_close(x0.mean(0), data.mean, rtol=0, atol=0.015)
    torch.testing.assert_close(x0.std(0), data.std, rtol=0.01, atol=0)
    # continuity at the pure-noise end
    torch.testing.assert_close(model.exact_ode_solution(noise[:5], 999.9999, 10.0),
                               model.exact_ode_solution(noise[:5], 1000.0, 10.0), rtol=1e-5, atol=1e-6)


def test_zero_terminal_snr_table_ends_at_pure_noise():
    abar = _linear_abar().clone()
    abar[-1] = 0.0
    model = GaussianData(torch.tensor([0.5, -0.5]), 0.8).denoiser(abar, "epsilon")
    alpha, sigma = model.alpha_sigma(torch.tensor([999.0, 998.5, 998.0]))
    assert alpha[0].item() == 0.0 and sigma[0].item() == 1.0 and alpha[1].item() == 0.0
    assert alpha[2].item() == pytest.approx(abar[998].sqrt().item(), rel=1e-12)
    x = torch.randn(2, 2, dtype=torch.float64)
    torch.testing.assert_close(model(x, 999.0), x)  # at alpha = 0, x_t is the noise


def test_sampling_moments_and_mixture_frequencies():
    gen = torch.Generator().manual_seed(16)
    data = GaussianData(torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, 2.0]]))
    x = data.sample(100_000, gen)
    assert x.shape == (100_000, 1, 2) and x.dtype == torch.float64
    torch.testing.assert_close(x.mean(0), data.mean, rtol=0, atol=0.02)
    torch.testing.assert_close(x.std(0), data.std, rtol=0.01, atol=0)
    gmm = _gmm(k=3, seed=3)
    x, labels = gmm.sample(60_000, gen, return_labels=True)
    freq = torch.bincount(labels, minlength=3).double() / 60_000
    torch.testing.assert_close(freq, gmm.weights, rtol=0, atol=0.01)
    torch.testing.assert_close(x[labels == 1].mean(0), gmm.means[1], rtol=0, atol=0.03)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: GaussianData(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0])), ValueError, "std must be > 0"),
    (lambda: GaussianData(torch.zeros(3), torch.ones(2)), ValueError, "does not broadcast"),
    (lambda: GaussianData(1.0, 1.0), ValueError, "mean must have the data shape"),
    (lambda: GaussianMixtureData(torch.zeros(3), 1.0), ValueError, "means must have shape"),
    (lambda: GaussianMixtureData(torch.zeros(3, 2), [1.0, 1.0]), ValueError, "stds and weights must have shape"),
    (lambda: GaussianData(torch.zeros(2), 1.0).denoiser(_linear_abar(), "score"), ValueError, "prediction_type"),
    (lambda: GaussianData(torch.zeros(2), 1.0).denoiser("linear"), ValueError, "must be 'flow'"),
    (lambda: GaussianData(torch.zeros(2), 1.0).denoiser(torch.tensor([0.5, 1.5])), ValueError, r"\[0, 1\)"),
    (lambda: GaussianData(torch.zeros(2), 1.0).denoiser(3), TypeError, "schedule must be"),
    (lambda: GaussianData(torch.zeros(2), 1.0).sample(0), ValueError, "n must be a positive int"),
    (lambda: GaussianData(torch.zeros(2), 1.0).denoiser("flow")(torch.zeros(3, 3), 1.0), ValueError, r"\(B, 2\)"),
])
def test_analytic_rejects_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# ---------------------------------------------------------------------------------------------- quality


@pytest.mark.slow
@pytest.mark.parametrize("guidance_scale", [1.0, 1.5, 2.0])
def test_dpmpp_2m_samples_are_recognisable(guidance_scale):
    """The committed model's 20-step DPM++(2M) samples: accuracy >= 90% and FD-digits within 3x the floor."""
    from pydiff.metrics import evaluate
    from pydiff.models.train import EVAL_SEED, sample_with_diffusers

    model = models.load("digits")
    labels = torch.arange(1000) % 10
    samples = sample_with_diffusers(model, labels, guidance_scale, 20, torch.Generator().manual_seed(EVAL_SEED))
    result = evaluate(samples, labels)
    assert result["accuracy"] >= 0.9
    if guidance_scale <= 1.5:
        assert result["fd"] <= 3 * result["fd_floor"]
