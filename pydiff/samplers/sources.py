"""Where grids and samplers come from: pydiff schedules, diffusers configs and scheduler objects (duck-typed).

The engine never imports diffusers: a diffusers scheduler is read through its ``config`` mapping, exactly like a
config dict, and ``pydiff.schedules.Schedule.from_diffusers`` turns either into a schedule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

from .grid import Grid, check_steps
from .solvers import (DDIM, LCM, TCD, ConsistencyMultistep, DPMSolverPP, Euler, EulerAncestral, FlowEuler, FlowHeun,
                      Heun, Sampler, UniPC)

#: samplers whose sample space is k-diffusion's x0 + sigma eps (their initial noise is scaled by the grid's sigma)
_K_SPACE = (Euler, EulerAncestral, Heun)


def _config_of(obj) -> Optional[Mapping[str, Any]]:
    if isinstance(obj, Mapping):
        return obj
    config = getattr(obj, "config", None)
    return config if isinstance(config, Mapping) else None


def grid_from_discretization(d, schedule=None, *, final_alpha_cumprod: Optional[float] = None) -> Grid:
    """A `Grid` from ``Schedule.discretize(steps)`` (pydiff.schedules.Discretization)."""
    acp = getattr(schedule, "alphas_cumprod", None) if schedule is not None else None
    config = getattr(schedule, "config", {}) if schedule is not None else {}
    if final_alpha_cumprod is None:
        final_alpha_cumprod = 1.0
        if acp is not None and config.get("final_sigma", "zero") != "zero":
            final_alpha_cumprod = float(acp[0])
    return Grid.make(d.timesteps, d.sigmas, kind=d.kind, prediction_type=d.prediction_type, alphas_cumprod=acp,
                     final_alpha_cumprod=final_alpha_cumprod,
                     num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
                     init_noise_sigma=float(d.init_noise_sigma))


def _schedule_from(source):
    from ..schedules import Schedule

    if isinstance(source, Schedule):
        return source
    config = _config_of(source)
    if config is None:
        raise TypeError(f"schedule must be a pydiff Schedule, a Grid, a diffusers-style config dict or a diffusers "
                        f"scheduler, got {type(source).__name__}")
    if "kind" in config and "_class_name" not in config:
        return Schedule.from_config(dict(config))
    if (config.get("_class_name") or type(source).__name__) == "FlowMatchHeunDiscreteScheduler":
        # its grid is FlowMatchEuler's with a static shift (it has no other options)
        return Schedule.flow(shift=float(config.get("shift", 1.0)),
                             num_train_timesteps=int(config.get("num_train_timesteps", 1000)))
    return Schedule.from_diffusers(source)


def grid_for(schedule, steps: Optional[int], sampler: Sampler, mu: Optional[float] = None) -> Grid:
    """The grid one run of ``sampler`` uses: from a Grid, a Schedule, a config dict or a diffusers scheduler."""
    if schedule is None:
        raise ValueError("schedule is required (a pydiff Schedule, a diffusers config dict or scheduler, or a Grid) "
                         "unless the model carries a scheduler_config")
    if isinstance(schedule, Grid):
        if steps is not None and steps != schedule.steps:
            raise ValueError(f"steps={steps} disagrees with the given Grid of {schedule.steps} steps")
        return _for_sampler(schedule, sampler)
    if steps is None:
        raise ValueError("steps is required with a schedule (only a Grid fixes its own step count)")
    check_steps(steps)
    sched = _schedule_from(schedule)
    limit = sched.config.get("num_train_timesteps")
    if sched.kind == "vp" and limit is not None:
        check_steps(steps, limit)
    grid = grid_from_discretization(sched.discretize(steps, mu=mu), sched)
    return _for_sampler(grid, sampler)


def _for_sampler(grid: Grid, sampler: Sampler) -> Grid:
    """Fix the k-space initial noise scale when the grid came from a VP-space convention (init_noise_sigma 1)."""
    if isinstance(sampler, _K_SPACE) and grid.kind == "vp" and grid.init_noise_sigma == 1.0 and grid.sigmas[0] > 0:
        sigma = max(grid.sigmas)
        return dataclasses.replace(grid, init_noise_sigma=math.sqrt(sigma * sigma + 1.0))
    return grid


def _unsupported(flag: bool, what: str) -> None:
    if flag:
        raise NotImplementedError(f"{what} is not supported by pydiff's fused samplers")


def sampler_from_diffusers(scheduler_or_config, **step_kwargs) -> Sampler:
    """The `Sampler` that mirrors a diffusers scheduler (object or config with ``_class_name``).

    step_kwargs: options diffusers takes per ``step()`` call (DDIM/TCD ``eta``, Euler ``s_churn`` ...).
    Options pydiff cannot fuse (dynamic thresholding, learned variance, solver_p, the deprecated noise-prediction
    DPM-Solver) raise NotImplementedError.
    """
    config = _config_of(scheduler_or_config)
    name = (config or {}).get("_class_name") or type(scheduler_or_config).__name__
    c = dict(config or {})
    get = c.get
    _unsupported(bool(get("thresholding", False)), "dynamic thresholding (thresholding=True)")
    if name == "DDIMScheduler":
        return DDIM(eta=float(step_kwargs.get("eta", 0.0)), clip_sample=bool(get("clip_sample", True)),
                    clip_sample_range=float(get("clip_sample_range", 1.0)),
                    use_clipped_model_output=bool(step_kwargs.get("use_clipped_model_output", False)))
    if name == "EulerDiscreteScheduler":
        return Euler(**{k: float(step_kwargs[k]) for k in ("s_churn", "s_tmin", "s_tmax", "s_noise")
                        if k in step_kwargs})
    if name == "EulerAncestralDiscreteScheduler":
        return EulerAncestral()
    if name == "HeunDiscreteScheduler":
        return Heun(clip_sample=bool(get("clip_sample", False)), clip_sample_range=float(get("clip_sample_range", 1.0)))
    if name == "DPMSolverMultistepScheduler":
        algorithm = get("algorithm_type", "dpmsolver++")
        _unsupported(algorithm not in ("dpmsolver++", "sde-dpmsolver++"),
                     f"algorithm_type={algorithm!r} (use 'dpmsolver++' or 'sde-dpmsolver++')")
        _unsupported(get("variance_type") is not None, "variance_type (learned variance)")
        solver_type = get("solver_type", "midpoint")
        return DPMSolverPP(solver_order=int(get("solver_order", 2)), sde=algorithm == "sde-dpmsolver++",
                           solver_type=solver_type if solver_type in ("midpoint", "heun") else "midpoint",
                           lower_order_final=bool(get("lower_order_final", True)),
                           euler_at_final=bool(get("euler_at_final", False)))
    if name == "UniPCMultistepScheduler":
        _unsupported(get("solver_p") is not None, "solver_p (an external predictor)")
        solver_type = get("solver_type", "bh2")
        return UniPC(solver_order=int(get("solver_order", 2)),
                     solver_type=solver_type if solver_type in ("bh1", "bh2") else "bh2",
                     predict_x0=bool(get("predict_x0", True)), lower_order_final=bool(get("lower_order_final", True)),
                     disable_corrector=tuple(get("disable_corrector", ()) or ()))
    if name == "FlowMatchEulerDiscreteScheduler":
        _unsupported(bool(get("invert_sigmas", False)), "invert_sigmas=True")
        return FlowEuler(stochastic=bool(get("stochastic_sampling", False)))
    if name == "FlowMatchHeunDiscreteScheduler":
        return FlowHeun(**{k: float(step_kwargs[k]) for k in ("s_churn", "s_tmin", "s_tmax", "s_noise")
                           if k in step_kwargs})
    if name == "LCMScheduler":
        return LCM(clip_sample=bool(get("clip_sample", False)), clip_sample_range=float(get("clip_sample_range", 1.0)),
                   timestep_scaling=float(get("timestep_scaling", 10.0)))
    if name == "TCDScheduler":
        return TCD(gamma=float(step_kwargs.get("eta", step_kwargs.get("gamma", 0.3))))
    if name == "CMStochasticIterativeScheduler":
        return ConsistencyMultistep(sigma_data=float(get("sigma_data", 0.5)), sigma_min=float(get("sigma_min", 0.002)),
                                    sigma_max=float(get("sigma_max", 80.0)), s_noise=float(get("s_noise", 1.0)),
                                    clip_denoised=bool(get("clip_denoised", True)))
    raise ValueError(f"no fused sampler mirrors the diffusers scheduler {name!r}")
