"""The numbers one sampling run needs from a noise schedule, and prediction-type conversion.

A `Grid` is a discretized schedule: the timesteps the model is called with, the noise level of every point
(plus the final one), and for discrete VP schedules the training table of alphas_cumprod (DDIM, LCM and TCD
index it at timesteps that are not grid points). It is hashable, so compiled plans can be cached per grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from .plan import Lin

KINDS = ("vp", "flow", "ve")
#: accepted prediction types and their aliases (diffusers spells x0 "sample" and sometimes "original_sample")
PREDICTION_TYPES = {
    "epsilon": "epsilon",
    "eps": "epsilon",
    "v_prediction": "v_prediction",
    "v": "v_prediction",
    "sample": "sample",
    "original_sample": "sample",
    "x0": "sample",
    "flow_prediction": "flow_prediction",
    "flow": "flow_prediction",
}


def canonical_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {sorted(set(PREDICTION_TYPES))}, got {prediction_type!r}")
    return PREDICTION_TYPES[prediction_type]


def _floats(values, name: str) -> Tuple[float, ...]:
    if values is None:
        return ()
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).reshape(-1).tolist()
    out = tuple(float(v) for v in values)
    if any(math.isnan(v) for v in out):
        raise ValueError(f"{name} contains NaN")
    return out


@dataclass(frozen=True)
class Grid:
    """A discretized noise schedule (all values float64 tuples, so grids hash and compare).

    timesteps: (n,) model timesteps of the grid points; sigmas: (n+1,) noise levels of the points and of the
    final point, in the schedule's own convention ("vp": k-diffusion sigma = sigma_t / alpha_t; "flow": the flow
    time s with x = (1-s) x0 + s eps; "ve": EDM sigma with x = x0 + sigma eps); alphas_cumprod: the discrete VP
    training table (empty otherwise); final_alpha_cumprod: alpha_bar after the last step of DDIM-style samplers
    (set_alpha_to_one); init_noise_sigma: the scale of the initial noise in k-diffusion space (Euler-type samplers);
    final_timestep: the model timestep of the final point, when a sampler may evaluate the model there (Heun on a
    grid that does not end at sigma = 0).
    """

    timesteps: Tuple[float, ...]
    sigmas: Tuple[float, ...]
    kind: str = "vp"
    prediction_type: str = "epsilon"
    alphas_cumprod: Tuple[float, ...] = ()
    final_alpha_cumprod: float = 1.0
    num_train_timesteps: int = 1000
    init_noise_sigma: float = 1.0
    final_timestep: Optional[float] = None

    @classmethod
    def make(cls, timesteps, sigmas=None, *, kind: str = "vp", prediction_type: str = "epsilon",
             alphas_cumprod=None, final_alpha_cumprod: float = 1.0, num_train_timesteps: int = 1000,
             init_noise_sigma: float = 1.0, final_timestep: Optional[float] = None) -> "Grid":
        """Validate and freeze; for discrete VP, sigmas default to those of alphas_cumprod at the timesteps."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        ts = _floats(timesteps, "timesteps")
        if not ts:
            raise ValueError("timesteps must hold at least one value")
        acp = _floats(alphas_cumprod, "alphas_cumprod")
        if any(not 0.0 <= a <= 1.0 for a in acp):
            raise ValueError("alphas_cumprod must lie in [0, 1]")
        if sigmas is None:
            if not acp:
                raise ValueError("give sigmas, or alphas_cumprod to derive them from")
            sig = tuple(vp_sigma(interp(acp, t)) for t in ts) + (vp_sigma(final_alpha_cumprod),)
        else:
            sig = _floats(sigmas, "sigmas")
        if len(sig) != len(ts) + 1:
            raise ValueError(f"sigmas must have len(timesteps) + 1 = {len(ts) + 1} values, got {len(sig)}")
        if any(s < 0 for s in sig):
            raise ValueError("sigmas must be >= 0")
        if not 0.0 < final_alpha_cumprod <= 1.0:
            raise ValueError(f"final_alpha_cumprod must lie in (0, 1], got {final_alpha_cumprod}")
        return cls(ts, sig, kind, canonical_prediction_type(prediction_type), acp, float(final_alpha_cumprod),
                   int(num_train_timesteps), float(init_noise_sigma),
                   None if final_timestep is None else float(final_timestep))

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def alpha_sigma(self, i: int) -> Tuple[float, float]:
        """(alpha_t, sigma_t) of point i with x_t = alpha_t x0 + sigma_t eps in the model's input space."""
        return alpha_sigma(self.kind, self.sigmas[i])

    def alpha_bar(self, t: float) -> float:
        """The training table at an integer timestep (DDIM-style samplers)."""
        if not self.alphas_cumprod:
            raise ValueError("this sampler needs a discrete VP schedule (alphas_cumprod); the grid has none")
        return self.alphas_cumprod[int(t)]


