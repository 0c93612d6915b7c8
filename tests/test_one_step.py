"""pydiff.distill.distill_one_step: score distillation moves a one-step generator onto the teacher's (guided)
distribution, its scheduler config is diffusers' one DDIM step, bad settings and inputs are refused by name, and the
command line writes a generator that samples."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import pydiff
from pydiff.distill import (Discriminator, RealSamples, ScoreDistillation, TeacherPairs, distill_one_step,
                            one_step_scheduler_config, teacher_pairs)
from pydiff.distill.score import _Features, gan_layer_name
from pydiff.models import DiT, DiTConfig, GaussianData, load
from pydiff.schedules import Schedule

SCHEDULE = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": "sample"}
SHAPE = (1, 3, 5)
STD = 0.5
FAST = ScoreDistillation(train_steps=2, batch_size=4)


class Gaussians:
    """teacher(x, t, y): the exact x0 prediction of N(means[y], STD^2 I) (float64), one Gaussian per label."""

    def __init__(self, means):
        self.parts = [GaussianData(m, STD).denoiser(SCHEDULE) for m in means]

    def __call__(self, x, t, y):
        out = torch.empty(x.shape, dtype=torch.float64)
        for k, part in enumerate(self.parts):
            rows = y == k
            out[rows] = part(x[rows], t[rows]).double()
        return out


class AffineGenerator(nn.Module):
    """x0 prediction a z + m: a one-step generator of N(m, a^2 I)."""

    def __init__(self):
        super().__init__()
        self.a, self.m = nn.Parameter(torch.ones(())), nn.Parameter(torch.zeros(SHAPE))

    def forward(self, z, t, y=None):
        return self.a * z + self.m


class GaussianFamily(nn.Module):
    """The exact x0 prediction of N(m, s^2 I) with learnable m and s: a fake denoiser that can hold the generator's
    distribution exactly."""

    def __init__(self, mean):
        super().__init__()
        self.m, self.log_s = nn.Parameter(mean.clone().float()), nn.Parameter(torch.tensor(math.log(STD)))
        self.register_buffer("abar", Schedule.from_diffusers(SCHEDULE).alphas_cumprod.float())

    def forward(self, x, t, y=None):
        abar = self.abar[t].view(-1, *[1] * (x.dim() - 1))
        var = self.log_s.exp() ** 2
        return self.m + abar.sqrt() * var / (abar * var + 1 - abar) * (x - abar.sqrt() * self.m)


def gaussian_run(method, guidance_scale=1.0, guidance_range=None, train_steps=1000, regression_weight=0.0,
                 pair_map=None):
    """pair_map(mean) -> (m, a): DMD's regression pairs x = m + a z (exact ODE pairs of N(mean, STD^2): (mean,
    STD)), with regression_weight."""
    g = torch.Generator().manual_seed(0)
    cond_mean, uncond_mean = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(2))
    settings = ScoreDistillation(method=method, guidance_scale=guidance_scale, guidance_range=guidance_range,
                                 train_steps=train_steps, batch_size=64, lr=2e-2, fake_lr=5e-2,
                                 regression_weight=regression_weight)
    student, teacher = AffineGenerator(), Gaussians([cond_mean, uncond_mean])
    pairs = None
    if regression_weight:
        noise = torch.randn(200, *SHAPE, generator=g)
        m, a = pair_map(uncond_mean + guidance_scale * (cond_mean - uncond_mean))
        pairs = TeacherPairs(noise, (m + a * noise).float(), {"y": torch.zeros(200, dtype=torch.long)})
    result = distill_one_step(teacher, SHAPE, {"y": torch.zeros(1, dtype=torch.long)},
                              {"y": torch.ones(1, dtype=torch.long)}, settings, schedule=SCHEDULE, student=student,
                              fake=GaussianFamily(cond_mean), generator=torch.Generator().manual_seed(1),
                              progress=False, regression=pairs)
    assert student.a.item() == 1.0 and not student.m.any()  # the module given is not changed
    return result, cond_mean, uncond_mean


@pytest.mark.parametrize("method, guidance_scale", [("dmd", 1.0), ("vsd", 1.0), ("sid", 1.0), ("dmd", 2.0),
                                                    ("vsd", 2.0), ("sid", 2.0)])
def test_generator_reaches_the_teachers_distribution(method, guidance_scale):
    """Gaussian classes, the exact denoiser as teacher, an affine generator starting at N(0, I) and a fake denoiser
    of the Gaussian family: the generator must end at the guided teacher's distribution, N(m_u + g (m_c - m_u),
    STD^2) (guidance between two Gaussians of one variance is a Gaussian), mean and std within 2%."""
    result, cond_mean, uncond_mean = gaussian_run(method, guidance_scale)
    target = uncond_mean + guidance_scale * (cond_mean - uncond_mean)
    generator = result.student
    assert float((generator.m.double() - target).norm() / target.norm()) < 0.02
    assert abs(float(generator.a) - STD) < 0.02 * STD
    assert len(result.losses) == len(result.fake_losses) == 1000
    assert all(map(math.isfinite, result.losses + result.fake_losses))


@pytest.mark.parametrize("method", ["dmd", "sid"])
def test_regression_pairs_pull_the_generator(method):
    """DMD's regression loss beside the score pull, guided at 2. Exact ODE pairs of the guided Gaussian (x = m + STD
    z) keep the fixed point: the generator ends at it (mean and std within 2%). Pairs of another map (x = 0.5 m +
    0.3 z) at weight 50 move it there (within 5%): the term acts."""
    result, cond_mean, uncond_mean = gaussian_run(method, 2.0, regression_weight=0.25, pair_map=lambda m: (m, STD))
    target = uncond_mean + 2.0 * (cond_mean - uncond_mean)
    assert float((result.student.m.double() - target).norm() / target.norm()) < 0.02
    assert abs(float(result.student.a) - STD) < 0.02 * STD
    result, _, _ = gaussian_run(method, 2.0, regression_weight=50.0, pair_map=lambda m: (0.5 * m, 0.3))
    assert float((result.student.m.double() - 0.5 * target).norm() / (0.5 * target).norm()) < 0.05
    assert abs(float(result.student.a) - 0.3) < 0.05 * 0.3


def test_teacher_pairs_are_the_teachers_samples():
    """teacher_pairs in chunks of 3 gives pydiff.sample's output on all rows at once, with the conditions kept."""
    model = tiny_dit()
    noise, y = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(5)), torch.arange(7) % 3
    pairs = teacher_pairs(model, noise, {"y": y}, {"y": torch.full((7,), 3)}, 2.0, steps=4, batch=3, progress=False)
    with torch.no_grad():
        whole = pydiff.sample(model, noise, sampler="dpmpp_2m", steps=4, guidance_scale=2.0, cond={"y": y},
                              uncond={"y": torch.full((7,), 3)})
    torch.testing.assert_close(pairs.samples, whole, rtol=1e-5, atol=1e-5)
    assert pairs.noise is noise and torch.equal(pairs.cond["y"], y)
    with pytest.raises(ValueError, match=r"noise must be a non-empty floating-point tensor"):
        teacher_pairs(model, torch.ones(0, 1, 8, 8))
    with pytest.raises(ValueError, match=r"cond\['y'\] must be a tensor with one row per noise row \(7, ...\)"):
        teacher_pairs(model, noise, {"y": y[:5]})


