"""Timestep spacings, sigma spacings and flow time shifts: pure functions, no state.

Arrays run from the noisiest point to the cleanest, in float64 unless the caller passes float32 (the shifts keep
their input's dtype, as diffusers relies on for custom float32 sigmas).
"""

from __future__ import annotations

import math

import numpy as np

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
SIGMA_SPACINGS = ("karras", "exponential", "beta", "lambda")
TIME_SHIFT_TYPES = ("exponential", "linear")


def spaced_timesteps(spacing: str, num_train_timesteps: int, steps: int, steps_offset: int = 0, *,
                     extra_point: bool = False, round_linspace: bool = True,
                     max_timestep: int | None = None) -> np.ndarray:
    """Descending training timesteps for ``steps`` inference steps (Lin et al. 2024, arXiv:2305.08891, Table 2).

    extra_point: space ``steps + 1`` points and drop the cleanest (DPM-Solver, UniPC).
    round_linspace: round "linspace" points to integers; else round them to float32 (Euler family).
    max_timestep: exclusive upper end of the "linspace"/"leading"/"trailing" range (default N).
    """
    top = num_train_timesteps if max_timestep is None else max_timestep
    points = steps + 1 if extra_point else steps
    if spacing == "linspace":
        t = np.linspace(0, top - 1, points)
        t = t.round() if round_linspace else t.astype(np.float32).astype(np.float64)
        t = t[::-1]
    elif spacing == "leading":
        ratio = top // points
        if ratio < 1:
            raise ValueError(f"steps={steps} is too many for 'leading' spacing over {top} training timesteps")
        t = (np.arange(points) * ratio).round()[::-1] + steps_offset
    elif spacing == "trailing":
        # arange overshoots by one element for some step counts (1000 / 61 accumulates past zero); those
        # land on timestep -1, which is no training timestep, so they are dropped.
        t = np.arange(top, 0, -num_train_timesteps / steps).round() - 1
        return t[t >= 0]
    else:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    t = t[:-1] if extra_point else t
    return np.ascontiguousarray(t, dtype=np.float64)


