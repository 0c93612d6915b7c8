"""One-step (and DMD2's few-step) generators by score distillation, data-free unless DMD2's GAN reads data.

The student is a copy of the teacher used as a generator: x = G(z) = x0(student(z, t_g)), t_g the last train
timestep T - 1 unless ``generator_timestep`` says otherwise, on standard-normal z (what ``pydiff.sample(student, z,
sampler="one_step", steps=1)`` computes with the student's scheduler config); with ``generator_steps`` K > 1, a
K-step generator sampled by ``sampler="lcm"`` (`ScoreDistillation`). It learns to make the teacher's
(guided) distribution from the difference of two denoisers at its own noised samples x_t = alpha_t x + sigma_t n:
the teacher's, whose x0 prediction points towards the data, and a "fake" denoiser trained alongside, by the
teacher's own denoising loss, on the generator's samples, whose prediction points towards what the generator makes
now. Each optimizer step of the generator descends

    0.5 || x - stopgrad(x - g) ||^2,   g = weight(t) (x0_fake(x_t, t) - x0_real(x_t, t)),

whose gradient with respect to x is g: the gradient of KL(generator || teacher) along the diffusion (the two scores'
difference). Then the fake denoiser takes ``fake_updates`` steps on fresh samples (DMD2's two time-scale rule).
No data is read: only the conditions to draw (e.g. the class labels).

method "dmd": distribution matching distillation (Yin et al. 2024, "One-step Diffusion with Distribution Matching
    Distillation", arXiv:2311.18828), weight = 1 / mean |x - x0_real| per sample, t uniform in [t_min, t_max] of
    the train timesteps; with DMD2's (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image
    Synthesis") fake updates per generator step, and DMD's regression loss when ``regression_weight`` > 0: the
    generator's sample from noise z pulled (mean squared error; DMD uses LPIPS) to the teacher's deterministic
    sample from the same z (`teacher_pairs`), which anchors it to the teacher's modes; and DMD2's GAN when
    ``gan_weight`` > 0 (any method): a classifier head (`Discriminator`) on the fake denoiser's features at one
    layer tells noised real data (`RealSamples`) from noised generator samples, trained with the fake denoiser
    (its loss plus ``gan_disc_weight`` x the head's non-saturating GAN loss, which also reaches the fake's trunk);
    the generator adds ``gan_weight`` x softplus(-logit) of its own noised samples, the gradient running through
    the fake denoiser and the head (their weights held). The GAN reads real data: the method is no longer
    data-free, and the generator can move past its teacher towards the data.
method "vsd": variational score distillation as SwiftBrush (Nguyen & Tran 2024, "SwiftBrush: One-Step
    Text-to-Image Diffusion Model with Variational Score Distillation") uses it, ProlificDreamer's weight
    w(t) = sigma_t^2 on eps_real - eps_fake, times d x_t / d x = alpha_t: in x0 terms weight = alpha_t^2 sigma_t.
method "sid": score identity distillation (Zhou et al. 2024, "Score identity Distillation: Exponentially Fast
    Distillation of Pretrained Diffusion Models for One-Step Generation"): the gradient also runs through both
    denoisers at x_t (their weights held), the generator descending
    mean(weight d (x0_real - x - sid_alpha d)), d = x0_real - x0_fake, with DMD's weight. With the denoisers held
    constant its gradient in x is DMD's g; through them it follows the model-based Fisher divergence SiD derives
    from Tweedie's formula. SiD's recipe: sid_alpha 1.2, one fake step per generator step.
guidance_range: SNOOPI's proper guidance (Nguyen et al. 2024, "SNOOPI: Supercharged One-step Diffusion
    Distillation with Proper Guidance", PG-SB): the teacher's guidance scale is drawn per sample in the range, which
    widens the distribution the generator is pulled towards and steadies training; the generator is not told it.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pydiff.ops import add_noise
from pydiff.schedules.prediction import convert_prediction

from .common import (SCHEDULE_KEYS, Distilled, Pairs, check_batch, check_counts, check_guidance_range, check_modules,
                     check_positive, check_uncond, descend, draw_scales, finish, guided_prediction, schedule_of,
                     set_lr)
from .consistency import _consistency, student_scheduler_config

METHODS = ("dmd", "vsd", "sid")
#: a multi-step generator's boundary scaling (LCM's, as its "lcm" sampler config says): c_skip < 1e-7 at t >= 1
LCM_TIMESTEP_SCALING = 10.0


@dataclass(frozen=True)
class ScoreDistillation:
    """Settings of `distill_one_step` (defaults: what ``pydiff distill --method dmd`` uses for the bundled digits
    model).

    method: "dmd", "vsd" or "sid" (the module docstring: how the two denoisers' difference is weighted and followed).
    guidance_scale: the teacher's classifier-free guidance g (pred_u + g (pred_c - pred_u)), folded into the
    generator; 1 needs no uncond. guidance_range: (low, high): the scale drawn per sample instead (SNOOPI's PG-SB).
    train_steps: generator steps; batch_size: samples per step (generator and fake alike); lr, fake_lr: AdamW peak
    rates of the generator and the fake denoiser (linear warm-up over ``warmup`` steps, then cosine decay to a
    tenth); fake_updates: fake steps per generator step (DMD2: 5). t_min, t_max: the noise levels the denoisers
    compare at, as fractions of the train timesteps (DMD: 0.02, 0.98). sid_alpha: method "sid"'s alpha (SiD:
    1.2; refused for the other methods unless left at its default). regression_weight: DMD's regression loss
    weight (DMD: 0.25), any method; > 0 needs `teacher_pairs` given to `distill_one_step`. generator_timestep:
    the train timestep t_g the generator is called at on pure noise (default None: the last, as DMD and SwiftBrush
    do). Its x0 = (z - sigma eps) / alpha multiplies an epsilon-predicting generator's error by sigma / alpha at
    t_g: 14.6 at the last timestep of SD's schedule, 1.6 at 500 (README: a grain that a lower t_g removes).
    gan_weight: DMD2's GAN loss weight on the generator (DMD2: 3e-3 on ImageNet; default 0, off); > 0 needs
    `RealSamples` given to `distill_one_step`. gan_disc_weight: the discriminator's loss weight in the fake
    denoiser's update (DMD2: 1e-2). gan_layer: the fake denoiser's submodule whose output the discriminator reads
    (a name of ``named_modules()``; None: the first ``mid_block`` at any depth, as DMD2 reads a UNet's bottleneck,
    else the middle one of the first ``blocks`` or ``transformer_blocks``). generator_steps: K > 1 makes DMD2's
    multi-step generator: it denoises at K timesteps, LCM's grid of K original steps (DMD2's 999, 749, 499, 249 for
    K = 4), re-noising its x0 between them, and samples with the "lcm" sampler at up to K steps; each training
    draw takes one step k (one per batch, as DMD2), its input made by the generator's own steps before k without
    gradients (DMD2's backward simulation). DMD's regression pairs train its first step.
    """

    method: str = "dmd"
    guidance_scale: float = 1.5
    guidance_range: Optional[Tuple[float, float]] = None
    train_steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-5
    fake_lr: float = 1e-4
    fake_updates: int = 5
    warmup: int = 20
    t_min: float = 0.02
    t_max: float = 0.98
    sid_alpha: float = 1.2
    regression_weight: float = 0.0
    generator_timestep: Optional[int] = None
    gan_weight: float = 0.0
    gan_disc_weight: float = 1e-2
    gan_layer: Optional[str] = None
    generator_steps: int = 1

    @property
    def guided(self) -> bool:
        """Whether the teacher runs classifier-free guidance (and needs uncond)."""
        return self.guidance_range is not None or self.guidance_scale != 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        check_counts(self, ("train_steps", "batch_size", "fake_updates", "generator_steps"))
        check_positive(self, ("guidance_scale", "lr", "fake_lr"))
        object.__setattr__(self, "guidance_range", check_guidance_range(self.guidance_range))
        if not (isinstance(self.t_min, (int, float)) and isinstance(self.t_max, (int, float))
                and 0.0 <= self.t_min <= self.t_max <= 1.0):
            raise ValueError(f"t_min and t_max must satisfy 0 <= t_min <= t_max <= 1, got {self.t_min!r}, "
                             f"{self.t_max!r}")
        if not isinstance(self.sid_alpha, (int, float)) or isinstance(self.sid_alpha, bool) or \
                not math.isfinite(self.sid_alpha):
            raise ValueError(f"sid_alpha must be a finite number, got {self.sid_alpha!r}")
        if self.generator_timestep is not None and (not isinstance(self.generator_timestep, int) or isinstance(
                self.generator_timestep, bool) or self.generator_timestep < 0):
            raise ValueError(f"generator_timestep must be None or an int >= 0, got {self.generator_timestep!r}")
        if self.generator_steps > 1 and self.generator_timestep is not None:
            raise ValueError("generator_timestep applies to a one-step generator (generator_steps 1); K steps take "
                             "LCM's grid")
        if self.method != "sid" and self.sid_alpha != ScoreDistillation.sid_alpha:
            raise ValueError(f"sid_alpha applies to method 'sid' only, not {self.method!r}")
        for name in ("regression_weight", "gan_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        check_positive(self, ("gan_disc_weight",))
        if self.gan_layer is not None and (not isinstance(self.gan_layer, str) or not self.gan_layer):
            raise ValueError(f"gan_layer must be None or a submodule's name, got {self.gan_layer!r}")
        if not self.gan_weight and (self.gan_layer is not None or
                                    self.gan_disc_weight != ScoreDistillation.gan_disc_weight):
            raise ValueError("gan_disc_weight and gan_layer apply with gan_weight > 0")


def one_step_scheduler_config(teacher_config: Mapping, timestep: Optional[int] = None) -> dict:
    """The teacher's noise schedule as a diffusers DDIMScheduler config whose single step is the generator's: it
    starts at train timestep ``timestep`` and lands on x0 (``set_alpha_to_one``). The last timestep (None): one
    "trailing" step; another: one "leading" step offset to it."""
    config = {k: v for k, v in teacher_config.items() if k in SCHEDULE_KEYS}
    last = config.get("num_train_timesteps", 1000) - 1
    spacing = {"timestep_spacing": "trailing", "steps_offset": 0} if timestep in (None, last) else \
        {"timestep_spacing": "leading", "steps_offset": int(timestep)}
    return {**config, "_class_name": "DDIMScheduler", **spacing, "set_alpha_to_one": True, "clip_sample": False}


class TeacherPairs(NamedTuple):
    """DMD's regression pairs: noise (P, ...), the teacher's deterministic sample from each (P, ...), and the
    conditions each was made with (keyword -> (P, ...))."""

    noise: torch.Tensor
    samples: torch.Tensor
    cond: dict


def teacher_pairs(teacher, noise: torch.Tensor, cond: Optional[Mapping] = None, uncond: Optional[Mapping] = None,
                  guidance_scale: float = 1.0, steps: int = 25, sampler: str = "dpmpp_2m", schedule=None,
                  batch: int = 250, progress: bool = True) -> TeacherPairs:
    """The teacher's samples from ``noise`` (P, *shape) by ``pydiff.sample`` (a deterministic sampler: DMD's pairs
    follow the teacher's ODE), ``batch`` at a time, with conditions ``cond`` (keyword -> (P, ...)) and
    classifier-free guidance against ``uncond`` at ``guidance_scale``: `distill_one_step`'s ``regression``."""
    from pydiff.samplers import sample

    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.dim() < 2 or not noise.numel():
        raise ValueError(f"noise must be a non-empty floating-point tensor (P, ...), got "
                         f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    count = noise.shape[0]
    cond = check_batch("cond", cond, count, noise.device, rows="noise row")
    uncond = check_batch("uncond", uncond, count, noise.device, rows="noise row") if uncond is not None else None
    out = []
    for i in tqdm(range(0, count, batch), desc="teacher pairs", disable=not progress, mininterval=5):
        rows = slice(i, i + batch)
        with torch.no_grad():
            out.append(sample(teacher, noise[rows], sampler=sampler, steps=steps, schedule=schedule,
                              guidance_scale=guidance_scale, cond={k: v[rows] for k, v in cond.items()},
                              uncond=None if uncond is None else {k: v[rows] for k, v in uncond.items()}))
    return TeacherPairs(noise, torch.cat(out), cond)


class RealSamples(NamedTuple):
    """DMD2's real data for its GAN: samples (R, ...) as the generator makes them (the teacher's data space) and the
    conditions of each (keyword -> (R, ...))."""

    samples: torch.Tensor
    cond: dict


def check_given(argument: str, given, kind: type, weight_name: str, settings: ScoreDistillation, shape: tuple,
                cond: dict, device: torch.device):
    """``given``, the argument that a positive ``settings.<weight_name>`` needs (None when the weight is 0): a
    ``kind`` (TeacherPairs or RealSamples) whose tensors are floating-point (P, *shape), P >= 1, on ``device`` and
    whose cond holds P rows of cond's keywords; returned with cond a dict."""
    weight = getattr(settings, weight_name)
    if weight == 0:
        if given is not None:
            raise ValueError(f"{argument} was given but settings.{weight_name} is 0")
        return None
    if not isinstance(given, kind):
        raise TypeError(f"{weight_name} {weight} needs {argument}={kind.__name__}, got {type(given).__name__}")
    fields = [name for name in kind._fields if name != "cond"]
    first = getattr(given, fields[0])
    count = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() else 0
    for field_name in fields:
        value = getattr(given, field_name)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (count, *shape) or \
                not value.is_floating_point() or value.device != device or not count:
            got = f"{tuple(value.shape)} {value.dtype} on {value.device}" if isinstance(value, torch.Tensor) else \
                type(value).__name__
            raise ValueError(f"{argument}.{field_name} must be a floating-point tensor (P, "
                             f"{', '.join(map(str, shape))}) with P >= 1 on {device}, got {got}")
    given_cond = check_batch(f"{argument}.cond", given.cond, count, device, rows=f"{argument} row")
    if sorted(given_cond) != sorted(cond):
        raise ValueError(f"{argument}.cond must hold the keywords of cond {sorted(cond)}, got {sorted(given_cond)}")
    return given._replace(cond=given_cond)


class Discriminator(nn.Module):
    """DMD2's GAN classifier head on a denoiser's features: (B, N, C) tokens or (B, C, *spatial) maps -> (B,)
    logits (real > 0), a per-position MLP (LayerNorm, C -> C, SiLU, C -> 1) averaged over the positions, so each
    patch votes (a PatchGAN read of the features)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, channels), nn.SiLU(),
                                 nn.Linear(channels, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = features if features.dim() == 3 else features.flatten(2).transpose(1, 2)
        return self.net(tokens.float()).mean((1, 2))


def gan_layer_name(fake: nn.Module, layer: Optional[str]) -> str:
    """The submodule the discriminator reads: ``layer``, or the default (`ScoreDistillation.gan_layer`), found at any
    depth (a wrapper's ``unet.mid_block``)."""
    if layer is None:
        named = list(fake.named_modules())
        for name, _ in named:
            if name.rsplit(".", 1)[-1] == "mid_block":
                return name
        for name, module in named:
            if name.rsplit(".", 1)[-1] in ("blocks", "transformer_blocks") and \
                    isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module):
                return f"{name}.{len(module) // 2}"
        raise ValueError(f"gan_layer must name the fake denoiser's layer for the discriminator: a "
                         f"{type(fake).__name__} has no mid_block, blocks or transformer_blocks")
    if layer not in dict(fake.named_modules()):
        raise ValueError(f"gan_layer {layer!r} is not a submodule of the fake denoiser ({type(fake).__name__})")
    return layer


class _Features:
    """The output of one submodule at its latest call (a forward hook): a tensor, or a tuple's or an output
    object's largest one (the image stream of SD3's and Flux's blocks, which return (text, image))."""

    def __init__(self, module: nn.Module):
        self.value = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, module, args, output):
        if not isinstance(output, torch.Tensor):
            values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) \
                else ()
            output = max((v for v in values if isinstance(v, torch.Tensor)), key=torch.Tensor.numel, default=output)
        self.value = output

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if not isinstance(value, torch.Tensor) or value.dim() < 3:
            raise ValueError(f"the GAN layer's output must be a (B, N, C) or (B, C, ...) tensor, got "
                             f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        return value


class _Generator:
    """The generator's output x = x0(student(x_t, t_k)) at its steps t_0 > ... > t_{K-1} (one step: t_g on pure
    noise, a DDIM jump to x0; K steps: LCM's consistency function c_skip x_t + c_out x0, as the "lcm" sampler reads
    the student), and the fake denoiser's training targets."""

    def __init__(self, pairs: Pairs, prediction_type: str, timesteps: Sequence[int], device: torch.device,
                 generator: torch.Generator):
        self.pairs, self.prediction_type, self.generator = pairs, prediction_type, generator
        self.timesteps = torch.tensor(timesteps, device=device)

    def at(self, student, x_t: torch.Tensor, k: int, cond: Mapping) -> torch.Tensor:
        """The student's output at step k from x_t."""
        t = self.timesteps[k].expand(x_t.shape[0])
        if len(self.timesteps) > 1:
            return _consistency(student, x_t, t, cond, self.pairs, self.prediction_type, LCM_TIMESTEP_SCALING)
        return self.x0(student(x_t, t, **cond), x_t, t)

    def __call__(self, student, z: torch.Tensor, cond: Mapping) -> torch.Tensor:
        """A sample from noise z at one of the steps, drawn per call (DMD2's backward simulation: the student's own
        earlier steps, without gradients, make that step's input x_{t_k} = alpha x0 + sigma n, as sampling does)."""
        steps = len(self.timesteps)
        k = int(torch.randint(steps, (), generator=self.generator)) if steps > 1 else 0
        x_t = z
        with torch.no_grad():
            for j in range(k):
                x0 = self.at(student, x_t, j, cond)
                alpha, sigma = self.pairs.coefficients(self.timesteps[j + 1].expand(z.shape[0]), z)
                x_t = alpha * x0 + sigma * torch.randn(z.shape, generator=self.generator).to(z.device, z.dtype)
        return self.at(student, x_t, k, cond)

    def x0(self, pred, x_t, t):
        alpha, sigma = self.pairs.coefficients(t, x_t)
        return convert_prediction(pred, x_t, alpha, sigma, self.prediction_type, "sample")

    def target(self, noise, x_t, t):
        """What the teacher's loss regresses at x_t = alpha x + sigma noise: noise in the prediction type."""
        alpha, sigma = self.pairs.coefficients(t, x_t)
        return convert_prediction(noise, x_t, alpha, sigma, "epsilon", self.prediction_type)


def distill_one_step(teacher, shape: Sequence[int], cond: Optional[Mapping] = None, uncond: Optional[Mapping] = None,
                     settings: ScoreDistillation = ScoreDistillation(), schedule=None,
                     student: Optional[nn.Module] = None, fake: Optional[nn.Module] = None,
                     generator: Optional[torch.Generator] = None, progress: bool = True,
                     regression: Optional[TeacherPairs] = None, real: Optional[RealSamples] = None) -> Distilled:
    """Distill ``teacher(x, t, **cond)`` into a one-step generator (module docstring); returns `Distilled` whose
    student samples with ``pydiff.sample(student, z, sampler="one_step", steps=1, cond=...)``.

    shape: one sample's shape (e.g. (1, 16, 16)). cond: keyword -> tensor (M, ...), the conditions each sample
    draws a row of (e.g. {"y": torch.arange(10)}); uncond: the same keywords for the unconditional pass (e.g. the
    null label), needed when the settings guide. schedule: the teacher's (default ``teacher.scheduler_config``), a
    discrete VP one. student, fake: the generator and the fake denoiser to start from, each predicting what the
    teacher predicts (default: copies of the teacher, which must then be an nn.Module). generator: draws conditions,
    timesteps and noise (a CPU generator). The modules trained are copies: the teacher's weights and given ones are
    not changed. Runs on the device of the teacher's parameters (CPU for a parameter-free callable). regression:
    `teacher_pairs`' output, needed when ``settings.regression_weight`` > 0 (``batch_size`` pairs a step). real:
    `RealSamples`, needed when ``settings.gan_weight`` > 0 (``batch_size`` a fake step); `Distilled.gan_losses`
    then holds the discriminator's loss of each step.
    """
    if (student is None or fake is None) and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module unless a student and a fake are given, got "
                        f"{type(teacher).__name__}")
    if not isinstance(settings, ScoreDistillation):
        raise TypeError(f"settings must be a ScoreDistillation, got {type(settings).__name__}")
    shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else shape
    if not isinstance(shape, tuple) or not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"shape must be one sample's shape, a non-empty sequence of ints >= 1, got {shape!r}")
    params = next(teacher.parameters(), None) if isinstance(teacher, nn.Module) else None
    device = params.device if params is not None else torch.device("cpu")
    check_modules(device, teacher=teacher, student=student, fake=fake)
    rows = next(iter(cond.values())).shape[0] if isinstance(cond, Mapping) and cond else 1
    cond = check_batch("cond", cond, rows, device, rows="condition")
    uncond = check_uncond(settings, cond, check_batch("uncond", uncond, rows, device, rows="condition"))
    regression = check_given("regression", regression, TeacherPairs, "regression_weight", settings, shape, cond, device)
    real = check_given("real", real, RealSamples, "gan_weight", settings, shape, cond, device)
    schedule = schedule_of(teacher, schedule)
    pairs = Pairs(schedule, 1, device)
    n_train = pairs.alpha.shape[0]
    t_low, t_high = round(settings.t_min * (n_train - 1)), round(settings.t_max * (n_train - 1))
    batch = settings.batch_size
    t_g = n_train - 1 if settings.generator_timestep is None else settings.generator_timestep
    if t_g >= n_train:
        raise ValueError(f"generator_timestep must be in [0, {n_train - 1}] (the schedule's train timesteps), got "
                         f"{t_g}")
    steps = settings.generator_steps
    if steps > n_train:
        raise ValueError(f"generator_steps ({steps}) cannot exceed the schedule's {n_train} train timesteps")
    # K steps: LCM's grid of K original steps, t_k = (K - k) (T // K) - 1 (DMD2's 999, 749, 499, 249 for K = 4)
    timesteps = [t_g] if steps == 1 else Pairs(schedule, steps, device).timesteps.flip(0).tolist()
    generator = generator or torch.Generator().manual_seed(0)
    make = _Generator(pairs, schedule.prediction_type, timesteps, device, generator)

    def draw(size: int = batch):
        """Condition rows, generator noise (float32 on the device)."""
        idx = torch.randint(0, rows, (size,), generator=generator).to(device)
        z = torch.randn((size, *shape), generator=generator).to(device)
        return idx, z, {k: v[idx] for k, v in cond.items()}

    def noised(x: torch.Tensor, low: int, high: int):
        t = torch.randint(low, high + 1, (x.shape[0],), generator=generator).to(device)
        noise = torch.randn(x.shape, generator=generator).to(device, x.dtype)
        return t, noise, add_noise(x, noise, pairs.alpha[t], pairs.sigma[t])[0]  # (SiD differentiates it)

    if isinstance(teacher, nn.Module):
        teacher.eval()
    student = copy.deepcopy(teacher if student is None else student).train().requires_grad_(True)
    fake = copy.deepcopy(teacher if fake is None else fake).train().requires_grad_(True)
    features = discriminator = None
    if real is not None:  # DMD2's GAN: a head on the fake's features, trained with the fake
        features = _Features(fake.get_submodule(gan_layer_name(fake, settings.gan_layer)))
        with torch.no_grad():
            fake(real.samples[:1], torch.full((1,), t_high, device=device), **{k: v[:1] for k, v in real.cond.items()})
        probe = features.take()
        with torch.random.fork_rng(devices=[]):  # its initial weights drawn by ``generator`` too
            torch.manual_seed(int(torch.randint(2 ** 62, (), generator=generator)))
            discriminator = Discriminator(probe.shape[-1] if probe.dim() == 3 else probe.shape[1]).to(device)
    student_params = list(student.parameters())
    fake_params = list(fake.parameters()) + (list(discriminator.parameters()) if discriminator is not None else [])
    opt = torch.optim.AdamW(student_params, lr=settings.lr, weight_decay=0.0)
    fake_opt = torch.optim.AdamW(fake_params, lr=settings.fake_lr, weight_decay=0.0)
    losses, fake_losses, gan_losses = [], [], []
    started = time.perf_counter()
    bar = tqdm(range(settings.train_steps), desc=f"score distillation ({settings.method})", disable=not progress,
               mininterval=5)
    for step in bar:
        set_lr(opt, step, settings, settings.lr)
        set_lr(fake_opt, step, settings, settings.fake_lr)
        idx, z, batch_cond = draw()
        x = make(student, z, batch_cond)
        scale = settings.guidance_scale
        if settings.guidance_range is not None:  # SNOOPI's PG-SB: the teacher's scale per sample
            scale = draw_scales(settings.guidance_range, x, generator).view(-1, *[1] * len(shape))
        follow = settings.method == "sid"  # SiD's gradient runs through both denoisers (their weights held)
        with torch.set_grad_enabled(follow):
            t, _, x_t = noised(x if follow else x.detach(), t_low, t_high)
            batch_uncond = None if uncond is None else {k: v[idx] for k, v in uncond.items()}
            x0_real = make.x0(guided_prediction(teacher, x_t, t, batch_cond, batch_uncond, scale), x_t, t)
            x0_fake = make.x0(fake(x_t, t, **batch_cond), x_t, t)
        with torch.no_grad():
            if settings.method == "vsd":
                alpha, sigma = pairs.coefficients(t, x)
                weight = alpha ** 2 * sigma
            else:
                dims = tuple(range(1, x.dim()))
                weight = 1.0 / (x.detach() - x0_real).abs().mean(dims, keepdim=True).clamp_min(1e-12)
        if follow:
            d = (x0_real - x0_fake).float()
            loss = (weight * d * ((x0_real - x).float() - settings.sid_alpha * d)).mean()
        else:
            goal = x.detach() - weight * (x0_fake - x0_real)
            loss = 0.5 * F.mse_loss(x.float(), goal.float())
        if regression is not None:  # DMD's pull of G(z) to the teacher's sample from z
            j = torch.randint(0, regression.noise.shape[0], (batch,), generator=generator).to(device)
            x_reg = make.at(student, regression.noise[j], 0, {k: v[j] for k, v in regression.cond.items()})
            loss = loss + settings.regression_weight * F.mse_loss(x_reg.float(), regression.samples[j].float())
        if discriminator is not None:  # DMD2: the generator's noised samples should read as real
            t, _, x_t = noised(x, 0, n_train - 1)
            fake(x_t, t, **batch_cond)
            loss = loss + settings.gan_weight * F.softplus(-discriminator(features.take())).mean()
        descend(opt, loss, student_params)
        fake_loss = gan_loss = 0.0
        for k in range(settings.fake_updates):  # the first on this step's samples, the others on fresh ones
            if k:
                _, z, batch_cond = draw()
                with torch.no_grad():
                    x = make(student, z, batch_cond)
            t, noise, x_t = noised(x.detach(), 0, n_train - 1)
            one = F.mse_loss(fake(x_t, t, **batch_cond).float(), make.target(noise, x_t, t).float())
            if discriminator is not None:  # the same call's features, then noised real data's
                logit_fake = discriminator(features.take())
                j = torch.randint(0, real.samples.shape[0], (batch,), generator=generator).to(device)
                t, _, x_t = noised(real.samples[j], 0, n_train - 1)
                fake(x_t, t, **{key: v[j] for key, v in real.cond.items()})
                classify = (F.softplus(logit_fake) + F.softplus(-discriminator(features.take()))).mean()
                one = one + settings.gan_disc_weight * classify
                gan_loss = gan_loss + classify.detach() / settings.fake_updates
            descend(fake_opt, one, fake_params)
            fake_loss = fake_loss + one.detach() / settings.fake_updates
        losses.append(loss.detach())
        fake_losses.append(fake_loss)
        if discriminator is not None:
            gan_losses.append(gan_loss)
        if step % 50 == 0:  # the only host reads of the loop
            shown = {"gan": f"{float(gan_loss):.3g}"} if discriminator is not None else {}
            bar.set_postfix(loss=f"{loss.item():.3g}", fake=f"{float(fake_loss):.3g}", **shown, refresh=False)
    if features is not None:
        features.handle.remove()
    config = functools.partial(one_step_scheduler_config, timestep=t_g) if steps == 1 else \
        functools.partial(student_scheduler_config, original_steps=steps, timestep_scaling=LCM_TIMESTEP_SCALING)
    return finish(student, teacher, config, started, settings, losses, fake_losses, gan_losses)