def test_guidance_range_pulls_towards_the_mean_scale():
    """SNOOPI's random teacher scale in [1, 3], VSD weighting (the same for every scale): the pull averages over the
    scales, so the generator, not told its scale, ends at the teacher's distribution at the mean scale 2."""
    result, cond_mean, uncond_mean = gaussian_run("vsd", guidance_range=(1.0, 3.0))
    target = uncond_mean + 2.0 * (cond_mean - uncond_mean)
    assert float((result.student.m.double() - target).norm() / target.norm()) < 0.02
    assert abs(float(result.student.a) - STD) < 0.02 * STD


class GaussianFamilyFeatures(GaussianFamily):
    """GaussianFamily with a layer for DMD2's discriminator: a learned projection of the whole noised sample,
    (B, 1, 16), beside the prediction (which does not use it)."""

    def __init__(self, mean):
        super().__init__(mean)
        self.lift = nn.Linear(mean.numel(), 16)

    def forward(self, x, t, y=None):
        self.lift(x.flatten(1)[:, None].float())
        return super().forward(x, t, y)


def gan_run(real_scale, gan_weight):
    """DMD guided at 1 towards the exact Gaussian N(m, STD^2), 400 steps, with DMD2's GAN on 500 real samples of
    N(real_scale m, STD^2): the relative distance of the generator's mean to m and to real_scale m, its std, and the
    discriminator's mean loss over the last 50 steps."""
    g = torch.Generator().manual_seed(0)
    mean, uncond_mean = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(2))
    real = (real_scale * mean + STD * torch.randn(500, *SHAPE, generator=g, dtype=torch.float64)).float()
    settings = ScoreDistillation(guidance_scale=1.0, train_steps=400, batch_size=64, lr=2e-2, fake_lr=5e-2,
                                 gan_weight=gan_weight, gan_layer="lift")
    result = distill_one_step(Gaussians([mean, uncond_mean]), SHAPE, {"y": torch.zeros(1, dtype=torch.long)}, None,
                              settings, schedule=SCHEDULE, student=AffineGenerator(),
                              fake=GaussianFamilyFeatures(mean), generator=torch.Generator().manual_seed(1),
                              progress=False, real=RealSamples(real, {"y": torch.zeros(500, dtype=torch.long)}))
    m = result.student.m.double()
    assert len(result.gan_losses) == 400 and result.provenance()["final_gan_loss"] == result.gan_losses[-1]
    return (float((m - mean).norm() / mean.norm()), float((m - real_scale * mean).norm() / (real_scale * mean).norm()),
            float(result.student.a), sum(result.gan_losses[-50:]) / 50)


