"""Model prediction types and exact linear conversions between them at a point x_t = alpha_t x0 + sigma_t eps.

Each type is a linear combination p = a x0 + b eps:
  epsilon         (0, 1)                 the noise (Ho et al. 2020)
  sample          (1, 0)                 the clean sample x0
  v_prediction    (-sigma/r, alpha/r)    v = alpha' eps - sigma' x0 on the unit-variance path (Salimans & Ho 2022,
                                         arXiv:2202.00512, sec. 4), r = sqrt(alpha^2 + sigma^2) so it also holds
                                         for VE/EDM (alpha = 1) as diffusers' Euler v-prediction uses it
  flow_prediction (-1, 1)                the velocity u = eps - x0 = dx/dt of rectified flow x_t = (1-t) x0 + t eps
                                         (Liu et al. 2022, arXiv:2209.03003)
"""

from __future__ import annotations

import math
import numbers

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")

_ALIASES = {"eps": "epsilon", "noise": "epsilon", "v": "v_prediction", "x0": "sample", "x_0": "sample",
            "flow": "flow_prediction", "velocity": "flow_prediction"}


def canonical_prediction_type(name: str, argument: str = "prediction_type") -> str:
    """The diffusers name of a prediction type; accepts diffusers' names and the short aliases eps/v/x0/flow."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a string, got {type(name).__name__}")
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in PREDICTION_TYPES:
        raise ValueError(f"{argument} must be one of {PREDICTION_TYPES} (or {tuple(_ALIASES)}), got {name!r}")
    return key


def _combination(kind: str, alpha_t, sigma_t):
    """(a, b) with prediction = a x0 + b eps."""
    if kind == "epsilon":
        return 0.0, 1.0
    if kind == "sample":
        return 1.0, 0.0
    if kind == "flow_prediction":
        return -1.0, 1.0
    r = (alpha_t ** 2 + sigma_t ** 2) ** 0.5
    return -sigma_t / r, alpha_t / r


def _as_float64(value, name: str):
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        return value.to(torch.float64)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float or a floating-point tensor, got {type(value).__name__}")
    return float(value)


def conversion_coefficients(from_type: str, to_type: str, alpha_t, sigma_t):
    """(c_x, c_pred) with to_pred = c_x * x_t + c_pred * from_pred, exact at x_t = alpha_t x0 + sigma_t eps.

    alpha_t, sigma_t: floats or tensors (computed in float64). With floats a conversion that the point cannot
    determine (x0 from eps at alpha_t = 0, eps from x0 at sigma_t = 0) raises ValueError; with tensors those
    entries come out inf/nan, as IEEE division gives them.
    """
    src = canonical_prediction_type(from_type, "from_type")
    dst = canonical_prediction_type(to_type, "to_type")
    alpha = _as_float64(alpha_t, "alpha_t")
    sigma = _as_float64(sigma_t, "sigma_t")
    tensors = isinstance(alpha, torch.Tensor) or isinstance(sigma, torch.Tensor)
    if not tensors and alpha == 0 and sigma == 0:
        raise ValueError("alpha_t and sigma_t cannot both be 0")
    if src == dst:
        one = torch.ones_like(alpha * sigma) if tensors else 1.0
        return 0.0 * one, one
    a1, b1 = _combination(src, alpha, sigma)
    a2, b2 = _combination(dst, alpha, sigma)
    # Solve [x_t, p] = [[alpha, sigma], [a1, b1]] [x0, eps] and project onto (a2, b2).
    det = alpha * b1 - sigma * a1
    if not tensors:
        if det == 0 or not math.isfinite(det):
            raise ValueError(f"cannot convert {src} to {dst} at alpha_t={alpha}, sigma_t={sigma}: "
                             f"the prediction does not determine x0 and eps there")
        return (a2 * b1 - a1 * b2) / det, (alpha * b2 - sigma * a2) / det
    c_x = (a2 * b1 - a1 * b2) / det
    c_pred = (alpha * b2 - sigma * a2) / det
    return c_x, c_pred


def convert_prediction(pred: torch.Tensor, x: torch.Tensor, alpha_t, sigma_t, from_type: str,
                       to_type: str) -> torch.Tensor:
    """Convert a model prediction at x_t = alpha_t x0 + sigma_t eps from one type to another.

    pred, x: tensors of one shape; alpha_t, sigma_t: floats or tensors broadcastable against x (e.g. (B, 1, 1, 1)).
    Coefficients are computed in float64 and applied in the promoted dtype of pred and x.
    """
    if not isinstance(pred, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise TypeError("pred and x must be tensors")
    if pred.shape != x.shape:
        raise ValueError(f"pred and x must have the same shape, got {tuple(pred.shape)} and {tuple(x.shape)}")
    c_x, c_pred = conversion_coefficients(from_type, to_type, alpha_t, sigma_t)
    dtype = torch.promote_types(pred.dtype, x.dtype)
    if isinstance(c_x, torch.Tensor):
        c_x = c_x.to(device=x.device, dtype=dtype)
        c_pred = c_pred.to(device=x.device, dtype=dtype)
    return c_x * x.to(dtype) + c_pred * pred.to(dtype)
