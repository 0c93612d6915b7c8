"""Noise schedules: a ``Schedule`` describes the noising process, ``discretize(steps)`` gives one step grid.

Three kinds of process, each written x_t = alpha_t x0 + sigma_t eps:
  vp    discrete variance-preserving (DDPM): alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t); the
        k-diffusion noise level is sigma = sigma_t / alpha_t = sqrt((1 - abar_t) / abar_t)
  flow  rectified flow: alpha_t = 1 - s, sigma_t = s for flow time s in [0, 1]
  ve    EDM / consistency models: alpha_t = 1, sigma_t = sigma

A *convention* names how one sampler family turns (schedule, steps) into timesteps; the conventions share one
implementation (tables.py, spacing.py) and differ only in the named choices of ``_VPGrid`` and a few branches
below. Everything is float64, except where diffusers rounds to float32 before deriving further numbers; there we
round at the same point so its timesteps are reproduced exactly (see ``Discretization.timesteps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .prediction import canonical_prediction_type
from .spacing import (SIGMA_SPACINGS, TIME_SHIFT_TYPES, TIMESTEP_SPACINGS, flux_mu, karras_sigmas, shift_dynamic,
                      shift_static, sigma_ramp, sigma_to_t, spaced_timesteps, stretch_to_terminal)
from .tables import BETA_SCHEDULES, alphas_cumprod

KINDS = ("vp", "flow", "ve")
CONVENTIONS = {
    "vp": ("ddim", "euler", "dpmsolver", "unipc", "lcm", "tcd"),
    "flow": ("flow_match", "dpmsolver", "unipc"),
    "ve": ("edm", "edm_dpmsolver", "cm"),
}
FINAL_SIGMAS = ("zero", "sigma_min")
_BUILDER_NAMES = {"vp": "vp", "flow": "flow", "ve": "edm"}


@dataclass(frozen=True)
class _VPGrid:
    """The per-family choices of a discrete VP discretization (defaults: DDIM)."""

    extra_point: bool = False  # space steps+1 points and drop the cleanest (DPM-Solver, UniPC)
    round_linspace: bool = True  # "linspace" timesteps rounded to integers (Euler family keeps them float32)
    integer_timesteps: bool = True  # timesteps are training indices (Euler family: float32 fractions)
    clamp_terminal: bool = False  # zero-SNR abar[-1] = 2**-24 so the first sigma stays finite
    sigma_spacing: bool = False  # accepts karras/exponential/beta/lambda noise levels
    range_from_table: bool = False  # a sigma spacing spans the whole training table, not the grid's own ends
    round_spaced: tuple = ()  # spacings whose fractional timesteps are rounded; the others truncate
    cosine_truncates: bool = False  # DPM-Solver truncates instead of rounding for squaredcos_cap_v2
    final_min_from_ramp: bool = False  # final "sigma_min" is the spaced ramp's last sigma (UniPC)
    jumps: bool = False  # DDIM: the step from t lands on t - N // steps, not on the next timestep
    lcm_grid: bool = False  # LCM/TCD: steps drawn from an original_inference_steps skipping grid
    euler_noise: bool = False  # init_noise_sigma is the largest sigma (or sqrt(sigma^2 + 1) for leading)


_VP_GRIDS = {
    "ddim": _VPGrid(jumps=True),
    "euler": _VPGrid(round_linspace=False, integer_timesteps=False, clamp_terminal=True, sigma_spacing=True,
                     euler_noise=True),
    "dpmsolver": _VPGrid(extra_point=True, clamp_terminal=True, sigma_spacing=True, range_from_table=True,
                         round_spaced=("karras", "lambda"), cosine_truncates=True),
    "unipc": _VPGrid(extra_point=True, clamp_terminal=True, sigma_spacing=True, range_from_table=True,
                     round_spaced=("karras",), final_min_from_ramp=True),
    "lcm": _VPGrid(lcm_grid=True),
    "tcd": _VPGrid(lcm_grid=True),
}


def _t64(values) -> torch.Tensor:
    # np.array copies: a reversed one-element view counts as contiguous but has a negative stride.
    return torch.from_numpy(np.array(values, dtype=np.float64))


@dataclass(frozen=True, eq=False)
class Discretization:
    """A schedule at one step count: float64 host tables for a sampler; n = number of steps.

    timesteps: (n,) the model's timestep inputs, equal to diffusers' ``scheduler.timesteps`` after
      ``set_timesteps(n)`` (float32 or integer values held exactly in float64).
    sigmas: (n+1,) the scheduler's noise levels incl. the final one: sqrt((1-abar)/abar) for vp (inf at
      abar = 0), flow time for flow, sigma for ve.
    alpha_t, sigma_t: (n+1,) x_t = alpha_t x0 + sigma_t eps at each point.
    alpha_next, sigma_next: (n,) the point step i lands on; alpha_t[1:], sigma_t[1:] except for DDIM, whose
      step from timestep t lands on t - N // n.
    """

    timesteps: torch.Tensor
    sigmas: torch.Tensor
    alpha_t: torch.Tensor
    sigma_t: torch.Tensor
    alpha_next: torch.Tensor
    sigma_next: torch.Tensor
    kind: str
    prediction_type: str
    init_noise_sigma: float
    convention: str

    @property
    def steps(self) -> int:
        """Number of steps (diffusers' ``num_inference_steps`` after ``set_timesteps``)."""
        return int(self.timesteps.numel())


def _vp_alpha_sigma(sigmas: np.ndarray):
    """(alpha_t, sigma_t) = (1, sigma) / sqrt(1 + sigma^2), with the pure-noise limit (0, 1) at sigma = inf."""
    inf = np.isinf(sigmas)
    finite = np.where(inf, 0.0, sigmas)
    alpha = np.where(inf, 0.0, 1.0 / np.sqrt(1.0 + finite ** 2))
    return alpha, np.where(inf, 1.0, finite * alpha)


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(value, name: str, *, positive: bool = False, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (positive and not (0 < value < math.inf)):
        raise ValueError(f"{name} must be {'a positive finite number' if positive else 'a number'}, got {value}")
    return value


def _check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


class Schedule:
    """A noise schedule and its discretization convention; build with ``vp``, ``flow``, ``edm`` or
    ``from_diffusers``, rebuild with ``Schedule.from_config(schedule.config)``."""

    def __init__(self, config: dict):
        """Internal: takes a config the builders validated; use ``vp``/``flow``/``edm``/``from_config``."""
        self._config = dict(config)
        self._table = None
        if self.kind == "vp":
            c = self._config
            clamp = _VP_GRIDS[c["convention"]].clamp_terminal
            self._table = alphas_cumprod(c["beta_schedule"], c["beta_start"], c["beta_end"],
                                         c["num_train_timesteps"], c["trained_betas"], c["rescale_betas_zero_snr"],
                                         clamp, getattr(torch, c["table_dtype"]))
            # diffusers derives sigmas and their logs from its float32 table with numpy; the logs feed
            # sigma -> t interpolation, so they are taken the same way.
            self._sigma_table = (((1 - self._table) / self._table) ** 0.5).numpy()
            with np.errstate(divide="ignore"):
                self._log_sigma_table = np.log(self._sigma_table)

    # ----------------------------------------------------------------------------------------- builders
    @classmethod
    def vp(cls, beta_schedule: str = "scaled_linear", beta_start: float = 0.00085, beta_end: float = 0.012,
           num_train_timesteps: int = 1000, trained_betas=None, rescale_betas_zero_snr: bool = False,
           timestep_spacing: str = "leading", steps_offset: int = 0, sigma_spacing: str | None = None,
           prediction_type: str = "epsilon", convention: str = "euler", *, final_sigma: str = "zero",
           interpolation_type: str = "linear", timestep_type: str = "discrete", sigma_min: float | None = None,
           sigma_max: float | None = None, rho: float = 7.0, beta_alpha: float = 0.6, beta_beta: float = 0.6,
           lambda_min_clipped: float = -math.inf, original_inference_steps: int = 50,
           table_dtype: str = "float32") -> "Schedule":
        """Discrete VP (DDPM) schedule.

        convention: "ddim" | "euler" (also Euler ancestral and Heun, whose scheduler repeats every interior
          point for its corrector stage; the grid here is the plain one) | "dpmsolver" | "unipc" | "lcm" | "tcd".
        final_sigma: "zero" ends on the clean sample; "sigma_min" on training timestep 0 (DDIM's
          set_alpha_to_one=False; TCD always). sigma_spacing (euler, dpmsolver, unipc): "karras" (with rho),
          "exponential", "beta" (Beta(beta_alpha, beta_beta) quantiles), "lambda" (uniform log-SNR), spanning
          [sigma_min, sigma_max] when given. interpolation_type "log_linear" (euler, with a sigma spacing):
          the spacing spans the whole table. timestep_type "continuous" (euler): timesteps 0.25 log sigma.
        lambda_min_clipped: timesteps stop where log-SNR falls below it (DPM-Solver, for cosine schedules).
        table_dtype: "float32" builds abar as diffusers does (what its models were trained with); "float64"
          in exact arithmetic.
        """
        convention = _check_choice(convention, "convention", CONVENTIONS["vp"])
        grid = _VP_GRIDS[convention]
        n_train = _check_int(num_train_timesteps, "num_train_timesteps", 2)
        config = dict(
            kind="vp", convention=convention,
            beta_schedule=_check_choice(beta_schedule, "beta_schedule", BETA_SCHEDULES),
            beta_start=_check_float(beta_start, "beta_start"), beta_end=_check_float(beta_end, "beta_end"),
            num_train_timesteps=n_train,
            trained_betas=None if trained_betas is None else [float(b) for b in np.asarray(trained_betas).ravel()],
            rescale_betas_zero_snr=bool(rescale_betas_zero_snr),
            timestep_spacing=_check_choice(timestep_spacing, "timestep_spacing", TIMESTEP_SPACINGS),
            steps_offset=_check_int(steps_offset, "steps_offset", 0),
            sigma_spacing=None if sigma_spacing is None else _check_choice(sigma_spacing, "sigma_spacing",
                                                                           SIGMA_SPACINGS),
            prediction_type=canonical_prediction_type(prediction_type),
            final_sigma=_check_choice(final_sigma, "final_sigma", FINAL_SIGMAS),
            interpolation_type=_check_choice(interpolation_type, "interpolation_type", ("linear", "log_linear")),
            timestep_type=_check_choice(timestep_type, "timestep_type", ("discrete", "continuous")),
            sigma_min=_check_float(sigma_min, "sigma_min", positive=True, allow_none=True),
            sigma_max=_check_float(sigma_max, "sigma_max", positive=True, allow_none=True),
            rho=_check_float(rho, "rho", positive=True),
            beta_alpha=_check_float(beta_alpha, "beta_alpha", positive=True),
            beta_beta=_check_float(beta_beta, "beta_beta", positive=True),
            lambda_min_clipped=_check_float(lambda_min_clipped, "lambda_min_clipped"),
            original_inference_steps=_check_int(original_inference_steps, "original_inference_steps", 1),
            table_dtype=_check_choice(str(table_dtype).replace("torch.", ""), "table_dtype",
                                      ("float32", "float64")),
        )
        if config["sigma_spacing"] is not None and not grid.sigma_spacing:
            raise ValueError(f"sigma_spacing={sigma_spacing!r} is not available with convention={convention!r}, "
                             f"whose timesteps index the training table directly")
        if interpolation_type == "log_linear" and (convention != "euler" or sigma_spacing is None):
            raise ValueError("interpolation_type='log_linear' needs convention='euler' and a sigma_spacing "
                             "(without one diffusers yields steps + 2 sigmas for steps timesteps)")
        if timestep_type == "continuous" and convention != "euler":
            raise ValueError("timestep_type='continuous' is only defined for convention='euler'")
        if (config["sigma_min"] is not None and config["sigma_max"] is not None
                and config["sigma_min"] >= config["sigma_max"]):
            raise ValueError(f"sigma_min ({sigma_min}) must be below sigma_max ({sigma_max})")
        if grid.lcm_grid and config["original_inference_steps"] > n_train:
            raise ValueError(f"original_inference_steps ({original_inference_steps}) cannot exceed "
                             f"num_train_timesteps ({n_train})")
        return cls(config)

    @classmethod
    def flow(cls, shift: float = 1.0, use_dynamic_shifting: bool = False, time_shift_type: str = "exponential",
             shift_terminal: float | None = None, num_train_timesteps: int = 1000, *,
             base_shift: float = 0.5, max_shift: float = 1.15, base_image_seq_len: int = 256,
             max_image_seq_len: int = 4096, invert_sigmas: bool = False, sigma_spacing: str | None = None,
             prediction_type: str = "flow_prediction", convention: str = "flow_match", final_sigma="zero",
             rho: float = 7.0, beta_alpha: float = 0.6, beta_beta: float = 0.6,
             stochastic_sampling: bool = False) -> "Schedule":
        """Rectified-flow schedule x_s = (1 - s) x0 + s eps with SD3 static shift or Flux dynamic shift (mu).

        convention: "flow_match" (FlowMatchEulerDiscreteScheduler), or "dpmsolver" / "unipc" (their
        use_flow_sigmas mode). shift_terminal stretches the grid to end at that flow time (LTX-Video).
        final_sigma: "zero", "sigma_min" (the last grid point) or a flow time in [0, 1).
        invert_sigmas (flow_match): report 1 - s, counting up, as diffusers does for Mochi.
        stochastic_sampling is carried for samplers; it does not change the grid.
        """
        convention = _check_choice(convention, "convention", CONVENTIONS["flow"])
        if not (isinstance(final_sigma, str) and final_sigma in FINAL_SIGMAS):
            value = _check_float(final_sigma, "final_sigma")
            if not 0 <= value < 1:
                raise ValueError(f"final_sigma must be 'zero', 'sigma_min' or a flow time in [0, 1), "
                                 f"got {final_sigma!r}")
            final_sigma = value
        config = dict(
            kind="flow", convention=convention, shift=_check_float(shift, "shift", positive=True),
            use_dynamic_shifting=bool(use_dynamic_shifting),
            time_shift_type=_check_choice(time_shift_type, "time_shift_type", TIME_SHIFT_TYPES),
            shift_terminal=_check_float(shift_terminal, "shift_terminal", allow_none=True) or None,
            num_train_timesteps=_check_int(num_train_timesteps, "num_train_timesteps", 1),
            base_shift=_check_float(base_shift, "base_shift"), max_shift=_check_float(max_shift, "max_shift"),
            base_image_seq_len=_check_int(base_image_seq_len, "base_image_seq_len", 1),
            max_image_seq_len=_check_int(max_image_seq_len, "max_image_seq_len", 1),
            invert_sigmas=bool(invert_sigmas),
            sigma_spacing=None if sigma_spacing is None else _check_choice(sigma_spacing, "sigma_spacing",
                                                                           SIGMA_SPACINGS),
            prediction_type=canonical_prediction_type(prediction_type), final_sigma=final_sigma,
            rho=_check_float(rho, "rho", positive=True),
            beta_alpha=_check_float(beta_alpha, "beta_alpha", positive=True),
            beta_beta=_check_float(beta_beta, "beta_beta", positive=True),
            stochastic_sampling=bool(stochastic_sampling),
        )
        if config["shift_terminal"] is not None and not 0 < config["shift_terminal"] < 1:
            raise ValueError(f"shift_terminal must be in (0, 1), got {shift_terminal}")
        if config["base_image_seq_len"] == config["max_image_seq_len"]:
            raise ValueError("base_image_seq_len and max_image_seq_len must differ")
        if convention != "flow_match" and (sigma_spacing is not None or invert_sigmas):
            raise ValueError(f"sigma_spacing and invert_sigmas need convention='flow_match' (diffusers' "
                             f"{convention} ignores its flow sigmas when a sigma spacing is set)")
        if convention == "dpmsolver" and use_dynamic_shifting and time_shift_type != "exponential":
            raise ValueError("convention='dpmsolver' supports only time_shift_type='exponential'")
        return cls(config)

    @classmethod
    def edm(cls, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5, rho: float = 7.0,
            sigma_spacing: str = "karras", *, prediction_type: str = "epsilon", convention: str = "edm",
            final_sigma: str = "zero", num_train_timesteps: int | None = None, beta_alpha: float = 0.6,
            beta_beta: float = 0.6) -> "Schedule":
        """Continuous VE schedule of EDM (Karras et al. 2022, arXiv:2206.00364): x = x0 + sigma eps.

        convention: "edm" (EDMEulerScheduler), "edm_dpmsolver" (EDMDPMSolverMultistepScheduler: float32
        ramp, final "sigma_min" is the configured one) or "cm" (CMStochasticIterativeScheduler, consistency
        models, Song et al. 2023: steps picked from a num_train_timesteps Karras grid, default 40, ending at
        sigma_min). prediction_type is recorded as given: diffusers' EDM "epsilon" / "v_prediction" name EDM's
        preconditioned network output (sigma_data), which samplers convert themselves.
        """
        convention = _check_choice(convention, "convention", CONVENTIONS["ve"])
        if num_train_timesteps is None:
            num_train_timesteps = 40 if convention == "cm" else 1000
        config = dict(
            kind="ve", convention=convention,
            sigma_min=_check_float(sigma_min, "sigma_min", positive=True),
            sigma_max=_check_float(sigma_max, "sigma_max", positive=True),
            sigma_data=_check_float(sigma_data, "sigma_data", positive=True),
            rho=_check_float(rho, "rho", positive=True),
            sigma_spacing=_check_choice(sigma_spacing, "sigma_spacing", SIGMA_SPACINGS),
            prediction_type=canonical_prediction_type(prediction_type),
            final_sigma=_check_choice(final_sigma, "final_sigma", FINAL_SIGMAS),
            num_train_timesteps=_check_int(num_train_timesteps, "num_train_timesteps", 2),
            beta_alpha=_check_float(beta_alpha, "beta_alpha", positive=True),
            beta_beta=_check_float(beta_beta, "beta_beta", positive=True),
        )
        if config["sigma_min"] >= config["sigma_max"]:
            raise ValueError(f"sigma_min ({sigma_min}) must be below sigma_max ({sigma_max})")
        if convention == "cm" and sigma_spacing != "karras":
            raise ValueError("convention='cm' uses the Karras grid; sigma_spacing must be 'karras'")
        return cls(config)

    @classmethod
    def from_config(cls, config: dict) -> "Schedule":
        """Rebuild a schedule from ``Schedule.config``."""
        if not isinstance(config, dict) or "kind" not in config:
            raise ValueError("config must be a dict with a 'kind' entry, as Schedule.config returns")
        kwargs = dict(config)
        kind = _check_choice(kwargs.pop("kind"), "kind", KINDS)
        return getattr(cls, _BUILDER_NAMES[kind])(**kwargs)

    @classmethod
    def from_diffusers(cls, scheduler_or_config) -> "Schedule":
        """Read a diffusers scheduler, its ``.config`` or a plain config dict (``_class_name`` picks the convention)."""
        from .diffusers_config import schedule_kwargs_from_diffusers

        kind, kwargs = schedule_kwargs_from_diffusers(scheduler_or_config)
        return getattr(cls, _BUILDER_NAMES[kind])(**kwargs)

    # ----------------------------------------------------------------------------------------- accessors
    @property
    def config(self) -> dict:
        """Every parameter, including ``kind``; ``Schedule.from_config`` rebuilds from it."""
        config = dict(self._config)
        if config.get("trained_betas") is not None:
            config["trained_betas"] = list(config["trained_betas"])
        return config

    @property
    def kind(self) -> str:
        return self._config["kind"]

    @property
    def convention(self) -> str:
        return self._config["convention"]

    @property
    def prediction_type(self) -> str:
        return self._config["prediction_type"]

    @property
    def alphas_cumprod(self) -> torch.Tensor | None:
        """(N,) float64 training table abar_t of a discrete VP schedule (None for flow and ve)."""
        return None if self._table is None else self._table.to(torch.float64)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._config.items() if k not in ("kind", "trained_betas"))
        return f"Schedule.{_BUILDER_NAMES[self.kind]}({shown})"

    # ----------------------------------------------------------------------------------------- discretize
    def discretize(self, steps: int, mu: float | None = None, *, image_seq_len: int | None = None,
                   sigmas=None) -> Discretization:
        """The step grid for ``steps`` steps, equal to diffusers' ``set_timesteps(steps, mu=mu)``.

        mu: Flux dynamic-shift exponent (flow schedules with use_dynamic_shifting), or give image_seq_len to
        compute it with ``flux_mu`` from this schedule's base/max settings. As in diffusers, mu is ignored
        without dynamic shifting, and convention "dpmsolver" falls back to the static shift without mu.
        sigmas (flow_match): custom flow times before shifting, as Flux pipelines pass
        ``np.linspace(1, 1 / steps, steps)``; diffusers shifts those in float32, and so does this.
        """
        steps = _check_int(steps, "steps", 1)
        if image_seq_len is not None:
            if mu is not None:
                raise ValueError("give mu or image_seq_len, not both")
            if self.kind != "flow":
                raise ValueError("image_seq_len applies to flow schedules only")
            c = self._config
            mu = flux_mu(_check_int(image_seq_len, "image_seq_len", 1), c["base_image_seq_len"],
                         c["max_image_seq_len"], c["base_shift"], c["max_shift"])
        if mu is not None:
            mu = _check_float(mu, "mu")
            if self.kind != "flow":
                raise ValueError(f"mu applies to flow schedules only, this one is {self.kind!r}")
        if sigmas is not None and (self.kind != "flow" or self.convention != "flow_match"):
            raise ValueError("custom sigmas are supported for convention='flow_match' only")
        if self.kind == "vp":
            return self._discretize_vp(steps)
        if self.kind == "flow":
            return self._discretize_flow(steps, mu, sigmas)
        return self._discretize_ve(steps)

    def _finish(self, timesteps, sigmas, alpha, sigma_t, init_noise_sigma, alpha_next=None, sigma_next=None):
        alpha_next = alpha[1:] if alpha_next is None else alpha_next
        sigma_next = sigma_t[1:] if sigma_next is None else sigma_next
        return Discretization(timesteps=_t64(timesteps), sigmas=_t64(sigmas), alpha_t=_t64(alpha),
                              sigma_t=_t64(sigma_t), alpha_next=_t64(alpha_next), sigma_next=_t64(sigma_next),
                              kind=self.kind, prediction_type=self.prediction_type,
                              init_noise_sigma=float(init_noise_sigma), convention=self.convention)

    def _max_timestep(self) -> int:
        """Exclusive end of the spaced range: DPM-Solver's lambda_min_clipped cuts off the low-SNR end."""
        c = self._config
        if c["lambda_min_clipped"] == -math.inf:
            return c["num_train_timesteps"]
        log_snr = torch.log(self._table.sqrt()) - torch.log((1 - self._table).sqrt())
        clipped = int(torch.searchsorted(torch.flip(log_snr, [0]), c["lambda_min_clipped"]))
        return c["num_train_timesteps"] - clipped

    def _discretize_vp(self, steps: int) -> Discretization:
        c, grid = self._config, _VP_GRIDS[self.convention]
        n_train, spacing = c["num_train_timesteps"], c["sigma_spacing"]
        table, log_table = self._sigma_table, self._log_sigma_table
        if steps > n_train:
            raise ValueError(f"steps ({steps}) cannot exceed num_train_timesteps ({n_train})")
        if grid.lcm_grid:
            timesteps = _lcm_timesteps(n_train, c["original_inference_steps"], steps)
        else:
            timesteps = spaced_timesteps(c["timestep_spacing"], n_train, steps, c["steps_offset"],
                                         extra_point=grid.extra_point, round_linspace=grid.round_linspace,
                                         max_timestep=self._max_timestep())
            if timesteps.size and timesteps.max() > n_train - 1:
                raise ValueError(f"steps_offset={c['steps_offset']} pushes timestep {int(timesteps.max())} past "
                                 f"the last training timestep {n_train - 1} at steps={steps}")
        if grid.integer_timesteps:
            # Direct lookup: interpolation would turn a zero-SNR inf next to the index into nan.
            sigmas = table[timesteps.astype(np.int64)].astype(np.float64)
        else:
            sigmas = np.interp(timesteps, np.arange(n_train), table)
        if spacing is not None:
            if grid.range_from_table:
                low, high = float(table[0]), float(table[-1])
                log_range = (float(log_table[0]), float(log_table[-1]))
            elif c["interpolation_type"] == "log_linear":
                # diffusers' log-linear grid is a float32 exp of float32 logs of the table's ends.
                ends = torch.from_numpy(np.log(table[[0, -1]]).astype(np.float32)).exp().tolist()
                low, high, log_range = ends[0], ends[1], None
            else:
                low, high, log_range = float(sigmas[-1]), float(sigmas[0]), None
            if c["sigma_min"] is not None or c["sigma_max"] is not None:
                low = c["sigma_min"] if c["sigma_min"] is not None else low
                high = c["sigma_max"] if c["sigma_max"] is not None else high
                log_range = None
            sigmas = sigma_ramp(spacing, low, high, steps, rho=c["rho"], beta_alpha=c["beta_alpha"],
                                beta_beta=c["beta_beta"], log_sigma_range=log_range)
            fractional = sigma_to_t(sigmas, log_table)
            if not grid.integer_timesteps:
                timesteps = fractional
            elif spacing in grid.round_spaced and not (grid.cosine_truncates
                                                       and c["beta_schedule"] == "squaredcos_cap_v2"):
                timesteps = fractional.round()
            else:
                timesteps = np.trunc(fractional)
        if c["final_sigma"] == "zero":
            final = 0.0
        elif grid.final_min_from_ramp and spacing is not None:
            final = float(sigmas[-1])
        else:
            final = float(table[0])
        all_sigmas = np.append(sigmas, final)
        alpha, sigma_t = _vp_alpha_sigma(all_sigmas)
        if c["timestep_type"] == "continuous":
            timesteps = (0.25 * torch.log(torch.from_numpy(sigmas).float())).double().numpy()
        elif not grid.integer_timesteps:
            timesteps = timesteps.astype(np.float32)
        init_noise = 1.0
        if grid.euler_noise:
            largest = float(np.max(all_sigmas))
            init_noise = largest if c["timestep_spacing"] in ("linspace", "trailing") else math.sqrt(largest ** 2 + 1)
        alpha_next = sigma_next = None
        if grid.jumps:
            # DDIM steps by a fixed N // n, which skips past the next timestep for linspace and trailing grids.
            target = timesteps - n_train // steps
            target_sigma = np.where(target >= 0, table[np.clip(target, 0, None).astype(np.int64)], final)
            alpha_next, sigma_next = _vp_alpha_sigma(target_sigma)
        return self._finish(timesteps, all_sigmas, alpha, sigma_t, init_noise, alpha_next, sigma_next)

    def _discretize_flow(self, steps: int, mu: float | None, custom_sigmas) -> Discretization:
        c = self._config
        n_train, convention = c["num_train_timesteps"], self.convention
        dynamic = c["use_dynamic_shifting"]
        if dynamic and mu is None and convention != "dpmsolver":
            raise ValueError("mu (or image_seq_len) is required when use_dynamic_shifting is True")
        if convention == "flow_match":
            if custom_sigmas is not None:
                # diffusers takes custom sigmas as float32 and shifts them in float32 (numpy keeps the array's
                # dtype against Python floats); doing the same is what reproduces its timesteps.
                s = np.array(custom_sigmas, dtype=np.float32).ravel()
                if s.size != steps:
                    raise ValueError(f"sigmas has {s.size} values but steps is {steps}")
            else:
                high, low = self._flow_match_ends()
                s = np.linspace(high * n_train, low * n_train, steps) / n_train
            s = shift_dynamic(s, mu, c["time_shift_type"]) if dynamic else shift_static(s, c["shift"])
            if c["shift_terminal"] is not None:
                s = stretch_to_terminal(s, c["shift_terminal"])
            if c["sigma_spacing"] is not None:
                s = sigma_ramp(c["sigma_spacing"], float(s[-1]), float(s[0]), steps, rho=c["rho"],
                               beta_alpha=c["beta_alpha"], beta_beta=c["beta_beta"])
            s32 = torch.from_numpy(np.array(s, dtype=np.float64)).float()
            if c["invert_sigmas"]:
                # Inverted in float32 by diffusers, so its timesteps are (1 - s32) * N.
                s32 = 1.0 - s32
                s = s32.double().numpy()
            timesteps = (s32 * n_train).double().numpy()
        elif convention == "dpmsolver":
            shift = float(np.exp(mu)) if (dynamic and mu is not None) else c["shift"]
            s = 1.0 - np.linspace(1, 1 / n_train, steps + 1)
            s = shift_static(s, shift)[::-1][:-1].copy()
            timesteps = np.trunc(s * n_train)
        else:
            s = np.linspace(1, 1 / n_train, steps + 1)[:-1]
            s = shift_dynamic(s, mu, c["time_shift_type"]) if dynamic else shift_static(s, c["shift"])
            if c["shift_terminal"] is not None:
                s = stretch_to_terminal(s, c["shift_terminal"])
            # UniPC keeps the first point off s = 1, where the model sees no signal at all.
            if abs(s[0] - 1) < 1e-6:
                s[0] -= 1e-6
            timesteps = np.trunc(s * n_train)
        if c["invert_sigmas"]:
            final = 1.0
        elif c["final_sigma"] == "zero":
            final = 0.0
        elif c["final_sigma"] == "sigma_min":
            final = float(s[-1])
        else:
            final = c["final_sigma"]
        all_s = np.append(s, final)
        alpha, sigma_t = (all_s, 1.0 - all_s) if c["invert_sigmas"] else (1.0 - all_s, all_s)
        return self._finish(timesteps, all_s, alpha, sigma_t, 1.0)

    def _flow_match_ends(self):
        """Flow times of the first and last training timestep, statically shifted in float32 as diffusers' init does."""
        c = self._config
        ends = torch.tensor([c["num_train_timesteps"], 1.0], dtype=torch.float32) / c["num_train_timesteps"]
        if not c["use_dynamic_shifting"]:
            ends = c["shift"] * ends / (1 + (c["shift"] - 1) * ends)
        return float(ends[0]), float(ends[1])

    def _discretize_ve(self, steps: int) -> Discretization:
        c = self._config
        convention, spacing = self.convention, c["sigma_spacing"]
        if convention == "cm":
            n_train = c["num_train_timesteps"]
            if steps > n_train:
                raise ValueError(f"steps ({steps}) cannot exceed num_train_timesteps ({n_train})")
            # Multistep consistency sampling picks its points from the N-point Karras grid the model was
            # trained on (Song et al. 2023, arXiv:2303.01469, Algorithm 1).
            grid_index = (np.arange(steps) * (n_train // steps)).round()
            sigmas = karras_sigmas(grid_index / (n_train - 1), c["sigma_min"], c["sigma_max"], c["rho"])
            timesteps = 1000 * 0.25 * np.log(sigmas + 1e-44)
            final = c["sigma_min"]
            init_noise = c["sigma_max"]
        else:
            # EDMEuler builds its Karras ramp in float64, EDM-DPMSolver in float32; both take the exponential
            # ramp through a float32 linspace. Those are the sigmas their models see, so they are kept.
            ramp_dtype = torch.float64 if convention == "edm" else torch.get_default_dtype()
            if spacing == "karras":
                ramp = torch.linspace(0, 1, steps, dtype=ramp_dtype)
                sigmas = karras_sigmas(ramp, c["sigma_min"], c["sigma_max"], c["rho"]).double().numpy()
            elif spacing == "exponential":
                log_ramp = torch.linspace(math.log(c["sigma_min"]), math.log(c["sigma_max"]), steps)
                sigmas = log_ramp.exp().flip(0).double().numpy()
            else:
                sigmas = sigma_ramp(spacing, c["sigma_min"], c["sigma_max"], steps, rho=c["rho"],
                                    beta_alpha=c["beta_alpha"], beta_beta=c["beta_beta"])
            sigmas32 = torch.from_numpy(np.array(sigmas, dtype=np.float64)).float()
            timesteps = (0.25 * torch.log(sigmas32)).double().numpy()
            if c["final_sigma"] == "zero":
                final = 0.0
            else:
                final = float(sigmas[-1]) if convention == "edm" else c["sigma_min"]
            init_noise = math.sqrt(c["sigma_max"] ** 2 + 1)
        all_sigmas = np.append(sigmas, final)
        return self._finish(timesteps, all_sigmas, np.ones_like(all_sigmas), all_sigmas, init_noise)


def _lcm_timesteps(n_train: int, original_steps: int, steps: int) -> np.ndarray:
    """LCM/TCD: ``steps`` evenly spaced picks from the skipping-step grid of distillation (arXiv:2310.04378)."""
    if steps > original_steps:
        raise ValueError(f"steps ({steps}) cannot exceed original_inference_steps ({original_steps}): the "
                         f"schedule is a subset of that skipping grid")
    skip = n_train // original_steps
    origin = (np.arange(1, original_steps + 1) * skip - 1)[::-1]
    picks = np.floor(np.linspace(0, original_steps, num=steps, endpoint=False)).astype(np.int64)
    return origin[picks].astype(np.float64)