def test_gan_pulls_the_generator_to_the_real_data():
    """DMD2's GAN beside DMD's pull to the exact Gaussian teacher. Real data drawn from the teacher's distribution:
    the generator still ends at it (mean and std within 2%) and the discriminator at chance at the end (its loss
    softplus(l_fake) + softplus(-l_real) at 2 ln 2). Real data at half the teacher's mean: at GAN weight 0.01 the
    generator stays with the teacher (within 3%) and the discriminator tells the two apart (loss < 1.2); at weight
    10 the GAN wins and the generator moves most of the way to the data (mean within 20% of it, 80% away from the
    teacher's)."""
    to_teacher, _, std, disc = gan_run(1.0, 1.0)
    assert to_teacher < 0.02 and abs(std - STD) < 0.02 * STD and abs(disc - 2 * math.log(2)) < 0.02
    to_teacher, to_real, _, disc = gan_run(0.5, 0.01)
    assert to_teacher < 0.03 and disc < 1.2
    to_teacher, to_real, _, disc = gan_run(0.5, 10.0)
    assert to_real < 0.2 and to_teacher > 0.4


def test_gan_discriminator_reads_the_fakes_layer():
    """The default layer: a DiT's middle block (a diffusers UNet's mid_block); a named one must exist. The head
    takes tokens (B, N, C) and maps (B, C, H, W) alike, one logit per sample; on a tiny DiT the run trains it,
    leaves the teacher's weights and repeats exactly from the same generator."""
    teacher = tiny_dit()
    deeper = DiT(DiTConfig(sample_size=8, patch_size=4, width=32, depth=3, num_heads=2, num_classes=3))
    assert gan_layer_name(teacher, None) == "blocks.0" and gan_layer_name(deeper, None) == "blocks.1"
    assert gan_layer_name(deeper, "blocks.2.attn") == "blocks.2.attn"
    with pytest.raises(ValueError, match="gan_layer 'blocks.7' is not a submodule of the fake denoiser"):
        gan_layer_name(deeper, "blocks.7")
    with pytest.raises(ValueError, match="gan_layer must name the fake denoiser's layer"):
        gan_layer_name(nn.Linear(2, 2), None)
    joint = nn.Module()
    joint.forward = lambda x: (x[:, :3], x)  # SD3's and Flux's blocks return (text, image): the image is read
    features, x = _Features(joint), torch.randn(2, 8, 4)
    joint(x)
    assert features.take() is x and features.value is None
    head = Discriminator(6)
    tokens = torch.randn(3, 5, 6)
    maps = tokens.transpose(1, 2).reshape(3, 6, 5, 1)
    torch.testing.assert_close(head(maps), head(tokens))
    torch.testing.assert_close(head(tokens[1:2]), head(tokens)[1:2])
    assert head(tokens).shape == (3,)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    real = RealSamples(torch.randn(9, 1, 8, 8), {"y": torch.arange(9) % 3})
    runs = []
    for seed in (7, 8):  # the global RNG differs; the head's initial weights are drawn by the run's generator
        torch.manual_seed(seed)
        runs.append(distill_one_step(teacher, (1, 8, 8), {"y": torch.arange(3)}, {"y": torch.full((3,), 3)},
                                     ScoreDistillation(train_steps=2, batch_size=4, gan_weight=0.5), progress=False,
                                     real=real))
    result = runs[0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0].student.parameters(), runs[1].student.parameters()))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert len(result.gan_losses) == 2 and all(math.isfinite(v) for v in result.gan_losses + result.losses)
    assert result.provenance()["settings"]["gan_weight"] == 0.5


class UNetDenoiser(nn.Module):
    """A tiny diffusers UNet2DModel as ``denoiser(x, t, y)`` (the labels ignored)."""

    def __init__(self):
        from diffusers import UNet2DModel

        super().__init__()
        torch.manual_seed(0)
        self.unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                up_block_types=("UpBlock2D",) * 2)
        self.scheduler_config = SCHEDULE

    def forward(self, x, t, y=None):
        return self.unet(x, t).sample


def test_gan_reads_a_diffusers_unets_bottleneck():
    """A teacher wrapping a diffusers UNet: the discriminator reads its mid_block (found inside the wrapper, (B, C,
    H, W) maps), and a run with the GAN trains the generator and the fake on it."""
    teacher = UNetDenoiser()
    assert gan_layer_name(teacher, None) == "unet.mid_block"
    real = RealSamples(torch.randn(6, 1, 8, 8), {"y": torch.arange(6) % 3})
    result = distill_one_step(teacher, (1, 8, 8), {"y": torch.arange(3)}, None,
                              ScoreDistillation(guidance_scale=1.0, train_steps=2, batch_size=4, gan_weight=0.1,
                                                lr=1e-2), progress=False, real=real)
    assert any(not torch.equal(a, b) for a, b in zip(teacher.parameters(), result.student.parameters()))
    assert len(result.gan_losses) == 2 and all(math.isfinite(v) for v in result.gan_losses)


