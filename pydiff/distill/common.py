"""What the distillation methods share: the schedule's tables, the teacher's guided prediction, the checks of their
arguments and the record of a run."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from pydiff.models.train import lr_at
from pydiff.schedules import Schedule

#: method name -> what it is, for the provenance written beside a student
METHOD_TITLES = {
    "lcm": "latent consistency distillation (arXiv:2310.04378)",
    "tcd": "trajectory consistency distillation (arXiv:2402.19159)",
    "dmd": "distribution matching distillation (arXiv:2311.18828), DMD2's two time-scale updates",
    "vsd": "variational score distillation (SwiftBrush)",
    "sid": "score identity distillation (SiD)",
}


@dataclass
class Distilled:
    """What a distillation returns: the student (eval mode; ``scheduler_config`` the diffusers scheduler config it
    samples with, when the teacher had one), the loss of every optimizer step (the student's; ``fake_losses``: the
    fake denoiser's, for the score methods; ``gan_losses``: DMD2's discriminator's, with its GAN), the wall time and
    the settings."""

    student: nn.Module
    losses: list = field(default_factory=list)
    seconds: float = 0.0
    settings: Any = None
    fake_losses: list = field(default_factory=list)
    gan_losses: list = field(default_factory=list)

    def provenance(self) -> dict:
        """JSON-ready record of how the student was made."""
        record = {"method": METHOD_TITLES[self.settings.method], "settings": asdict(self.settings),
                  "seconds": round(self.seconds, 1), "final_loss": self.losses[-1] if self.losses else None}
        if self.fake_losses:
            record["final_fake_loss"] = self.fake_losses[-1]
        if self.gan_losses:
            record["final_gan_loss"] = self.gan_losses[-1]
        return record


class Pairs:
    """The skipping grid's (t, s) pairs and the schedule's alpha/sigma at any train timestep, on one device."""

    def __init__(self, schedule: Schedule, original_steps: int, device: torch.device):
        abar = schedule.alphas_cumprod
        n_train = abar.shape[0]
        if original_steps > n_train:
            raise ValueError(f"original_steps ({original_steps}) cannot exceed the schedule's {n_train} train "
                             f"timesteps")
        self.skip = n_train // original_steps
        self.timesteps = torch.arange(1, original_steps + 1, device=device) * self.skip - 1
        self.alpha = abar.sqrt().to(device)
        self.sigma = (1 - abar).sqrt().to(device)

    def coefficients(self, t: torch.Tensor, like: torch.Tensor):
        shape = (-1,) + (1,) * (like.dim() - 1)
        return self.alpha[t].view(shape).to(like.dtype), self.sigma[t].view(shape).to(like.dtype)


def guided_prediction(teacher, x: torch.Tensor, t: torch.Tensor, cond: Mapping, uncond: Optional[Mapping],
                      guidance_scale) -> torch.Tensor:
    """The teacher's prediction at (x, t) with classifier-free guidance pred_u + g (pred_c - pred_u) (one call on
    cond and uncond joined along the batch; uncond None: the conditional prediction alone); guidance_scale a float
    or a tensor broadcasting against x (one scale per row)."""
    if uncond is None:
        return teacher(x, t, **cond)
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
    pred_c, pred_u = teacher(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
    return pred_u + guidance_scale * (pred_c - pred_u)


def check_batch(name: str, tensors, n: int, device: torch.device, rows: str = "data row") -> dict:
    """``tensors`` (keyword -> tensor with n rows on ``device``) as a dict; None -> {}."""
    if tensors is None:
        return {}
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{name} must be a mapping of keyword -> tensor, got {type(tensors).__name__}")
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != n:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}[{key!r}] must be a tensor with one row per {rows} ({n}, ...), got {shape}")
        if value.device != device:
            raise ValueError(f"{name}[{key!r}] is on {value.device}, the {rows}s on {device}")
    return dict(tensors)


def check_uncond(settings, cond: dict, uncond) -> Optional[dict]:
    """uncond when the settings guide (with the keywords of cond), else None."""
    if not settings.guided:
        return None
    if sorted(uncond) != sorted(cond):
        raise ValueError(f"guidance (scale {settings.guidance_scale}, range {settings.guidance_range}) needs uncond "
                         f"with the keywords of cond {sorted(cond)}, got {sorted(uncond)}")
    return uncond


def check_modules(device: torch.device, **modules) -> None:
    """Each given module's parameters on ``device``; the teacher callable, the others nn.Modules."""
    for name, module in modules.items():
        if module is None:
            continue
        if name == "teacher" and not callable(module):
            raise TypeError(f"teacher must be callable as teacher(x, t, **cond), got {type(module).__name__}")
        if name != "teacher" and not isinstance(module, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
        wrong = [p.device for p in module.parameters() if p.device != device] if isinstance(module, nn.Module) else []
        if wrong:
            raise ValueError(f"the {name}'s parameters are on {wrong[0]}, not on {device}")


def schedule_of(teacher: nn.Module, schedule) -> Schedule:
    """The teacher's schedule (``schedule`` or ``teacher.scheduler_config``), which must be discrete VP."""
    if schedule is None:
        schedule = getattr(teacher, "scheduler_config", None)
        if not schedule:
            raise ValueError("schedule must be given: the teacher has no scheduler_config")
    schedule = schedule if isinstance(schedule, Schedule) else Schedule.from_diffusers(schedule)
    if schedule.kind != "vp" or schedule.alphas_cumprod is None:
        raise ValueError(f"schedule must be a discrete VP schedule (alphas_cumprod), got a {schedule.kind!r} one")
    return schedule


#: the keys of a diffusers scheduler config that describe the noise schedule itself
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                 "rescale_betas_zero_snr")


