"""Map a diffusers scheduler config onto Schedule.vp / flow / edm arguments, without importing diffusers.

A config dict read from a model repository may omit keys; diffusers then fills them from the scheduler
class's constructor defaults, which differ by class. ``_DEFAULTS`` holds those defaults for the fields read here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .tables import alphas_cumprod

_VP = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
           prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0, rescale_betas_zero_snr=False)
_SPACED = dict(_VP, use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
               final_sigmas_type="zero")
_FLOW_SIGMAS = dict(use_flow_sigmas=False, flow_shift=1.0, use_dynamic_shifting=False,
                    time_shift_type="exponential")
_LCM = dict(_VP, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", original_inference_steps=50,
            timestep_spacing="leading", set_alpha_to_one=True)
_EDM = dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, sigma_schedule="karras", num_train_timesteps=1000,
            prediction_type="epsilon", rho=7.0, final_sigmas_type="zero")

# class name -> (kind, convention, constructor defaults)
_DEFAULTS = {
    "DDIMScheduler": ("vp", "ddim", dict(_VP, timestep_spacing="leading", set_alpha_to_one=True)),
    "EulerDiscreteScheduler": ("vp", "euler", dict(_SPACED, interpolation_type="linear", sigma_min=None,
                                                   sigma_max=None, timestep_type="discrete")),
    "EulerAncestralDiscreteScheduler": ("vp", "euler", dict(_VP)),
    "HeunDiscreteScheduler": ("vp", "euler", dict(_SPACED, beta_start=0.00085, beta_end=0.012)),
    "DPMSolverMultistepScheduler": ("vp", "dpmsolver", dict(_SPACED, **_FLOW_SIGMAS, use_lu_lambdas=False,
                                                            lambda_min_clipped=-math.inf)),
    "UniPCMultistepScheduler": ("vp", "unipc", dict(_SPACED, **_FLOW_SIGMAS, sigma_min=None, sigma_max=None,
                                                    shift_terminal=None)),
    "LCMScheduler": ("vp", "lcm", _LCM),
    "TCDScheduler": ("vp", "tcd", _LCM),
    "FlowMatchEulerDiscreteScheduler": ("flow", "flow_match", dict(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096, invert_sigmas=False, shift_terminal=None,
        use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
        time_shift_type="exponential", stochastic_sampling=False)),
    "CMStochasticIterativeScheduler": ("ve", "cm", dict(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0,
                                                        sigma_data=0.5, rho=7.0)),
    "EDMEulerScheduler": ("ve", "edm", _EDM),
    "EDMDPMSolverMultistepScheduler": ("ve", "edm_dpmsolver", _EDM),
}
SUPPORTED_SCHEDULERS = tuple(_DEFAULTS)

_SPACING_FLAGS = (("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential"),
                  ("use_beta_sigmas", "beta"), ("use_lu_lambdas", "lambda"))


def _read(scheduler_or_config):
    """(class name, config dict) from a scheduler object, its config, or a plain dict."""
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not isinstance(config, Mapping):
        raise TypeError(f"scheduler_or_config must be a diffusers scheduler, its .config or a dict, "
                        f"got {type(scheduler_or_config).__name__}")
    if config is not scheduler_or_config:
        # A scheduler object: its class decides (a subclass counts as the diffusers class it extends).
        names = [cls.__name__ for cls in type(scheduler_or_config).__mro__ if cls.__name__ in _DEFAULTS]
        name = names[0] if names else type(scheduler_or_config).__name__
    else:
        name = config.get("_class_name")
    if name is None:
        raise ValueError("the config has no '_class_name', which decides the discretization convention; a "
                         "scheduler built in code keeps it only on the object, so pass the scheduler itself "
                         f"(supported: {SUPPORTED_SCHEDULERS})")
    if name not in _DEFAULTS:
        raise ValueError(f"_class_name {name!r} is not supported; supported: {SUPPORTED_SCHEDULERS}")
    return name, dict(config)


def _sigma_spacing(cfg: dict):
    chosen = [spacing for flag, spacing in _SPACING_FLAGS if cfg.get(flag)]
    if len(chosen) > 1:
        flags = [flag for flag, _ in _SPACING_FLAGS if cfg.get(flag)]
        raise ValueError(f"only one sigma spacing can be used, the config sets {flags}")
    return chosen[0] if chosen else None


def _vp_table_sigma_min(cfg: dict) -> float:
    """sqrt((1 - abar_0) / abar_0) of the float32 training table (DPM-Solver's flow-mode 'sigma_min' end point)."""
    abar = alphas_cumprod(cfg["beta_schedule"], cfg["beta_start"], cfg["beta_end"], cfg["num_train_timesteps"],
                          cfg["trained_betas"], cfg["rescale_betas_zero_snr"], True, torch.float32)
    return float(((1 - abar[0]) / abar[0]) ** 0.5)


def schedule_kwargs_from_diffusers(scheduler_or_config):
    """(kind, keyword arguments for Schedule.vp / flow / edm) reproducing that scheduler's set_timesteps."""
    name, given = _read(scheduler_or_config)
    kind, convention, defaults = _DEFAULTS[name]
    cfg = {**defaults, **{k: v for k, v in given.items() if not k.startswith("_")}}
    if kind == "ve":
        kwargs = dict(sigma_min=cfg["sigma_min"], sigma_max=cfg["sigma_max"], sigma_data=cfg["sigma_data"],
                      rho=cfg["rho"], convention=convention, num_train_timesteps=cfg["num_train_timesteps"])
        if convention != "cm":
            kwargs.update(sigma_spacing=cfg["sigma_schedule"], prediction_type=cfg["prediction_type"],
                          final_sigma=cfg["final_sigmas_type"])
        return kind, kwargs
    spacing = _sigma_spacing(cfg)
    if kind == "flow" or cfg.get("use_flow_sigmas"):
        kwargs = dict(num_train_timesteps=cfg["num_train_timesteps"], convention=convention,
                      use_dynamic_shifting=cfg["use_dynamic_shifting"], time_shift_type=cfg["time_shift_type"],
                      shift_terminal=cfg.get("shift_terminal"), sigma_spacing=spacing)
        if convention == "flow_match":
            kwargs.update(shift=cfg["shift"], base_shift=cfg["base_shift"], max_shift=cfg["max_shift"],
                          base_image_seq_len=cfg["base_image_seq_len"], max_image_seq_len=cfg["max_image_seq_len"],
                          invert_sigmas=cfg["invert_sigmas"], stochastic_sampling=cfg["stochastic_sampling"])
        else:
            final = cfg["final_sigmas_type"]
            if convention == "dpmsolver" and final == "sigma_min":
                # DPM-Solver's flow mode still ends on the VP table's smallest sigma.
                final = _vp_table_sigma_min(cfg)
            kwargs.update(shift=cfg["flow_shift"], prediction_type=cfg["prediction_type"], final_sigma=final)
        return "flow", kwargs
    kwargs = dict(beta_schedule=cfg["beta_schedule"], beta_start=cfg["beta_start"], beta_end=cfg["beta_end"],
                  num_train_timesteps=cfg["num_train_timesteps"], trained_betas=cfg["trained_betas"],
                  rescale_betas_zero_snr=cfg["rescale_betas_zero_snr"], timestep_spacing=cfg["timestep_spacing"],
                  steps_offset=cfg["steps_offset"], sigma_spacing=spacing, prediction_type=cfg["prediction_type"],
                  convention=convention)
    if convention in ("ddim", "lcm"):
        kwargs["final_sigma"] = "zero" if convention == "lcm" or cfg["set_alpha_to_one"] else "sigma_min"
    elif convention == "tcd":
        # TCD's last step lands on training timestep 0, not on the clean sample.
        kwargs["final_sigma"] = "sigma_min"
    else:
        kwargs["final_sigma"] = cfg.get("final_sigmas_type", "zero")
    for key in ("interpolation_type", "sigma_min", "sigma_max", "lambda_min_clipped", "original_inference_steps"):
        if key in cfg:
            kwargs[key] = cfg[key]
    # diffusers applies continuous timesteps only to v-prediction models.
    if cfg.get("timestep_type") == "continuous" and cfg["prediction_type"] == "v_prediction":
        kwargs["timestep_type"] = "continuous"
    return "vp", kwargs