def tiny_dit(prediction_type="epsilon", seed=0):
    torch.manual_seed(seed)
    model = DiT(DiTConfig(sample_size=8, patch_size=4, width=32, depth=1, num_heads=2, num_classes=3),
                scheduler_config={**SCHEDULE, "prediction_type": prediction_type})
    for p in model.parameters():  # DiT zero-inits its output layer; random everywhere so predictions differ
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.mark.parametrize("prediction_type, timestep", [("epsilon", None), ("v_prediction", None), ("sample", None),
                                                      ("epsilon", 500), ("v_prediction", 37)])
def test_one_step_config_is_one_ddim_step_of_diffusers(prediction_type, timestep):
    """The generator's scheduler config in diffusers' DDIMScheduler takes one step from its timestep (default the
    last train timestep) to x0: the same numbers as ``pydiff.sample(sampler="one_step")`` on it."""
    from diffusers import DDIMScheduler

    model = tiny_dit(prediction_type)
    config = one_step_scheduler_config(model.scheduler_config, timestep)
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [999 if timestep is None else timestep]
    z, y = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.arange(5) % 3
    with torch.no_grad():
        expected = scheduler.step(model(z, scheduler.timesteps[0], y=y), scheduler.timesteps[0], z).prev_sample
        ours = pydiff.sample(model, z, sampler="one_step", steps=1, schedule=config, cond={"y": y})
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_distillation_trains_a_copy(prediction_type):
    """Two steps on a tiny DiT, guided with a scale per sample: the student and the fake are trained copies, the
    teacher keeps its weights, the student samples in one step with its config."""
    teacher = tiny_dit(prediction_type)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    settings = ScoreDistillation(train_steps=2, batch_size=4, guidance_range=(1.0, 3.0), lr=1e-2)
    result = distill_one_step(teacher, (1, 8, 8), {"y": torch.arange(3)}, {"y": torch.full((3,), 3)}, settings,
                              progress=False)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(teacher.parameters(), result.student.parameters()))
    assert result.student.scheduler_config == one_step_scheduler_config(teacher.scheduler_config)
    assert not result.student.training and all(math.isfinite(v) for v in result.losses + result.fake_losses)
    with torch.no_grad():
        x = pydiff.sample(result.student, torch.randn(3, 1, 8, 8), sampler="one_step", steps=1,
                          cond={"y": torch.arange(3)})
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    assert result.provenance()["method"].startswith("distribution matching")


class FixedPrediction(nn.Module):
    """An x0 prediction that ignores x_t: c[y] (a denoiser whose output has no gradient in its input)."""

    def __init__(self, seed):
        super().__init__()
        self.c = nn.Parameter(torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x, t, y=None):
        return self.c[y]


def test_sid_is_dmd_when_the_denoisers_ignore_their_input(monkeypatch):
    """SiD's generator gradient in x is DMD's weight (x0_fake - x0_real) plus the terms through the denoisers'
    inputs: with denoisers constant in x_t those vanish, so one plain gradient step of each (SGD in place of AdamW,
    whose first step sees only the gradient's sign) moves the generator alike; with the exact Gaussian teacher they
    do not."""
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr))
    cond, uncond = {"y": torch.arange(2)}, {"y": torch.full((2,), 2)}

    def one_step(method, teacher):
        settings = ScoreDistillation(method=method, train_steps=1, batch_size=8, lr=1e-2, fake_updates=1, warmup=0)
        return distill_one_step(teacher, SHAPE, cond, uncond, settings, schedule=SCHEDULE, student=AffineGenerator(),
                                fake=FixedPrediction(1), generator=torch.Generator().manual_seed(3),
                                progress=False).student

    fixed = FixedPrediction(0)
    dmd, sid = one_step("dmd", fixed), one_step("sid", fixed)
    assert not torch.equal(dmd.m, AffineGenerator().m)
    torch.testing.assert_close(sid.m, dmd.m, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sid.a, dmd.a, rtol=1e-6, atol=1e-7)
    exact = Gaussians([torch.randn(SHAPE, dtype=torch.float64) for _ in range(3)])
    assert not torch.allclose(one_step("sid", exact).m, one_step("dmd", exact).m, rtol=1e-3, atol=0)


class Recording(nn.Module):
    """A copy of ``model`` that hands ``record`` each call's timesteps and whether gradients were on (``record``, a
    bound method, is shared by the deep copies distillation makes)."""

    def __init__(self, model, record):
        super().__init__()
        self.inner, self.record = copy.deepcopy(model), record

    def forward(self, x, t, **cond):
        self.record((t.flatten().tolist(), torch.is_grad_enabled()))
        return self.inner(x, t, **cond)


def test_generator_timestep_is_where_the_generator_is_called():
    """generator_timestep=500: training calls the student at t = 500 on pure noise, and its scheduler config makes
    pydiff.sample call it there too."""
    teacher, seen = tiny_dit(), []
    settings = ScoreDistillation(train_steps=1, batch_size=4, fake_updates=1, generator_timestep=500)
    result = distill_one_step(teacher, (1, 8, 8), {"y": torch.arange(3)}, {"y": torch.full((3,), 3)}, settings,
                              student=Recording(teacher, seen.append), progress=False)
    assert seen[0] == ([500] * 4, True)
    assert result.student.scheduler_config == one_step_scheduler_config(teacher.scheduler_config, 500)
    seen.clear()
    with torch.no_grad():
        pydiff.sample(result.student, torch.randn(2, 1, 8, 8), sampler="one_step", steps=1, cond={"y": torch.arange(2)})
    assert seen == [([500, 500], False)]
    with pytest.raises(ValueError, match=r"generator_timestep must be in \[0, 999\]"):
        distill_one_step(teacher, (1, 8, 8), {"y": torch.arange(3)}, {"y": torch.full((3,), 3)},
                         ScoreDistillation(train_steps=1, batch_size=4, generator_timestep=1000), progress=False)


