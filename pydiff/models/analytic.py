"""Exact analytic diffusion models: Gaussian and Gaussian-mixture data, whose denoisers are closed form.

For data x0 and x_t = alpha_t * x0 + sigma_t * eps, a Gaussian x0 ~ N(mu, s^2) (per coordinate) gives
x_t ~ N(alpha mu, v) with v = alpha^2 s^2 + sigma^2, and (Tweedie / Gaussian conditioning)
    E[x0 | x_t]  = mu + alpha s^2 / v * (x_t - alpha mu),
    E[eps | x_t] = sigma / v * (x_t - alpha mu).
A mixture weighs the components' answers by their posterior responsibilities. The probability-flow ODE of a
Gaussian keeps z = (x_t - alpha mu) / sqrt(v) constant, which gives its exact solution between any two points.

Timesteps follow diffusers: a discrete VP schedule is indexed by train timestep t in [0, N-1]; fractional t
interpolates log(sigma/alpha) linearly between neighbouring integers, the inverse of the sigma -> t map of
diffusers' Euler/DPM schedulers (and k-diffusion), so a sampler that converts its sigmas to timesteps that way
queries the model at exactly its own noise level. Flow-matching schedules use sigma = t / N, alpha = 1 - sigma.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pydiff.schedules import Schedule, canonical_prediction_type

from .config import check_labels


def _float64(value, name: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a number, sequence or tensor, got {type(value).__name__}") from err
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite")
    return tensor.detach().cpu()


class _DeviceCache:
    """Copies of a few float64 tensors per device, so calls never copy host tables (CUDA-graph friendly)."""

    def __init__(self, **tensors: torch.Tensor):
        self._by_device = {torch.device("cpu"): tensors}

    def on(self, device: torch.device) -> dict:
        if device not in self._by_device:
            self._by_device[device] = {k: v.to(device) for k, v in self._by_device[torch.device("cpu")].items()}
        return self._by_device[device]


class GaussianData:
    """x0 ~ N(mean, diag(std^2)): mean of the data shape (e.g. (C, H, W)), std a positive scalar or a tensor
    broadcastable to it."""

    def __init__(self, mean, std):
        mean = _float64(mean, "mean")
        std = _float64(std, "std")
        if mean.dim() == 0:
            raise ValueError("mean must have the data shape (at least 1-D), got a scalar")
        try:
            std = torch.broadcast_to(std, mean.shape).clone()
        except RuntimeError as err:
            raise ValueError(f"std of shape {tuple(std.shape)} does not broadcast to mean's "
                             f"{tuple(mean.shape)}") from err
        if not (std > 0).all():
            raise ValueError("std must be > 0")
        self.mean, self.std = mean, std
        self._cache = _DeviceCache(mean=mean, var=std**2)

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n float64 samples (n, *shape) on CPU."""
        _check_count(n)
        noise = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return self.mean + self.std * noise

    def posterior(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, y=None):
        """(E[x0 | x_t], E[eps | x_t]) in float64 for x (B, *shape) and alpha, sigma (B,)."""
        p = self._cache.on(x.device)
        alpha, sigma = _expand(alpha, x), _expand(sigma, x)
        var_t = alpha**2 * p["var"] + sigma**2
        centred = x - alpha * p["mean"]
        return p["mean"] + alpha * p["var"] / var_t * centred, sigma / var_t * centred

    def ode_map(self, x: torch.Tensor, alpha_from, sigma_from, alpha_to, sigma_to) -> torch.Tensor:
        """Exact probability-flow ODE solution from (alpha_from, sigma_from) to (alpha_to, sigma_to), float64."""
        p = self._cache.on(x.device)
        x = x.to(torch.float64)
        a0, s0, a1, s1 = (_expand(v, x) for v in (alpha_from, sigma_from, alpha_to, sigma_to))
        z = (x - a0 * p["mean"]) / torch.sqrt(a0**2 * p["var"] + s0**2)
        return a1 * p["mean"] + torch.sqrt(a1**2 * p["var"] + s1**2) * z

    def denoiser(self, schedule, prediction_type: str | None = None) -> "GaussianDenoiser":
        """Exact model `model(x, t, **cond)` for `schedule` (see `AnalyticDenoiser`); cond is ignored."""
        return GaussianDenoiser(self, schedule, prediction_type)


