"""Discrete-time VP training tables: beta schedule -> alphas_cumprod (DDPM, Ho et al. 2020, arXiv:2006.11239).

The table is built in ``dtype`` with the same operations, in the same order, as diffusers builds it in
float32: a model trained through diffusers saw exactly those float32 values, and every timestep diffusers
derives from the table (Karras, exponential, beta spacings) depends on them at the last bit.
``dtype=torch.float64`` gives the exact-arithmetic table instead.
"""

from __future__ import annotations

import math

import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "exp", "laplace", "sigmoid")

# alpha_bar(t) on t in [0, 1] for the schedules defined through it (betas_for_alpha_bar).
_ALPHA_BAR = {
    # Improved DDPM cosine schedule, Nichol & Dhariwal 2021 (arXiv:2102.09672) eq. 17, offset s = 0.008.
    "squaredcos_cap_v2": lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2,
    "exp": lambda t: math.exp(-12.0 * t),
    # Laplace noise schedule (Hang et al. 2024, arXiv:2407.03297): log-SNR with a Laplace density.
    "laplace": lambda t: math.sqrt(_laplace_snr(t) / (1 + _laplace_snr(t))),
}


def _laplace_snr(t: float) -> float:
    """SNR of the Laplace schedule at t (location 0, scale 0.5), with a 1e-6 floor inside the log."""
    return math.exp(-0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6))


def betas_from_alpha_bar(alpha_bar, num_train_timesteps: int, max_beta: float = 0.999) -> list:
    """beta_i = min(1 - alpha_bar((i+1)/N) / alpha_bar(i/N), max_beta) (Nichol & Dhariwal 2021, sec. 3.2)."""
    return [min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
            for i in range(num_train_timesteps)]


def make_betas(beta_schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
               num_train_timesteps: int = 1000, trained_betas=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N,) betas of a named schedule, or ``trained_betas`` as given; each must lie in (0, 1]."""
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float64).to(dtype).reshape(-1)
        source = "trained_betas"
        if betas.numel() != num_train_timesteps:
            raise ValueError(f"trained_betas has {betas.numel()} values but num_train_timesteps is "
                             f"{num_train_timesteps}; they must agree")
    else:
        source = "beta_start/beta_end"
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=dtype)
        elif beta_schedule == "scaled_linear":
            # Latent-diffusion schedule: linear in sqrt(beta).
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=dtype) ** 2
        elif beta_schedule == "sigmoid":
            betas = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps, dtype=dtype)) * (
                beta_end - beta_start) + beta_start
        elif beta_schedule in _ALPHA_BAR:
            # diffusers evaluates alpha_bar in Python floats and rounds once to the table dtype.
            betas = torch.tensor(betas_from_alpha_bar(_ALPHA_BAR[beta_schedule], num_train_timesteps), dtype=dtype)
            source = "beta_schedule"
        else:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    if not bool(torch.isfinite(betas).all()) or not bool(((betas > 0) & (betas <= 1)).all()):
        bad = betas[~(torch.isfinite(betas) & (betas > 0) & (betas <= 1))][:3].tolist()
        raise ValueError(f"betas from {source} must be finite and in (0, 1]; found {bad}")
    return betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has zero SNR (Lin et al. 2024, arXiv:2305.08891, Alg. 1)."""
    sqrt_abar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar ** 2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def alphas_cumprod(beta_schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                   num_train_timesteps: int = 1000, trained_betas=None, rescale_betas_zero_snr: bool = False,
                   clamp_terminal: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N,) alpha_bar_t = prod_{s<=t} (1 - beta_s), in ``dtype``.

    ``clamp_terminal``: with zero terminal SNR, set alpha_bar_{N-1} = 2**-24 (the smallest fp16 subnormal)
    so the first k-diffusion sigma is finite, as diffusers' sigma-based schedulers do.
    """
    betas = make_betas(beta_schedule, beta_start, beta_end, num_train_timesteps, trained_betas, dtype)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    abar = torch.cumprod(1.0 - betas, dim=0)
    if rescale_betas_zero_snr and clamp_terminal:
        abar[-1] = 2.0 ** -24
    return abar