class StepAffine(nn.Module):
    """A two-step generator's x0 prediction a_k x + m_k, k = 0 at t = 999, else 1."""

    def __init__(self):
        super().__init__()
        self.a, self.m = nn.Parameter(torch.ones(2)), nn.Parameter(torch.zeros(2, *SHAPE))

    def forward(self, x, t, y=None):
        k = (t != 999).long()
        return self.a[k].view(-1, *[1] * len(SHAPE)) * x + self.m[k]


@pytest.mark.parametrize("method", ["dmd", "vsd"])
def test_multi_step_generator_matches_the_teacher_over_its_steps(method):
    """DMD2's two-step generator (t = 999, 499) on the exact Gaussian teacher: its outputs, the steps pooled half
    and half as training draws them (the second step's input from the first's output), match the teacher's
    distribution (mean and std within 5%; 3.1% and 3.4% at worst here, where a one-step generator gets within 2%).
    That is what the objective pins: the fake denoiser models the pooled outputs. Each step's own is not pinned:
    here the first collapses towards the mean and the second makes the spread (README)."""
    from pydiff.distill.common import Pairs
    from pydiff.distill.score import _Generator

    g = torch.Generator().manual_seed(0)
    mean, uncond_mean = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(2))
    settings = ScoreDistillation(method=method, guidance_scale=1.0, train_steps=1000, batch_size=64, lr=2e-2,
                                 fake_lr=5e-2, generator_steps=2)
    result = distill_one_step(Gaussians([mean, uncond_mean]), SHAPE, {"y": torch.zeros(1, dtype=torch.long)}, None,
                              settings, schedule=SCHEDULE, student=StepAffine(), fake=GaussianFamily(mean),
                              generator=torch.Generator().manual_seed(1), progress=False)
    pairs = Pairs(Schedule.from_diffusers(SCHEDULE), 1, torch.device("cpu"))
    steps = _Generator(pairs, "sample", [999, 499], torch.device("cpu"), torch.Generator())
    z, n = torch.randn(2, 20000, *SHAPE, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():  # each step's outputs from the same noise, pooled half and half as training draws them
        first = steps.at(result.student, z, 0, {})
        alpha, sigma = pairs.coefficients(torch.full((len(z),), 499), z)
        pooled = torch.cat([first, steps.at(result.student, alpha * first + sigma * n, 1, {})]).double()
    assert float((pooled.mean(0) - mean).norm() / mean.norm()) < 0.05
    assert abs(float(pooled.std(0).mean()) - STD) < 0.05 * STD


def test_multi_step_generator_simulates_its_steps_and_samples_on_them():
    """generator_steps=4: each training draw calls the student at 999, 749, ... up to its step (DMD2's backward
    simulation, the steps before without gradients), and the student's LCMScheduler config makes diffusers and
    pydiff.sample(sampler="lcm") call it at DMD2's 999, 749, 499, 249."""
    from diffusers import LCMScheduler

    teacher, seen = tiny_dit(), []
    settings = ScoreDistillation(train_steps=6, batch_size=4, fake_updates=1, generator_steps=4)
    result = distill_one_step(teacher, (1, 8, 8), {"y": torch.arange(3)}, {"y": torch.full((3,), 3)}, settings,
                              student=Recording(teacher, seen.append), progress=False)
    chains, grid = [], [999, 749, 499, 249]
    # a chain starts at 999; its last call (the step trained) alone has gradients
    for t, grad in ((ts[0], grad) for ts, grad in seen):
        if t == 999:
            chains.append([])
        chains[-1].append((t, grad))
    chains = [c for c in chains if c[-1][1]]  # (the fake updates' fresh draws run without gradients)
    assert len(chains) == 6 and len({len(c) for c in chains}) > 1
    for chain in chains:
        assert [t for t, _ in chain] == grid[:len(chain)] and not any(grad for _, grad in chain[:-1])
    scheduler = LCMScheduler.from_config(result.student.scheduler_config)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == grid
    seen.clear()
    with torch.no_grad():
        pydiff.sample(result.student, torch.randn(2, 1, 8, 8), sampler="lcm", steps=4, cond={"y": torch.arange(2)})
    assert [ts[0] for ts, _ in seen] == grid
    with pytest.raises(ValueError, match="generator_steps \(1001\) cannot exceed the schedule's 1000"):
        distill_one_step(teacher, (1, 8, 8), {"y": torch.arange(3)}, {"y": torch.full((3,), 3)},
                         ScoreDistillation(train_steps=1, batch_size=4, generator_steps=1001), progress=False)


def test_sid_differentiates_through_the_denoisers_only_into_the_generator():
    """SiD's loss runs back through the teacher and the fake at x_t: the generator learns, the teacher's and the
    fake's gradients are not touched (a teacher whose weights require grad keeps .grad None)."""
    teacher = tiny_dit().requires_grad_(True)
    settings = ScoreDistillation(method="sid", train_steps=2, batch_size=4, lr=1e-2, fake_updates=1)
    result = distill_one_step(teacher, (1, 8, 8), {"y": torch.arange(3)}, {"y": torch.full((3,), 3)}, settings,
                              progress=False)
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(teacher.parameters(), result.student.parameters()))
    assert all(math.isfinite(v) for v in result.losses + result.fake_losses)
    assert result.provenance()["method"].startswith("score identity")
    assert result.provenance()["settings"]["sid_alpha"] == 1.2