def karras_sigmas(ramp: np.ndarray, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Uniform in sigma^(1/rho) from sigma_max (ramp 0) to sigma_min (ramp 1) (Karras et al. 2022, eq. 5)."""
    max_inv_rho = sigma_max ** (1 / rho)
    min_inv_rho = sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def _log_beta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _betainc_cf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Continued fraction of I_x(a, b) (DLMF 8.17.22) by the modified Lentz method; converges for x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    c = np.ones_like(x)
    d = 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
    frac = d.copy()
    for m in range(1, 1000):
        # Even then odd partial numerators d_{2m}, d_{2m+1}.
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1.0 + num / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            delta = c * d
            frac = frac * delta
        if np.all(np.abs(delta - 1.0) < 4e-16):
            break
    return frac


def _betainc_series(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """I_x(a, b) = x^a (1-x)^b / (a B(a, b)) * continued fraction; accurate for x < (a+1)/(a+b+2)."""
    with np.errstate(divide="ignore"):
        front = np.exp(a * np.log(x) + b * np.log1p(-x) - _log_beta(a, b)) / a
    return front * _betainc_cf(x, a, b)


def betainc(x, a: float, b: float) -> np.ndarray:
    """Regularized incomplete beta function I_x(a, b) for x in [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    # Past the mode the fraction converges slowly: use I_x(a, b) = 1 - I_{1-x}(b, a) there.
    flip = x > (a + 1) / (a + b + 2)
    out = np.empty_like(x)
    out[~flip] = _betainc_series(x[~flip], a, b)
    out[flip] = 1.0 - _betainc_series(1.0 - x[flip], b, a)
    return out


def _beta_ppf_lower(p: np.ndarray, a: float, b: float) -> np.ndarray:
    """x with I_x(a, b) = p for 0 < p <= 1/2, by Newton's method kept inside a bisection bracket."""
    log_b = _log_beta(a, b)
    # Start from the leading term of I_x at x -> 0: I_x ~ x^a / (a B(a, b)), which is already exact
    # where it underflows the normal range.
    out = np.exp((np.log(p) + math.log(a) + log_b) / a)
    todo = np.flatnonzero(out >= 1e-300)
    p, x = p[todo], np.minimum(out[todo], 0.5)
    lo, hi = np.zeros_like(p), np.ones_like(p)
    for _ in range(100):
        if todo.size == 0:
            break
        f = betainc(x, a, b) - p
        lo = np.where(f < 0, x, lo)
        hi = np.where(f > 0, x, hi)
        newton = x - f / np.exp((a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - log_b)
        # Bisect whenever Newton leaves the open bracket (a step that no longer moves x is kept).
        step = np.where(((newton > lo) & (newton < hi)) | (newton == x), newton, 0.5 * (lo + hi))
        # Newton converges quadratically: a step of 1e-9 of the distance to the nearer end leaves an
        # error at rounding level, so that point is final.
        done = np.abs(step - x) <= 1e-9 * np.minimum(step, 1 - step)
        out[todo[done]] = step[done]
        keep = ~done
        todo, p, x, lo, hi = todo[keep], p[keep], step[keep], lo[keep], hi[keep]
    out[todo] = x
    return out


def beta_ppf(p, a: float, b: float) -> np.ndarray:
    """Quantile of Beta(a, b): the x with I_x(a, b) = p; exact at p = 0 and p = 1."""
    p = np.asarray(p, dtype=np.float64)
    out = np.where(p <= 0, 0.0, 1.0)
    lower = (p > 0) & (p <= 0.5)
    upper = (p > 0.5) & (p < 1)
    out[lower] = _beta_ppf_lower(p[lower], a, b)
    # Above the median solve for 1 - x with I_{1-x}(b, a) = 1 - p, which is exact there and keeps the
    # relative accuracy that I_x - p would lose to cancellation near p = 1.
    out[upper] = 1.0 - _beta_ppf_lower(1.0 - p[upper], b, a)
    return out


def sigma_ramp(sigma_spacing: str, sigma_min: float, sigma_max: float, steps: int, *, rho: float = 7.0,
               beta_alpha: float = 0.6, beta_beta: float = 0.6, log_sigma_range=None) -> np.ndarray:
    """``steps`` noise levels from sigma_max down to sigma_min, spaced per ``sigma_spacing``.

    karras: uniform in sigma^(1/rho) (Karras et al. 2022, arXiv:2206.00364, eq. 5);
    exponential: uniform in log sigma; beta: sigma_min + (sigma_max - sigma_min) * ppf of Beta(alpha, beta)
    at 1 - linspace(0, 1) (Lee et al. 2024, "Beta Sampling is All You Need", arXiv:2407.12173);
    lambda: uniform in log-SNR lambda = -log sigma (Lu et al. 2022, DPM-Solver, arXiv:2206.00927, sec. 3.3),
    with log endpoints ``log_sigma_range = (log sigma_min, log sigma_max)`` when given.
    """
    ramp = np.linspace(0, 1, steps)
    if sigma_spacing == "karras":
        return karras_sigmas(ramp, sigma_min, sigma_max, rho)
    if sigma_spacing == "exponential":
        return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps))
    if sigma_spacing == "beta":
        return sigma_min + beta_ppf(1 - ramp, beta_alpha, beta_beta) * (sigma_max - sigma_min)
    if sigma_spacing == "lambda":
        lo, hi = log_sigma_range if log_sigma_range is not None else (math.log(sigma_min), math.log(sigma_max))
        return np.exp(hi + ramp * (lo - hi))
    raise ValueError(f"sigma_spacing must be None or one of {SIGMA_SPACINGS}, got {sigma_spacing!r}")


def sigma_to_t(sigmas: np.ndarray, log_sigma_table: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of ``sigmas``: linear interpolation in log sigma over the training table."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))  # the floor keeps sigma = 0 finite, as diffusers does
    # Index of the last table entry at or below each log sigma (the table increases with t).
    low = np.clip(np.searchsorted(log_sigma_table, log_sigma, side="right") - 1, 0, len(log_sigma_table) - 2)
    high = low + 1
    w = (log_sigma_table[low] - log_sigma) / (log_sigma_table[low] - log_sigma_table[high])
    w = np.clip(w, 0, 1)
    return (1 - w) * low + w * high


def shift_static(t: np.ndarray, shift: float) -> np.ndarray:
    """Resolution shift of flow time, t' = s t / (1 + (s - 1) t) (Esser et al. 2024, SD3, arXiv:2403.03206, eq. 23)."""
    return shift * t / (1 + (shift - 1) * t)


def shift_dynamic(t: np.ndarray, mu: float, time_shift_type: str = "exponential") -> np.ndarray:
    """Flux time shift with mu: exponential e^mu / (e^mu + (1/t - 1)); linear mu / (mu + (1/t - 1))."""
    if time_shift_type == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    if time_shift_type == "linear":
        return mu / (mu + (1 / t - 1))
    raise ValueError(f"time_shift_type must be one of {TIME_SHIFT_TYPES}, got {time_shift_type!r}")


def stretch_to_terminal(t: np.ndarray, shift_terminal: float) -> np.ndarray:
    """Stretch 1 - t so the schedule ends exactly at ``shift_terminal`` (LTX-Video's rectified-flow schedule)."""
    one_minus = 1 - t
    if one_minus[-1] == 0:
        raise ValueError("shift_terminal cannot stretch a grid that ends at pure noise (flow time 1), "
                         "e.g. a single step")
    return 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))


def flux_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """Flux's dynamic-shift mu, linear in the image token count from base_shift at base_seq_len to max_shift."""
    if max_seq_len == base_seq_len:
        raise ValueError(f"max_seq_len and base_seq_len must differ, both are {base_seq_len}")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    return image_seq_len * slope + intercept