def vp_sigma(alpha_bar: float) -> float:
    if alpha_bar == 0.0:
        return math.inf
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def interp(table: Sequence[float], t: float) -> float:
    """Linear interpolation of a per-timestep table at a (possibly fractional) timestep."""
    lo = min(max(int(math.floor(t)), 0), len(table) - 1)
    hi = min(lo + 1, len(table) - 1)
    w = t - lo
    return table[lo] * (1 - w) + table[hi] * w


def alpha_sigma(kind: str, sigma: float) -> Tuple[float, float]:
    """(alpha_t, sigma_t) of a noise level in the schedule's convention (the model input is alpha x0 + sigma eps)."""
    if kind == "vp":
        if math.isinf(sigma):  # zero terminal SNR: pure noise
            return 0.0, 1.0
        alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
        return alpha, sigma * alpha
    if kind == "flow":
        return 1.0 - sigma, sigma
    return 1.0, sigma


def log_snr(alpha: float, sigma: float) -> float:
    """lambda = log(alpha / sigma); +inf at sigma = 0 (the clean end)."""
    if sigma == 0.0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


def to_data(prediction_type: str, y: Lin, m: Lin, alpha: float, sigma: float) -> Lin:
    """The x0 prediction from the model input y = alpha x0 + sigma eps and the model output m."""
    if prediction_type == "epsilon":
        if alpha == 0.0:
            raise ValueError("an epsilon-prediction model cannot predict x0 at zero SNR (alpha_t = 0); use "
                             "v_prediction with zero-terminal-SNR schedules")
        return (y - m * sigma) / alpha
    if prediction_type == "sample":
        return m
    if prediction_type == "v_prediction":  # v = alpha eps - sigma x0 (Salimans & Ho 2022)
        return (y * alpha - m * sigma) / (alpha * alpha + sigma * sigma)
    if prediction_type == "flow_prediction":  # v = eps - x0 (rectified flow)
        return (y - m * sigma) / (alpha + sigma)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def to_noise(prediction_type: str, y: Lin, m: Lin, alpha: float, sigma: float) -> Lin:
    """The epsilon prediction from the model input y and the model output m."""
    if prediction_type == "epsilon":
        return m
    if prediction_type == "v_prediction":
        return (y * sigma + m * alpha) / (alpha * alpha + sigma * sigma)
    if sigma == 0.0:
        raise ValueError("the noise prediction is undefined at sigma = 0")
    return (y - to_data(prediction_type, y, m, alpha, sigma) * alpha) / sigma


def check_steps(steps: int, limit: Optional[int] = None, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"{name} must be an int, got {type(steps).__name__}")
    if steps < 1 or (limit is not None and steps > limit):
        raise ValueError(f"{name} must lie in [1, {limit if limit is not None else 'inf'}], got {steps}")
    return steps


def round_f32(values: Sequence[float]) -> Tuple[float, ...]:
    """Values rounded to float32, as diffusers stores its sigmas; keeps parity at the 1e-7 level."""
    return tuple(float(v) for v in torch.tensor(list(values), dtype=torch.float64).to(torch.float32).double())