def test_bad_settings():
    for kwargs, match in [({"method": "lcm"}, "method"), ({"train_steps": 0}, "train_steps"),
                          ({"fake_updates": 0}, "fake_updates"), ({"batch_size": 2.5}, "batch_size"),
                          ({"warmup": -1}, "warmup"), ({"lr": 0.0}, "lr"), ({"fake_lr": float("inf")}, "fake_lr"),
                          ({"guidance_scale": -1.0}, "guidance_scale"), ({"guidance_range": (2.0, 1.0)},
                                                                         "guidance_range"),
                          ({"t_min": 0.5, "t_max": 0.4}, "t_min and t_max"), ({"t_max": 1.5}, "t_min and t_max"),
                          ({"method": "sid", "sid_alpha": float("nan")}, "sid_alpha must be a finite number"),
                          ({"method": "sid", "sid_alpha": True}, "sid_alpha must be a finite number"),
                          ({"method": "dmd", "sid_alpha": 1.0}, "sid_alpha applies to method 'sid' only"),
                          ({"regression_weight": -0.1}, "regression_weight must be a finite number >= 0"),
                          ({"generator_timestep": -1}, "generator_timestep must be None or an int >= 0"),
                          ({"generator_timestep": 500.0}, "generator_timestep must be None or an int >= 0"),
                          ({"gan_weight": -1.0}, "gan_weight must be a finite number >= 0"),
                          ({"gan_weight": float("nan")}, "gan_weight must be a finite number >= 0"),
                          ({"gan_weight": 0.1, "gan_disc_weight": 0.0}, "gan_disc_weight must be a finite number > 0"),
                          ({"gan_disc_weight": 0.1}, "gan_disc_weight and gan_layer apply with gan_weight > 0"),
                          ({"gan_layer": "blocks.0"}, "gan_disc_weight and gan_layer apply with gan_weight > 0"),
                          ({"gan_weight": 0.1, "gan_layer": ""}, "gan_layer must be None or a submodule's name"),
                          ({"generator_steps": 0}, "generator_steps must be an int >= 1"),
                          ({"generator_steps": 2.0}, "generator_steps must be an int >= 1"),
                          ({"generator_steps": 4, "generator_timestep": 500},
                           "generator_timestep applies to a one-step generator")]:
        with pytest.raises(ValueError, match=match):
            ScoreDistillation(**kwargs)


def test_bad_inputs():
    model = tiny_dit()
    cond, uncond = {"y": torch.arange(3)}, {"y": torch.full((3,), 3)}
    pairs = TeacherPairs(torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8), {"y": torch.arange(5) % 3})
    regress = ScoreDistillation(train_steps=2, batch_size=4, regression_weight=0.25)
    real = RealSamples(torch.randn(6, 1, 8, 8), {"y": torch.arange(6) % 3})
    gan = ScoreDistillation(train_steps=2, batch_size=4, gan_weight=0.1)
    cases = [
        (dict(teacher=lambda x, t, y: x), TypeError, "teacher must be an nn.Module unless"),
        (dict(shape=()), ValueError, "shape must be one sample's shape"),
        (dict(shape=(1, 0, 8)), ValueError, "shape must be one sample's shape"),
        (dict(shape="1,8,8"), ValueError, "shape must be one sample's shape"),
        (dict(cond={"y": torch.arange(3), "z": torch.ones(2)}), ValueError, r"cond\['z'\] must be a tensor with one "
                                                                            r"row per condition"),
        (dict(uncond=None), ValueError, "needs uncond"),
        (dict(settings={"train_steps": 1}), TypeError, "settings must be a ScoreDistillation"),
        (dict(student="model"), TypeError, "student must be an nn.Module"),
        (dict(fake=torch.nn.Linear(2, 2).double().to("meta")), ValueError, "the fake's parameters are on meta"),
        (dict(schedule={"_class_name": "FlowMatchEulerDiscreteScheduler"}), ValueError, "discrete VP schedule"),
        (dict(regression=pairs), ValueError, "regression was given but settings.regression_weight is 0"),
        (dict(settings=regress), TypeError, "regression_weight 0.25 needs regression=TeacherPairs"),
        (dict(settings=regress, regression=pairs._replace(samples=pairs.samples[:, :, :4])), ValueError,
         r"regression.samples must be a floating-point tensor \(P, 1, 8, 8\)"),
        (dict(settings=regress, regression=pairs._replace(cond={"z": pairs.cond["y"]})), ValueError,
         r"regression.cond must hold the keywords of cond \['y'\]"),
        (dict(real=real), ValueError, "real was given but settings.gan_weight is 0"),
        (dict(settings=gan), TypeError, "gan_weight 0.1 needs real=RealSamples, got NoneType"),
        (dict(settings=gan, real=(real.samples, real.cond)), TypeError, "needs real=RealSamples"),
        (dict(settings=gan, real=real._replace(samples=real.samples.long())), ValueError,
         r"real.samples must be a floating-point tensor \(P, 1, 8, 8\)"),
        (dict(settings=gan, real=real._replace(cond={"y": real.cond["y"][:4]})), ValueError,
         r"real.cond\['y'\] must be a tensor with one row per real row \(6, ...\)"),
        (dict(settings=gan, real=real._replace(cond={})), ValueError,
         r"real.cond must hold the keywords of cond \['y'\]"),
        (dict(settings=ScoreDistillation(train_steps=2, batch_size=4, gan_weight=0.1, gan_layer="nope"), real=real),
         ValueError, "gan_layer 'nope' is not a submodule"),
    ]
    for change, error, match in cases:
        kwargs = {**dict(teacher=model, shape=(1, 8, 8), cond=cond, uncond=uncond, settings=FAST, progress=False),
                  **change}
        with pytest.raises(error, match=match):
            distill_one_step(**kwargs)


