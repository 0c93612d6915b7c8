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
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pydiff.models.train import lr_at
from pydiff.ops import add_noise
from pydiff.samplers import lcm_boundary
from pydiff.schedules import Schedule
from pydiff.schedules.prediction import convert_prediction

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
        for name in ("original_steps", "train_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        for name in ("guidance_scale", "lr", "huber_c", "timestep_scaling"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.guidance_range is not None:
            low_high = tuple(self.guidance_range) if isinstance(self.guidance_range, (tuple, list)) else ()
            if len(low_high) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                             for v in low_high) or low_high[0] > low_high[1]:
                raise ValueError(f"guidance_range must be (low, high) with 0 < low <= high, got "
                                 f"{self.guidance_range!r}")
            object.__setattr__(self, "guidance_range", tuple(float(v) for v in low_high))
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


@dataclass
class Distilled:
    """What `distill_consistency` returns: the student (eval mode; ``scheduler_config`` an LCMScheduler or
    TCDScheduler config when the teacher had one), the loss of every optimizer step, the wall time and the settings."""

    student: nn.Module
    losses: list = field(default_factory=list)
    seconds: float = 0.0
    settings: ConsistencyDistillation = field(default_factory=ConsistencyDistillation)

    def provenance(self) -> dict:
        """JSON-ready record of how the student was made."""
        method = {"lcm": "latent consistency distillation (arXiv:2310.04378)",
                  "tcd": "trajectory consistency distillation (arXiv:2402.19159)"}[self.settings.method]
        return {"method": method, "settings": asdict(self.settings),
                "seconds": round(self.seconds, 1), "final_loss": self.losses[-1] if self.losses else None}


class _Pairs:
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


def consistency_function(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Mapping, schedule: Schedule,
                         timestep_scaling: float = 10.0) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0(model(x_t, t, **cond)): what one `sampler="lcm"` step denoises to.

    x: (B, ...); t: int64 (B,) train timesteps; the model's prediction is converted to x0 by the schedule's
    prediction type."""
    pairs = _Pairs(schedule, 1, x.device)
    return _consistency(model, x, t, cond, pairs, schedule.prediction_type, timestep_scaling)


def _consistency(model, x, t, cond, pairs: _Pairs, prediction_type: str, timestep_scaling: float) -> torch.Tensor:
    alpha, sigma = pairs.coefficients(t, x)
    x0 = convert_prediction(model(x, t, **cond), x, alpha, sigma, prediction_type, "sample")
    c_skip, c_out = lcm_boundary(t.to(x.dtype).view(alpha.shape), timestep_scaling)
    return c_skip * x + c_out * x0


def _ddim_jump(pred, x, t, s, pairs: _Pairs, prediction_type: str) -> torch.Tensor:
    """x_s = alpha_s x0 + sigma_s eps from the prediction at (x_t, t), per row: a DDIM step from t to s, TCD's
    first-order trajectory consistency function. Differentiable (plain torch ops)."""
    alpha, sigma = pairs.coefficients(t, x)
    alpha_s, sigma_s = pairs.coefficients(s, x)
    x0 = convert_prediction(pred, x, alpha, sigma, prediction_type, "sample")
    eps = convert_prediction(pred, x, alpha, sigma, prediction_type, "epsilon")
    return alpha_s * x0 + sigma_s * eps


def _teacher_step(teacher, x, t, s, cond, uncond, guidance_scale, pairs: _Pairs, prediction_type: str):
    """One guided DDIM step of the teacher's probability-flow ODE from t to s (per row); guidance_scale a float or
    a tensor broadcasting against x (one scale per row)."""
    if uncond is None:
        pred = teacher(x, t, **cond)
    else:
        both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
        pred_c, pred_u = teacher(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        pred = pred_u + guidance_scale * (pred_c - pred_u)
    return _ddim_jump(pred, x, t, s, pairs, prediction_type)


def _check_batch(name: str, tensors, n: int, device: torch.device) -> dict:
    if tensors is None:
        return {}
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{name} must be a mapping of keyword -> tensor, got {type(tensors).__name__}")
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != n:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}[{key!r}] must be a tensor with one row per data row ({n}, ...), got {shape}")
        if value.device != device:
            raise ValueError(f"{name}[{key!r}] is on {value.device}, the data on {device}")
    return dict(tensors)


def _schedule_of(teacher: nn.Module, schedule) -> Schedule:
    if schedule is None:
        schedule = getattr(teacher, "scheduler_config", None)
        if not schedule:
            raise ValueError("schedule must be given: the teacher has no scheduler_config")
    schedule = schedule if isinstance(schedule, Schedule) else Schedule.from_diffusers(schedule)
    if schedule.kind != "vp" or schedule.alphas_cumprod is None:
        raise ValueError(f"schedule must be a discrete VP schedule (alphas_cumprod), got a {schedule.kind!r} one")
    return schedule


def student_scheduler_config(teacher_config: Mapping, original_steps: int, timestep_scaling: float,
                             method: str = "lcm") -> dict:
    """The teacher's noise schedule as a diffusers LCMScheduler (TCDScheduler for method "tcd") config on the
    student's skipping grid."""
    config = {k: v for k, v in teacher_config.items() if k in ("num_train_timesteps", "beta_start", "beta_end",
                                                                "beta_schedule", "trained_betas", "prediction_type",
                                                                "rescale_betas_zero_snr")}
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
    if not callable(teacher):
        raise TypeError(f"teacher must be callable as teacher(x, t, **cond), got {type(teacher).__name__}")
    if student is not None and not isinstance(student, nn.Module):
        raise TypeError(f"student must be an nn.Module, got {type(student).__name__}")
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
    for name, module in (("teacher", teacher), ("student", student if student is not None else teacher)):
        wrong = [p.device for p in module.parameters() if p.device != device] if isinstance(module, nn.Module) else []
        if wrong:
            raise ValueError(f"the {name}'s parameters are on {wrong[0]}, the data on {device}")
    cond = _check_batch("cond", cond, data.shape[0], device)
    uncond = _check_batch("uncond", uncond, data.shape[0], device) if settings.guided else None
    if settings.guided and sorted(uncond) != sorted(cond):
        raise ValueError(f"guidance (scale {settings.guidance_scale}, range {settings.guidance_range}) needs uncond "
                         f"with the keywords of cond {sorted(cond)}, got {sorted(uncond)}")
    if settings.guidance_range is not None and "guidance" in cond:
        raise ValueError("cond must not hold 'guidance' when settings.guidance_range draws it")
    schedule = _schedule_of(teacher, schedule)
    pairs = _Pairs(schedule, settings.original_steps, device)
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
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings.train_steps, settings.warmup, settings.lr)
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
            low, high = settings.guidance_range
            w = (low + (high - low) * torch.rand(settings.batch_size, generator=generator)).to(device, x0.dtype)
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
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        torch._foreach_lerp_(target_params, [p.detach() for p in params], 1 - settings.ema_decay)
        losses.append(loss.detach())
        if step % 50 == 0:  # the only host reads of the loop
            bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
    student.eval().requires_grad_(False)
    if getattr(teacher, "scheduler_config", None):
        student.scheduler_config = student_scheduler_config(teacher.scheduler_config, settings.original_steps,
                                                            settings.timestep_scaling, settings.method)
    losses = torch.stack(losses).tolist() if losses else []
    return Distilled(student, losses, time.perf_counter() - started, settings)