def check_counts(settings, names) -> None:
    """Each named field an int >= 1; ``warmup`` an int >= 0."""
    for name in names:
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(settings.warmup, int) or isinstance(settings.warmup, bool) or settings.warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {settings.warmup!r}")


def check_positive(settings, names) -> None:
    """Each named field a finite number > 0."""
    for name in names:
        value = getattr(settings, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_guidance_range(value) -> Optional[tuple]:
    """None, or (low, high) as floats with 0 < low <= high."""
    if value is None:
        return None
    low_high = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(low_high) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                     for v in low_high) or low_high[0] > low_high[1]:
        raise ValueError(f"guidance_range must be (low, high) with 0 < low <= high, got {value!r}")
    return tuple(float(v) for v in low_high)


def draw_scales(guidance_range: tuple, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One guidance scale per row of ``like`` (B, ...), uniform in (low, high), drawn by ``generator`` (CPU), as
    (B,) in like's dtype and device."""
    low, high = guidance_range
    return (low + (high - low) * torch.rand(like.shape[0], generator=generator)).to(like.device, like.dtype)


def set_lr(opt: torch.optim.Optimizer, step: int, settings, peak: float) -> None:
    """The optimizer's rate at ``step``: linear warm-up over ``settings.warmup`` steps to ``peak``, then cosine decay
    (the bundled model's own `lr_at`) over ``settings.train_steps``."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, settings.train_steps, settings.warmup, peak)


def descend(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> None:
    """One optimizer step on ``loss``: gradients into ``params`` only (none into a teacher or fake the loss runs
    through), their norm clipped to 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def finish(student: nn.Module, teacher, scheduler_config, started: float, settings, losses: list,
           fake_losses: list = (), gan_losses: list = ()) -> Distilled:
    """The run's record: the student in eval mode without gradients, given ``scheduler_config(teacher's config)``
    when the teacher has one; the losses (device tensors) read once."""
    student.eval().requires_grad_(False)
    if getattr(teacher, "scheduler_config", None):
        student.scheduler_config = scheduler_config(teacher.scheduler_config)
    read = lambda values: torch.stack(list(values)).tolist() if len(values) else []  # noqa: E731
    return Distilled(student, read(losses), time.perf_counter() - started, settings, read(fake_losses),
                     read(gan_losses))