class GaussianMixtureData:
    """x0 ~ sum_k weights[k] N(means[k], stds[k]^2 I): means (K, *shape), stds (K,) > 0, weights (K,) > 0
    (normalised). Component k doubles as class label k; label K is the null class (the whole mixture)."""

    def __init__(self, means, stds, weights=None):
        means = _float64(means, "means")
        if means.dim() < 2:
            raise ValueError(f"means must have shape (K, *data_shape), got {tuple(means.shape)}")
        k = means.shape[0]
        stds = _float64(stds, "stds")
        if stds.dim() == 0:
            stds = stds.expand(k)
        weights = torch.ones(k, dtype=torch.float64) if weights is None else _float64(weights, "weights").reshape(-1)
        if stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(f"stds and weights must have shape ({k},), got {tuple(stds.shape)} and "
                             f"{tuple(weights.shape)}")
        if not (stds > 0).all() or not (weights > 0).all():
            raise ValueError("stds and weights must be > 0")
        self.means, self.stds, self.weights = means, stds.clone(), weights / weights.sum()
        self._cache = _DeviceCache(means=means, var=stds**2, log_weights=self.weights.log())

    @property
    def shape(self) -> torch.Size:
        return self.means.shape[1:]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """n float64 samples (n, *shape) on CPU, and their component labels (n,) when return_labels."""
        _check_count(n)
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        x = self.means[labels] + _expand(self.stds[labels], noise) * noise
        return (x, labels) if return_labels else x

    def posterior(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, y=None):
        """(E[x0 | x_t, y], E[eps | x_t, y]) in float64; y (B,) int picks a component, y == K (or None) none."""
        p = self._cache.on(x.device)
        batch, k = x.shape[0], self.num_components
        dim = math.prod(self.shape)
        flat = x.reshape(batch, 1, dim)
        means = p["means"].reshape(1, k, dim)
        alpha, sigma = alpha.reshape(batch, 1, 1), sigma.reshape(batch, 1, 1)
        var_t = alpha**2 * p["var"].reshape(1, k, 1) + sigma**2  # (B, K, 1)
        centred = flat - alpha * means  # (B, K, D)
        log_resp = (p["log_weights"] - 0.5 * dim * var_t[..., 0].log()
                    - 0.5 * centred.pow(2).sum(-1) / var_t[..., 0])  # (B, K)
        if y is not None:
            # (labels 0..k-1 pick a component, k the whole mixture: the unconditional label)
            y = check_labels(y.to(x.device) if isinstance(y, torch.Tensor) else y, batch, k + 1, "y")
            # Out-of-range labels (only possible unchecked inside CUDA-graph capture) mask every component -> NaN.
            y = torch.where((y < 0) | (y > k), k + 1, y)
            chosen = F.one_hot(y, k + 2)[:, :k].bool() | (y == k)[:, None]
            log_resp = log_resp.masked_fill(~chosen, -math.inf)
        resp = torch.softmax(log_resp, dim=1)[..., None]  # (B, K, 1)
        x0 = (resp * (means + alpha * p["var"].reshape(1, k, 1) / var_t * centred)).sum(1)
        eps = (resp * (sigma / var_t * centred)).sum(1)
        return x0.reshape(x.shape), eps.reshape(x.shape)

    def denoiser(self, schedule, prediction_type: str | None = None) -> "AnalyticDenoiser":
        """Exact model `model(x, t, y=None)` for `schedule` (see `AnalyticDenoiser`)."""
        return AnalyticDenoiser(self, schedule, prediction_type)


