"""pydiff.schedules: every noise schedule as float64 math (layer 1: imports only torch, numpy and math).

    from pydiff.schedules import Schedule, conversion_coefficients
    s = Schedule.from_diffusers(pipe.scheduler)        # or Schedule.vp(...), .flow(...), .edm(...)
    d = s.discretize(20)                               # timesteps, sigmas, alpha_t, sigma_t: float64 tables
    c_x, c_pred = conversion_coefficients("v_prediction", "epsilon", d.alpha_t, d.sigma_t)
"""

from .diffusers_config import SUPPORTED_SCHEDULERS
from .prediction import PREDICTION_TYPES, canonical_prediction_type, conversion_coefficients, convert_prediction
from .schedule import CONVENTIONS, KINDS, Discretization, Schedule
from .spacing import (SIGMA_SPACINGS, TIME_SHIFT_TYPES, TIMESTEP_SPACINGS, beta_ppf, flux_mu, karras_sigmas,
                      shift_dynamic, shift_static, sigma_ramp, sigma_to_t, spaced_timesteps, stretch_to_terminal)
from .tables import BETA_SCHEDULES, alphas_cumprod, make_betas, rescale_zero_terminal_snr

__all__ = [
    "BETA_SCHEDULES", "CONVENTIONS", "KINDS", "PREDICTION_TYPES", "SIGMA_SPACINGS", "SUPPORTED_SCHEDULERS",
    "TIMESTEP_SPACINGS", "TIME_SHIFT_TYPES", "Discretization", "Schedule", "alphas_cumprod", "beta_ppf",
    "canonical_prediction_type", "conversion_coefficients", "convert_prediction", "flux_mu", "karras_sigmas",
    "make_betas", "rescale_zero_terminal_snr", "shift_dynamic", "shift_static", "sigma_ramp", "sigma_to_t",
    "spaced_timesteps", "stretch_to_terminal",
]
