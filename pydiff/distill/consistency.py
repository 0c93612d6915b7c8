"""Latent consistency distillation (Luo et al. 2023, "Latent Consistency Models", arXiv:2310.04378, Alg. 1) with
the teacher's classifier-free guidance folded into the student.

The student f(x_t, t) = c_skip(t) x_t + c_out(t) x0(model(x_t, t)) (`pydiff.samplers.lcm_boundary`) learns to map
every point of the teacher's guided probability-flow ODE to the same x0. Per optimizer step: draw x0 from the data
and t from the skipping grid t_n = (n + 1) k - 1 (k = num_train_timesteps // original_steps), noise x0 to x_t, take
one guided DDIM step of the teacher from t to s = max(t - k, 0), and pull f_student(x_t, t) towards
f_target(x_s, s), the target being an exponential moving average of the student. The student starts as a copy of
the teacher, keeps its architecture and prediction type, and samples with ``pydiff.sample(..., sampler="lcm")``
(one model call per step, no guidance pass) on the same skipping grid.

Trajectory consistency distillation (Zheng et al. 2024, "Trajectory Consistency Distillation", arXiv:2402.19159)
replaces the consistency function by a DDIM jump from t to a time m drawn in [0, s]: the student learns every
point-to-point map of the trajectory, not only point-to-x0, and samples with ``sampler="tcd"``.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pydiff.ops import add_noise
from pydiff.samplers import lcm_boundary
from pydiff.schedules import Schedule
from pydiff.schedules.prediction import convert_prediction

from .common import (SCHEDULE_KEYS, Distilled, Pairs, check_batch, check_counts, check_guidance_range, check_modules,
                     check_positive, check_uncond, descend, draw_scales, finish, guided_prediction, schedule_of, set_lr)

LOSSES = ("l2", "huber")
METHODS = ("lcm", "tcd")


@dataclass(frozen=True)
class ConsistencyDistillation:
    """Settings of `distill_consistency` (defaults: what `pydiff distill` uses for the bundled digits model).

    method: "lcm" (the consistency function c_skip x_t + c_out x0 maps every point to x0; sample with
    sampler="lcm") or "tcd" (trajectory consistency distillation, Zheng et al. 2024, arXiv:2402.19159: a DDIM jump
    from any point to any earlier time m drawn in [0, s] per row; sample with sampler="tcd").
    guidance_scale: the teacher's classifier-free guidance g (eps_u + g (eps_c - eps_u), as `pydiff.sample`); 1
    distills the unguided teacher and needs no uncond. guidance_range: (low, high) instead of one scale: each row
    draws its scale w uniformly in [low, high] and the student is called with ``guidance=w`` (LCM's w-conditioned
    student, arXiv:2310.04378 sec. 4.2), so one student serves every scale in the range; the student must take that
    keyword (a DiT with ``guidance_embed``). original_steps: the skipping grid's size (LCM's 50).
    train_steps, batch_size, lr, warmup: AdamW, linear warm-up then cosine decay to lr / 10 (as the bundled model
    was trained). ema_decay: the target network's EMA (LCM: 0.95). loss: "l2" or "huber" (pseudo-Huber
    sqrt(d^2 + c^2) - c, c = huber_c, per element). timestep_scaling: LCM's boundary-condition scaling
    (diffusers' LCMScheduler default 10).
    """

    method: str = "lcm"
    guidance_scale: float = 1.5
    guidance_range: Optional[Tuple[float, float]] = None
    original_steps: int = 50
    train_steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-4
    warmup: int = 20
    ema_decay: float = 0.95
    loss: str = "l2"
    huber_c: float = 1e-3
    timestep_scaling: float = 10.0

    @property
    def guided(self) -> bool:
        """Whether the teacher runs classifier-free guidance (and needs uncond)."""
        return self.guidance_range is not None or self.guidance_scale != 1

    def __post_init__(self):
        check_counts(self, ("original_steps", "train_steps", "batch_size"))
        check_positive(self, ("guidance_scale", "lr", "huber_c", "timestep_scaling"))
        object.__setattr__(self, "guidance_range", check_guidance_range(self.guidance_range))
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


def consistency_function(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Mapping, schedule: Schedule,
                         timestep_scaling: float = 10.0) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0(model(x_t, t, **cond)): what one `sampler="lcm"` step denoises to.

    x: (B, ...); t: int64 (B,) train timesteps; the model's prediction is converted to x0 by the schedule's
    prediction type."""
    pairs = Pairs(schedule, 1, x.device)
    return _consistency(model, x, t, cond, pairs, schedule.prediction_type, timestep_scaling)


def _consistency(model, x, t, cond, pairs: Pairs, prediction_type: str, timestep_scaling: float) -> torch.Tensor:
    alpha, sigma = pairs.coefficients(t, x)
    x0 = convert_prediction(model(x, t, **cond), x, alpha, sigma, prediction_type, "sample")
    c_skip, c_out = lcm_boundary(t.to(x.dtype).view(alpha.shape), timestep_scaling)
    return c_skip * x + c_out * x0


def _ddim_jump(pred, x, t, s, pairs: Pairs, prediction_type: str) -> torch.Tensor:
    """x_s = alpha_s x0 + sigma_s eps from the prediction at (x_t, t), per row: a DDIM step from t to s, TCD's
    first-order trajectory consistency function. Differentiable (plain torch ops)."""
    alpha, sigma = pairs.coefficients(t, x)
    alpha_s, sigma_s = pairs.coefficients(s, x)
    x0 = convert_prediction(pred, x, alpha, sigma, prediction_type, "sample")
    eps = convert_prediction(pred, x, alpha, sigma, prediction_type, "epsilon")
    return alpha_s * x0 + sigma_s * eps


def _teacher_step(teacher, x, t, s, cond, uncond, guidance_scale, pairs: Pairs, prediction_type: str):
    """One guided DDIM step of the teacher's probability-flow ODE from t to s (per row); guidance_scale a float or
    a tensor broadcasting against x (one scale per row)."""
    pred = guided_prediction(teacher, x, t, cond, uncond, guidance_scale)
    return _ddim_jump(pred, x, t, s, pairs, prediction_type)


def student_scheduler_config(teacher_config: Mapping, original_steps: int, timestep_scaling: float,
                             method: str = "lcm") -> dict:
    """The teacher's noise schedule as a diffusers LCMScheduler (TCDScheduler for method "tcd") config on the
    student's skipping grid."""
    config = {k: v for k, v in teacher_config.items() if k in SCHEDULE_KEYS}
    config = {**config, "original_inference_steps": original_steps, "timestep_spacing": "leading", "steps_offset": 0,
              "set_alpha_to_one": True, "clip_sample": False}
    if method == "tcd":
        return {**config, "_class_name": "TCDScheduler"}
    return {**config, "_class_name": "LCMScheduler", "timestep_scaling": timestep_scaling}


def distill_consistency(teacher, data: torch.Tensor, cond: Optional[Mapping] = None,
                        uncond: Optional[Mapping] = None, settings: ConsistencyDistillation = ConsistencyDistillation(),
                        schedule=None, student: Optional[nn.Module] = None, generator: Optional[torch.Generator] = None,
                        progress: bool = True) -> Distilled:
    """Distill ``teacher(x, t, **cond)`` into a few-step consistency student (module docstring).

    data: (N, ...) training samples x0, on the device of the teacher and student; cond: keyword -> tensor (N, ...)
    aligned with data (e.g. {"y": labels}); uncond: the same keywords for the unconditional pass (e.g. the null
    label), needed when the settings guide; schedule: the teacher's (default ``teacher.scheduler_config``),
    a discrete VP one. student: the module to start from, predicting what the teacher predicts (default: a copy of
    the teacher, which must then be an nn.Module). generator: draws batches, timesteps and noise (CPU generator).
    The student trained is a copy: the teacher's weights and a given student's are not changed (the teacher is put
    in eval mode).
    """
    if student is None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module unless a student is given, got {type(teacher).__name__}")
    if not isinstance(settings, ConsistencyDistillation):
        raise TypeError(f"settings must be a ConsistencyDistillation, got {type(settings).__name__}")
    if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.dim() < 2:
        raise ValueError(f"data must be a floating-point tensor (N, ...), got "
                         f"{tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__}")
    if data.shape[0] < settings.batch_size:
        raise ValueError(f"data has {data.shape[0]} rows, fewer than batch_size ({settings.batch_size})")
    if not torch.isfinite(data).all():
        raise ValueError("data must be finite")
    device = data.device
    check_modules(device, teacher=teacher, student=student)
    cond = check_batch("cond", cond, data.shape[0], device)
    uncond = check_uncond(settings, cond, check_batch("uncond", uncond, data.shape[0], device))
    if settings.guidance_range is not None and "guidance" in cond:
        raise ValueError("cond must not hold 'guidance' when settings.guidance_range draws it")
    schedule = schedule_of(teacher, schedule)
    pairs = Pairs(schedule, settings.original_steps, device)
    prediction_type = schedule.prediction_type
    generator = generator or torch.Generator().manual_seed(0)

    if isinstance(teacher, nn.Module):
        teacher.eval()
    student = copy.deepcopy(teacher if student is None else student).train().requires_grad_(True)
    target = copy.deepcopy(student).eval().requires_grad_(False)
    params, target_params = list(student.parameters()), list(target.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    losses = []
    started = time.perf_counter()
    bar = tqdm(range(settings.train_steps), desc="consistency distillation", disable=not progress, mininterval=5)
    for step in bar:
        set_lr(opt, step, settings, settings.lr)
        idx = torch.randint(0, data.shape[0], (settings.batch_size,), generator=generator).to(device)
        x0 = data[idx]
        batch_cond = {k: v[idx] for k, v in cond.items()}
        n = torch.randint(0, settings.original_steps, (settings.batch_size,), generator=generator).to(device)
        t = pairs.timesteps[n]
        s = (t - pairs.skip).clamp(min=0)
        noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
        x_t = add_noise(x0, noise, pairs.alpha[t], pairs.sigma[t])[0]
        scale, student_cond = settings.guidance_scale, batch_cond
        if settings.guidance_range is not None:  # w per row: the teacher guides with it, the student is told it
            w = draw_scales(settings.guidance_range, x0, generator)
            scale, student_cond = w.view(-1, *[1] * (x0.dim() - 1)), {**batch_cond, "guidance": w}
        with torch.no_grad():
            batch_uncond = None if uncond is None else {k: v[idx] for k, v in uncond.items()}
            x_s = _teacher_step(teacher, x_t, t, s, batch_cond, batch_uncond, scale, pairs, prediction_type)
            if settings.method == "tcd":  # a target time m in [0, s] per row, both sides jump there
                m = (torch.rand(settings.batch_size, generator=generator).to(device) * (s + 1)).long().clamp(max=s)
                goal = _ddim_jump(target(x_s, s, **student_cond), x_s, s, m, pairs, prediction_type)
            else:
                goal = _consistency(target, x_s, s, student_cond, pairs, prediction_type, settings.timestep_scaling)
        if settings.method == "tcd":
            out = _ddim_jump(student(x_t, t, **student_cond), x_t, t, m, pairs, prediction_type)
        else:
            out = _consistency(student, x_t, t, student_cond, pairs, prediction_type, settings.timestep_scaling)
        if settings.loss == "l2":
            loss = F.mse_loss(out.float(), goal.float())
        else:
            c = settings.huber_c
            loss = (((out.float() - goal.float()) ** 2 + c * c).sqrt() - c).mean()
        descend(opt, loss, params)
        torch._foreach_lerp_(target_params, [p.detach() for p in params], 1 - settings.ema_decay)
        losses.append(loss.detach())
        if step % 50 == 0:  # the only host reads of the loop
            bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
    config = functools.partial(student_scheduler_config, original_steps=settings.original_steps,
                               timestep_scaling=settings.timestep_scaling, method=settings.method)
    return finish(student, teacher, config, started, settings, losses)