class AnalyticDenoiser:
    """The exact prediction of analytic data under a noise schedule, callable as `model(x, t, **cond)`.

    schedule: a 1-D tensor of alphas_cumprod (discrete VP), "flow" (rectified flow, 1000 train timesteps), a
    `pydiff.schedules.Schedule`, or a diffusers scheduler or config dict (read by `Schedule.from_diffusers`);
    VP schedules use their float64 alphas_cumprod table, flow schedules sigma = t / num_train_timesteps.
    prediction_type: "epsilon", "sample", "v_prediction" or "flow_prediction" (or the aliases eps/x0/v/flow;
    default: the schedule's own, epsilon for a bare table).
    t: scalar or (B,) train timesteps, clamped to [0, N-1] (VP) or [0, N] (flow).
    The output has x's dtype; the math runs in float64.
    """

    def __init__(self, data, schedule, prediction_type: str | None = None):
        self.data = data
        self.kind, table, default_prediction = _schedule_table(schedule)
        self.prediction_type = canonical_prediction_type(prediction_type or default_prediction)
        if self.kind == "vp":
            self.num_train_timesteps = table.shape[0]
            self._cache = _DeviceCache(log_sigmas=table)
        else:
            self.num_train_timesteps = table

    def alpha_sigma(self, t, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) as float64 tensors of t's shape, for train timesteps t."""
        t = torch.as_tensor(t, device=device).to(torch.float64)
        n = self.num_train_timesteps
        if self.kind == "flow":
            s = t.clamp(0, n) / n
            return 1.0 - s, s
        log_sigmas = self._cache.on(t.device)["log_sigmas"]
        t = t.clamp(0, n - 1)
        low = t.floor().long().clamp(max=n - 2)
        frac = t - low
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        # The end points are taken as they are so an infinite log sigma (abar = 0) never meets a zero weight.
        log_sigma = torch.where(frac == 0, lo, torch.where(frac == 1, hi, (1 - frac) * lo + frac * hi))
        # log_sigma = log sqrt((1 - abar) / abar) (k-diffusion's sigma): alpha^2 = sigmoid(-2 log_sigma),
        # sigma^2 = sigmoid(2 log_sigma) = 1 - alpha^2, both without cancellation.
        return torch.sigmoid(-2 * log_sigma).sqrt(), torch.sigmoid(2 * log_sigma).sqrt()

    def __call__(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
        if x.dim() < 1 or tuple(x.shape[1:]) != tuple(self.data.shape):
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.data.shape))}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        elif t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        alpha, sigma = self.alpha_sigma(t, x.device)
        x64 = x.to(torch.float64)
        x0, eps = self.data.posterior(x64, alpha, sigma, cond.get("y"))
        if self.prediction_type == "epsilon":
            out = eps
        elif self.prediction_type == "sample":
            out = x0
        elif self.prediction_type == "v_prediction":
            # normalised by sqrt(alpha^2 + sigma^2) (1 on VP paths), as pydiff.schedules defines v
            alpha, sigma = _expand(alpha, x0), _expand(sigma, x0)
            out = (alpha * eps - sigma * x0) / torch.sqrt(alpha**2 + sigma**2)
        else:
            out = eps - x0
        return out.to(x.dtype)


class GaussianDenoiser(AnalyticDenoiser):
    """`AnalyticDenoiser` of Gaussian data, plus the exact solution of its probability-flow ODE."""

    def exact_ode_solution(self, x_t: torch.Tensor, t_from, t_to=None) -> torch.Tensor:
        """Exact probability-flow ODE solution (float64) carried from train timestep t_from to t_to; t_to=None
        means the clean end (alpha=1, sigma=0, diffusers' final_sigmas_type="zero")."""
        alpha0, sigma0 = self.alpha_sigma(t_from, x_t.device)
        if t_to is None:
            alpha1, sigma1 = torch.ones_like(alpha0), torch.zeros_like(sigma0)
        else:
            alpha1, sigma1 = self.alpha_sigma(t_to, x_t.device)
        return self.data.ode_map(x_t, alpha0, sigma0, alpha1, sigma1)


def _check_count(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")


def _expand(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample value (B,) (or a scalar) against a batch (B, ...)."""
    value = torch.as_tensor(value, dtype=torch.float64, device=like.device)
    if value.dim() == 0:
        return value
    return value.reshape(value.shape[0], *([1] * (like.dim() - 1)))


def _schedule_table(schedule) -> tuple[str, torch.Tensor | int, str]:
    """("vp", log sigmas (N,), default prediction type) or ("flow", N, default prediction type)."""
    if isinstance(schedule, str):
        if schedule != "flow":
            raise ValueError(f"schedule given as a string must be 'flow', got {schedule!r}")
        return "flow", 1000, "flow_prediction"
    prediction_type = "epsilon"
    if isinstance(schedule, (torch.Tensor, list, tuple)):
        abar = schedule
    else:
        if not isinstance(schedule, Schedule):
            if not isinstance(schedule, dict) and getattr(schedule, "config", None) is None:
                raise TypeError("schedule must be alphas_cumprod (1-D tensor), 'flow', a pydiff Schedule, or a "
                                f"diffusers scheduler or config dict; got {type(schedule).__name__}")
            schedule = Schedule.from_diffusers(schedule)
        prediction_type = schedule.prediction_type
        if schedule.kind == "flow":
            return "flow", int(schedule.config["num_train_timesteps"]), prediction_type
        if schedule.kind != "vp":
            raise ValueError(f"schedule must be discrete VP or flow matching, got a {schedule.kind!r} schedule")
        abar = schedule.alphas_cumprod
    abar = _float64(abar, "alphas_cumprod")
    if abar.dim() != 1 or abar.shape[0] < 2:
        raise ValueError(f"alphas_cumprod must be 1-D with at least 2 entries, got shape {tuple(abar.shape)}")
    if not ((abar >= 0) & (abar < 1)).all():
        raise ValueError("alphas_cumprod must lie in [0, 1)")
    # abar = 0 (a zero-terminal-SNR end) gives log sigma = +inf, which alpha_sigma maps to alpha 0, sigma 1.
    return "vp", 0.5 * (torch.log1p(-abar) - abar.log()), prediction_type