def test_cli_writes_a_generator_that_samples(tmp_path, capsys):
    from pydiff.cli import main

    out = tmp_path / "gen.safetensors"
    argv = ["distill", "--method", "dmd", "--train-steps", "2", "--batch-size", "8", "--eval-samples", "20",
            "--eval-steps", "1,2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| 1 | student | one_step | 1 |" in printed and "| 2 | teacher | dpmpp_2m | 4 |" in printed
    assert "| 2 | student |" not in printed  # a one-step generator runs one step only
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["method"] == "dmd" and report["settings"]["train_steps"] == 2
    assert [(r["model"], r["steps"]) for r in report["evaluation"]] == [("student", 1), ("teacher", 1),
                                                                         ("teacher", 2)]
    assert report["evaluation"][0]["guidance_scale"] == 1.0  # guidance folded in
    student = load("digits", out)
    assert student.scheduler_config["_class_name"] == "DDIMScheduler"
    grid = tmp_path / "grid.png"
    assert student.provenance["teacher"] == "digits"
    # a student with the guidance folded in samples unguided unless told otherwise
    assert main(["sample", "--weights", str(out), "--sampler", "one_step", "--steps", "1", "--per-class", "1",
                 "--out", str(grid)]) == 0
    assert "one_step, 1 steps, guidance 1.0: 10 samples" in capsys.readouterr().out
    assert main(["sample", "--sampler", "ddim", "--steps", "1", "--per-class", "1", "--out", str(grid),
                 "--overwrite"]) == 0  # the bundled teacher: guided by default
    assert "ddim, 1 steps, guidance 1.5: 10 samples" in capsys.readouterr().out
    for bad, message in [(["--method", "dmd", "--loss", "huber"], "--loss applies to --method lcm or tcd"),
                         (["--method", "lcm", "--fake-updates", "3"],
                          "--fake-updates applies to --method dmd, vsd or sid"),
                         (["--method", "vsd", "--sid-alpha", "1"], "sid_alpha applies to method 'sid' only"),
                         (["--method", "tcd", "--generator-timestep", "500"],
                          "--generator-timestep applies to --method dmd, vsd or sid"),
                         (["--method", "vsd", "--t-range", "0.5,0.1"], "t_min and t_max")]:
        assert main(["distill", *bad, "--out", str(tmp_path / "x.safetensors")]) == 2
        assert message in capsys.readouterr().err


def test_cli_trains_the_gan_on_the_training_digits(tmp_path, capsys):
    """--gan-weight: DMD2's GAN on the bundled training digits, recorded in the file's provenance; its options are
    refused without it, with the consistency methods, and with a layer the model lacks, before any training."""
    from pydiff.cli import main

    quick = ["--train-steps", "2", "--batch-size", "8", "--eval-samples", "0"]
    out = tmp_path / "gan.safetensors"
    assert main(["distill", "--method", "dmd", "--gan-weight", "0.01", "--gan-layer", "blocks.3", *quick,
                 "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["gan_weight"] == 0.01 and report["settings"]["gan_layer"] == "blocks.3"
    assert math.isfinite(report["final_gan_loss"]) and load("digits", out).provenance["settings"]["gan_weight"] == 0.01
    capsys.readouterr()
    for bad, message in [(["--method", "lcm", "--gan-weight", "0.01"], "--gan-weight applies to --method dmd, vsd "
                                                                       "or sid"),
                         (["--method", "dmd", "--gan-disc-weight", "0.1"], "apply with gan_weight > 0"),
                         (["--method", "sid", "--gan-weight", "0.01", "--gan-layer", "blocks.9"],
                          "gan_layer 'blocks.9' is not a submodule")]:
        assert main(["distill", *bad, *quick, "--out", str(tmp_path / "x.safetensors")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x.safetensors").exists()


def test_cli_writes_a_few_step_generator(tmp_path, capsys):
    """--generator-steps 2: a two-step generator, compared at up to its 2 steps (sampler lcm) beside the teacher at
    every count asked for, whose file samples with pydiff sample --sampler lcm."""
    from pydiff.cli import main

    out = tmp_path / "k2.safetensors"
    assert main(["distill", "--method", "dmd", "--generator-steps", "2", "--train-steps", "2", "--batch-size", "8",
                 "--eval-samples", "20", "--eval-steps", "1,2,4", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [(r["model"], r["sampler"], r["steps"]) for r in report["evaluation"]] == [
        ("student", "lcm", 1), ("teacher", "dpmpp_2m", 1), ("student", "lcm", 2), ("teacher", "dpmpp_2m", 2),
        ("teacher", "dpmpp_2m", 4)]
    config = load("digits", out).scheduler_config
    assert config["_class_name"] == "LCMScheduler" and config["original_inference_steps"] == 2
    assert main(["sample", "--weights", str(out), "--sampler", "lcm", "--steps", "2", "--per-class", "1",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert "lcm, 2 steps, guidance 1.0: 10 samples" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["dmd", "sid", "gan"])
def test_gpu_one_step_distillation_follows_the_cpu_run(cuda_device, method):
    """The same draws (a CPU generator) on CUDA: the losses and the generator agree with the CPU run's (gan: DMD
    with DMD2's GAN on real samples)."""
    teacher = load("digits")
    gan = method == "gan"
    settings = ScoreDistillation(method="dmd" if gan else method, train_steps=3, batch_size=16,
                                 gan_weight=0.1 if gan else 0.0)
    images = torch.randn(40, 1, 16, 16, generator=torch.Generator().manual_seed(4)).clamp(-1, 1)
    runs = []
    for device in ("cpu", cuda_device):
        y = torch.arange(10, device=device)
        real = RealSamples(images.to(device), {"y": torch.arange(40, device=device) % 10}) if gan else None
        runs.append(distill_one_step(teacher.to(device), (1, 16, 16), {"y": y}, {"y": torch.full_like(y, 10)},
                                     settings, generator=torch.Generator().manual_seed(0), progress=False, real=real))
    cpu, gpu = runs
    assert max(abs(a - b) / abs(a) for a, b in zip(cpu.losses, gpu.losses)) < 0.05
    for a, b in zip(cpu.student.parameters(), gpu.student.parameters()):
        assert float((b.cpu().double() - a.double()).norm() / a.double().norm().clamp_min(1e-12)) < 1e-2


def test_cli_starts_a_generator_from_a_consistency_student(tmp_path, capsys):
    """--init: an lcm student as the start of a sid generator (the two-stage recipe, here with DMD's regression
    pairs); the file written names its start; files and options that cannot serve are refused by name before any
    training."""
    from pydiff.cli import main

    quick = ["--train-steps", "2", "--batch-size", "8", "--eval-samples", "0"]
    lcm, guided, gen = (tmp_path / f"{name}.safetensors" for name in ("lcm", "guided", "gen"))
    assert main(["distill", "--method", "lcm", *quick, "--out", str(lcm)]) == 0
    assert main(["distill", "--method", "lcm", "--guidance-range", "1,3", *quick, "--out", str(guided)]) == 0
    assert main(["distill", "--method", "sid", "--init", str(lcm), "--regression-weight", "0.25",
                 "--regression-pairs", "12", *quick, "--out", str(gen)]) == 0
    made = load("digits", gen)
    assert made.provenance["settings"]["regression_weight"] == 0.25
    assert made.provenance["init"] == str(lcm) and made.provenance["init_method"].startswith("latent consistency")
    assert made.scheduler_config["_class_name"] == "DDIMScheduler"
    start = load("digits", lcm)
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), made.parameters()))
    capsys.readouterr()
    for bad, message in [(["--method", "sid", "--init", str(tmp_path / "none.safetensors")], "--init: weights"),
                         (["--method", "vsd", "--init", str(guided)], "has guidance input; a one-step generator"),
                         (["--method", "lcm", "--guidance-range", "1,3", "--init", str(lcm)],
                          "has no guidance input; --guidance-range needs"),
                         (["--method", "tcd", "--init", str(guided)], "its guidance input needs --guidance-range"),
                         (["--method", "lcm", "--regression-weight", "1"],
                          "--regression-weight applies to --method dmd, vsd or sid"),
                         (["--method", "dmd", "--regression-weight", "1", "--regression-pairs", "0"],
                          "--regression-pairs must be >= 1"),
                         (["--method", "dmd", "--regression-pairs", "10"],
                          "--regression-pairs applies with --regression-weight > 0")]:
        assert main(["distill", *bad, *quick, "--out", str(tmp_path / "x.safetensors")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x.safetensors").exists()
