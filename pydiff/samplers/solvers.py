"""Every sampler as coefficient derivations: float64 host math, once per (grid, sampler, guidance).

Each sampler turns a `Grid` into `Stage`s: per model evaluation, the fused update written with `Lin` values
(see plan.py) in the sampler's own sample space -- the space diffusers' matching scheduler keeps its sample in:
VP space (x = alpha x0 + sigma eps) for DDIM, DPM-Solver++, UniPC, LCM, TCD; k-diffusion space (x = x0 + sigma eps,
model input x / sqrt(sigma^2 + 1)) for Euler, Euler ancestral and Heun; flow space (x = (1-s) x0 + s eps) for the
flow samplers; EDM space for consistency models. ``m`` is the model output after guidance and ``d`` the clamped
intermediate (the x0 prediction, or eps for UniPC's noise-prediction form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, List, Optional, Tuple

import torch

from .grid import Grid, alpha_sigma, log_snr, to_data, to_noise
from .plan import Lin, Plan, Stage, compile_plan, to_model_space

X = Lin.of("x")
D = Lin.of("d")
NOISE = Lin.of("noise")


def model_output(guidance_scale: Optional[float]) -> Lin:
    """The guided model output: uncond + g (cond - uncond) (Ho & Salimans 2022); just ``cond`` without guidance."""
    if guidance_scale is None:
        return Lin(cond=1.0)
    return Lin(cond=guidance_scale, uncond=1.0 - guidance_scale)


@dataclass(frozen=True)
class Sampler:
    """Base: a frozen, hashable set of options; ``stages`` is a pure function of the grid (no per-request state)."""

    name: ClassVar[str] = ""
    #: schedule kinds the sampler's sample space is defined for
    kinds: ClassVar[Tuple[str, ...]] = ("vp", "flow", "ve")
    #: model evaluations per step in diffusers' sense (Heun: 2)
    order: ClassVar[int] = 1
    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        """The stages of a run over ``grid`` (all of them; a run from ``start`` uses stages[start:])."""
        raise NotImplementedError

    @property
    def clamp(self) -> float:
        """The clamp applied to the intermediate (sample clipping); <= 0 for none."""
        return 0.0

    def init_noise_sigma(self, grid: Grid) -> float:
        """Scale of the initial noise in this sampler's sample space."""
        if grid.kind == "ve":
            return grid.sigmas[0]
        return 1.0

    def check(self, grid: Grid) -> None:
        if grid.kind not in self.kinds:
            raise ValueError(f"sampler {self.name!r} works on {self.kinds} schedules, got a {grid.kind!r} schedule")

    def plan(self, grid: Grid, guidance_scale: Optional[float] = None, model_space: bool = True,
             keep_extras: bool = False, start: int = 0) -> Plan:
        """The compiled plan (cached per arguments; plans are read-only, so sharing them is thread-safe).

        start: the first stage run (img2img); multistep samplers warm up from there, as diffusers' do.
        """
        return _compiled_plan(self, grid, guidance_scale, model_space, keep_extras, start)


@lru_cache(maxsize=256)
def _compiled_plan(sampler: Sampler, grid: Grid, guidance_scale, model_space: bool, keep_extras: bool,
                   start: int = 0) -> Plan:
    sampler.check(grid)
    stages = sampler.stages(grid, model_output(guidance_scale), start)
    if not 0 <= start < len(stages):
        raise ValueError(f"start must lie in [0, {len(stages)}), got {start}")
    stages = stages[start:]
    init = sampler.init_noise_sigma(grid)
    if model_space:
        init *= stages[0].c_in
        stages = to_model_space(stages)
    drop = () if keep_extras else tuple({e for st in stages for e in st.extras})
    return compile_plan(stages, sampler.clamp, init, drop=drop)


# --------------------------------------------------------------------------------------------------------------
# DDIM


def _ddim_noise(a_t: float, a_prev: float, eta: float) -> Tuple[float, float]:
    """(std of the injected noise, weight of eps) of a DDIM step, rounded through float32 like diffusers.

    sqrt(1 - a_prev - std^2) cancels badly for eta near 1 (to exactly 0 in float32 on the first step of a cosine
    schedule, where float64 gives 7e-5); diffusers' models and users see the float32 value, so it is kept.
    """
    a_t32, a_prev32 = torch.tensor(a_t, dtype=torch.float32), torch.tensor(a_prev, dtype=torch.float32)
    variance = ((1 - a_prev32) / (1 - a_t32)) * (1 - a_t32 / a_prev32)
    std = eta * variance ** 0.5
    direction = (1 - a_prev32 - std ** 2).clamp(min=0) ** 0.5
    return float(std), float(direction)


@dataclass(frozen=True)
class DDIM(Sampler):
    """DDIM (Song et al. 2020, eq. 12): x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s z, s = eta sigma_t.

    Steps between training timesteps t and t - T // steps, like diffusers (which ends at final_alpha_cumprod).
    """

    eta: float = 0.0
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    use_clipped_model_output: bool = False

    name: ClassVar[str] = "ddim"
    kinds: ClassVar[Tuple[str, ...]] = ("vp",)

    @property
    def clamp(self) -> float:
        return self.clip_sample_range if self.clip_sample else 0.0

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        stride = grid.num_train_timesteps // grid.steps
        out = []
        for t in grid.timesteps:
            a_t = grid.alpha_bar(t)
            prev = int(t) - stride
            a_prev = grid.alpha_bar(prev) if prev >= 0 else grid.final_alpha_cumprod
            alpha, sigma = math.sqrt(a_t), math.sqrt(1.0 - a_t)
            x0 = to_data(grid.prediction_type, X, m, alpha, sigma)
            eps = (X - D * alpha) / sigma if self.use_clipped_model_output else \
                to_noise(grid.prediction_type, X, m, alpha, sigma)
            std, direction = _ddim_noise(a_t, a_prev, self.eta)
            x_prev = D * math.sqrt(a_prev) + eps * direction
            if self.eta > 0:
                x_prev = x_prev + NOISE * std
            out.append(Stage(t, 1.0, {"x": x_prev, "x0": D}, x0, draw_noise=self.eta > 0, extras=("x0",)))
        return out


# --------------------------------------------------------------------------------------------------------------
# Karras et al. 2022 (EDM) samplers in k-diffusion space


def _k_data(grid: Grid, sample: Lin, m: Lin, sigma: float, sigma_eps: Optional[float] = None) -> Lin:
    """x0 from a k-space sample x = x0 + sigma eps, the model having seen x / sqrt(sigma^2 + 1).

    sigma_eps: the sigma diffusers uses for epsilon prediction (Euler's churned sigma_hat).
    """
    if grid.prediction_type == "epsilon" and sigma_eps is not None:
        sigma = sigma_eps
    alpha, sig = alpha_sigma(grid.kind, sigma)
    return to_data(grid.prediction_type, sample * alpha, m, alpha, sig)


def _k_init(grid: Grid) -> float:
    return grid.init_noise_sigma


@dataclass(frozen=True)
class Euler(Sampler):
    """Euler on the probability-flow ODE in sigma (Karras et al. 2022, Alg. 2 with optional churn, S_churn)."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    name: ClassVar[str] = "euler"
    kinds: ClassVar[Tuple[str, ...]] = ("vp", "ve")

    def init_noise_sigma(self, grid: Grid) -> float:
        return _k_init(grid)

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        n = grid.steps
        out = []
        for i in range(n):
            sigma, sigma_next = grid.sigmas[i], grid.sigmas[i + 1]
            gamma = min(self.s_churn / n, 2 ** 0.5 - 1) if self.s_tmin <= sigma <= self.s_tmax else 0.0
            sigma_hat = sigma * (gamma + 1)
            sample = X
            if gamma > 0:
                sample = X + NOISE * (self.s_noise * math.sqrt(sigma_hat ** 2 - sigma ** 2))
            x0 = _k_data(grid, sample, m, sigma, sigma_eps=sigma_hat)
            x_next = sample + (sample - D) * ((sigma_next - sigma_hat) / sigma_hat)
            out.append(Stage(grid.timesteps[i], alpha_sigma(grid.kind, sigma)[0], {"x": x_next, "x0": D}, x0,
                             draw_noise=gamma > 0, extras=("x0",)))
        return out


@dataclass(frozen=True)
class EulerAncestral(Sampler):
    """Euler ancestral: Euler to sigma_down, then fresh noise of std sigma_up (k-diffusion sample_euler_ancestral)."""

    eta: float = 1.0
    s_noise: float = 1.0

    name: ClassVar[str] = "euler_ancestral"
    kinds: ClassVar[Tuple[str, ...]] = ("vp", "ve")

    def init_noise_sigma(self, grid: Grid) -> float:
        return _k_init(grid)

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        out = []
        for i in range(grid.steps):
            sigma, sigma_to = grid.sigmas[i], grid.sigmas[i + 1]
            sigma_up = min(sigma_to, self.eta * math.sqrt(sigma_to ** 2 * (sigma ** 2 - sigma_to ** 2) / sigma ** 2))
            sigma_down = math.sqrt(sigma_to ** 2 - sigma_up ** 2)
            x0 = _k_data(grid, X, m, sigma)
            x_next = X + (X - D) * ((sigma_down - sigma) / sigma) + NOISE * (self.s_noise * sigma_up)
            out.append(Stage(grid.timesteps[i], alpha_sigma(grid.kind, sigma)[0], {"x": x_next, "x0": D}, x0,
                             draw_noise=True, extras=("x0",)))
        return out


@dataclass(frozen=True)
class Heun(Sampler):
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1); Euler on the last step when it ends at sigma = 0.

    The first stage stores its slope; the second, at sigma_next, averages the two slopes. diffusers' timesteps for
    this sampler repeat every point but the first (2 * steps - 1 model calls).
    """

    clip_sample: bool = False
    clip_sample_range: float = 1.0

    name: ClassVar[str] = "heun"
    kinds: ClassVar[Tuple[str, ...]] = ("vp", "ve")
    order: ClassVar[int] = 2

    @property
    def clamp(self) -> float:
        return self.clip_sample_range if self.clip_sample else 0.0

    def init_noise_sigma(self, grid: Grid) -> float:
        return _k_init(grid)

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        out = []
        n = grid.steps
        for i in range(n):
            sigma, sigma_next = grid.sigmas[i], grid.sigmas[i + 1]
            dt = sigma_next - sigma
            slope = (X - D) / sigma
            x0 = _k_data(grid, X, m, sigma)
            second = sigma_next > 0 and (i + 1 < n or grid.final_timestep is not None)
            outputs = {"x": X + slope * dt, "x0": D}
            if second:
                outputs["slope"] = slope
            out.append(Stage(grid.timesteps[i], alpha_sigma(grid.kind, sigma)[0], outputs, x0, extras=("x0",)))
            if second:
                t_next = grid.timesteps[i + 1] if i + 1 < n else grid.final_timestep
                slope_next = (X - D) / sigma_next
                x_next = X + (slope_next - Lin.of("slope")) * (dt / 2)
                out.append(Stage(t_next, alpha_sigma(grid.kind, sigma_next)[0], {"x": x_next, "x0": D},
                                 _k_data(grid, X, m, sigma_next), extras=("x0",)))
        return out


# --------------------------------------------------------------------------------------------------------------
# Exponential integrators in log-SNR: DPM-Solver++ and UniPC


def _lambdas(grid: Grid) -> List[float]:
    return [log_snr(*grid.alpha_sigma(i)) for i in range(grid.steps + 1)]


@dataclass(frozen=True)
class DPMSolverPP(Sampler):
    """DPM-Solver++ multistep in data prediction (Lu et al. 2022, arXiv:2211.01095, Alg. 2 for 2M; 3M; SDE variants).

    order 1..3; sde: the SDE variant (sde-dpmsolver++); solver_type "midpoint" | "heun" (2nd-order form);
    lower_order_final / euler_at_final: diffusers' rules for the last steps (first order on the final step when the
    schedule ends at sigma = 0).
    exact_third_order: the 3M update as written by Lu et al.'s code, diffusers and k-diffusion weights its second
    difference D2 ~ h^2 x0''/2 by phi_3 ~ h/6, half the Taylor coefficient of the exponential integrator, which
    leaves a local error of O(h^3) -- the method is then globally 2nd order (see tests/test_samplers.py). False
    (default) keeps that formula for parity with diffusers; True doubles D2, giving the 3rd order the paper states.
    """

    solver_order: int = 2
    sde: bool = False
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    exact_third_order: bool = False

    def __post_init__(self):
        if self.solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {self.solver_order}")
        if self.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {self.solver_type!r}")

    @property
    def name(self) -> str:
        return f"dpmpp_{self.solver_order}m" + ("_sde" if self.sde else "")

    def step_order(self, i: int, n: int, final_zero: bool, start: int = 0) -> int:
        """diffusers' order at step i of n (run from step ``start``): warm-up from first order, lower at the end."""
        final = i == n - 1 and (self.euler_at_final or (self.lower_order_final and n < 15) or final_zero)
        second = i == n - 2 and self.lower_order_final and n < 15
        done = min(i - start, self.solver_order)
        if self.solver_order == 1 or done < 1 or final:
            return 1
        if self.solver_order == 2 or done < 2 or second:
            return 2
        return 3

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        n = grid.steps
        lam = _lambdas(grid)
        hist = [D, Lin.of("D1"), Lin.of("D2")]  # data predictions at points i, i-1, i-2
        out = []
        for i in range(n):
            alpha_s, sigma_s = grid.alpha_sigma(i)
            alpha_t, sigma_t = grid.alpha_sigma(i + 1)
            x0 = to_data(grid.prediction_type, X, m, alpha_s, sigma_s)
            order = self.step_order(i, n, grid.sigmas[-1] == 0.0, start)
            h = lam[i + 1] - lam[i]
            if order == 1:
                d_first, d_second, d_third = hist[0], None, None
            elif order == 2:
                r0 = (lam[i] - lam[i - 1]) / h
                d_first, d_second, d_third = hist[0], (hist[0] - hist[1]) / r0, None
            else:
                r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
                d1_0, d1_1 = (hist[0] - hist[1]) / r0, (hist[1] - hist[2]) / r1
                d_first = hist[0]
                d_second = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d_third = (d1_0 - d1_1) * ((2.0 if self.exact_third_order else 1.0) / (r0 + r1))
            x_next = self._update(X, alpha_t, sigma_t, sigma_s, h, d_first, d_second, d_third)
            outputs = {"x": x_next}
            if i + 1 < n:
                outputs["D1"] = D
            carry = {"D2": "D1"} if self.solver_order == 3 else {}
            out.append(Stage(grid.timesteps[i], 1.0, outputs, x0, carry=carry, draw_noise=self.sde))
        return out

    def _update(self, x, alpha_t, sigma_t, sigma_s, h, d0, d1, d2) -> Lin:
        e_h = math.exp(-h)  # 0 at the clean end (h = +inf)
        if not self.sde:
            phi1 = e_h - 1.0  # -(1 - e^-h)
            out = x * (sigma_t / sigma_s) - d0 * (alpha_t * phi1)
            if d1 is not None:
                if self.solver_type == "midpoint" and d2 is None:
                    out = out - d1 * (0.5 * alpha_t * phi1)
                else:
                    out = out + d1 * (alpha_t * (phi1 / h + 1.0))
            if d2 is not None:
                out = out - d2 * (alpha_t * ((phi1 + h) / h ** 2 - 0.5))
            return out
        e_2h = math.exp(-2.0 * h)
        out = x * (sigma_t / sigma_s * e_h) + d0 * (alpha_t * (1.0 - e_2h))
        if d1 is not None:
            if self.solver_type == "midpoint" and d2 is None:
                out = out + d1 * (0.5 * alpha_t * (1.0 - e_2h))
            else:
                out = out + d1 * (alpha_t * ((1.0 - e_2h) / (-2.0 * h) + 1.0))
        if d2 is not None:
            out = out + d2 * (alpha_t * ((1.0 - e_2h - 2.0 * h) / (2.0 * h) ** 2 - 0.5))
        return out + NOISE * (sigma_t * math.sqrt(max(1.0 - e_2h, 0.0)))


def _unipc_coefficients(lam: List[float], s0: int, t: int, prev: List[int], order: int, predict_x0: bool,
                        solver_type: str, corrector: bool) -> Tuple[float, float, List[float], float]:
    """UniPC's B(h) update from point s0 to t with earlier points ``prev`` (Zhao et al. 2023, Alg. 1-2).

    Returns (h_phi_1, B_h, rhos over the differences to ``prev``, rho of the new-point difference (corrector)).
    """
    h = lam[t] - lam[s0]
    hh = -h if predict_x0 else h
    h_phi_1 = math.expm1(hh)  # h phi_1(h) = e^h - 1
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if solver_type == "bh1" else math.expm1(hh)
    rks = [(lam[p] - lam[s0]) / h for p in prev] + [1.0]
    b, factorial = [], 1
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    big_r = torch.tensor([[r ** k for r in rks] for k in range(order)], dtype=torch.float64)
    b = torch.tensor(b, dtype=torch.float64)
    if corrector:
        rhos = [0.5] if order == 1 else torch.linalg.solve(big_r, b).tolist()
        return h_phi_1, b_h, rhos[:-1], rhos[-1]
    if order == 1:
        return h_phi_1, b_h, [], 0.0
    rhos = [0.5] if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b[:-1]).tolist()
    return h_phi_1, b_h, rhos, 0.0


@dataclass(frozen=True)
class UniPC(Sampler):
    """UniPC multistep: the UniP-p predictor with the UniC corrector (Zhao et al. 2023, arXiv:2302.04867).

    solver_type "bh1" | "bh2" picks B(h); solver_order 1..3; predict_x0: data (True) or noise prediction form;
    disable_corrector: step indices whose corrector is skipped (as diffusers'). The corrector for step i uses the
    model output at the uncorrected x_i, so corrector and next predictor fuse into one pass: with both written from
    the same base, x_i^c = x_i - (predictor terms of step i-1) + (corrector terms).
    """

    solver_order: int = 2
    solver_type: str = "bh2"
    predict_x0: bool = True
    lower_order_final: bool = True
    disable_corrector: Tuple[int, ...] = ()
    use_corrector: bool = True

    def __post_init__(self):
        if self.solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {self.solver_order}")
        if self.solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {self.solver_type!r}")
        object.__setattr__(self, "disable_corrector", tuple(int(i) for i in self.disable_corrector))

    @property
    def name(self) -> str:
        return f"unipc_{self.solver_type}"

    def step_order(self, i: int, n: int, start: int = 0) -> int:
        """diffusers' order at step i of n (run from step ``start``; 1 for the steps before it, never run)."""
        order = min(self.solver_order, n - i) if self.lower_order_final else self.solver_order
        return max(1, min(order, i - start + 1))

    def _terms(self, lam, s0: int, t: int, order: int, corrector: bool, alpha_t: float, sigma_t: float) -> Lin:
        """The B(h) terms of an update from point s0 to t (everything but the shared base), over m{k} names."""
        prev = [s0 - k for k in range(1, order)]
        _, b_h, rhos, rho_new = _unipc_coefficients(lam, s0, t, prev, order, self.predict_x0, self.solver_type,
                                                    corrector)
        m0 = Lin.of(f"m{s0}")
        h = lam[t] - lam[s0]
        res = Lin()
        for p, rho in zip(prev, rhos):
            res = res + (Lin.of(f"m{p}") - m0) * (rho * h / (lam[p] - lam[s0]))  # rho * D1_p with D1_p = dm / r_p
        if corrector:
            res = res + (Lin.of(f"m{t}") - m0) * rho_new
        scale = alpha_t if self.predict_x0 else sigma_t
        return res * (-scale * b_h)

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        n = grid.steps
        lam = _lambdas(grid)
        out = []
        pred_terms = Lin()
        for i in range(n):
            alpha_s, sigma_s = grid.alpha_sigma(i)
            alpha_t, sigma_t = grid.alpha_sigma(i + 1)
            convert = to_data if self.predict_x0 else to_noise
            m_i = convert(grid.prediction_type, X, m, alpha_s, sigma_s)
            sample = X
            if self.use_corrector and i > start and (i - 1) not in self.disable_corrector:
                corr = self._terms(lam, i - 1, i, self.step_order(i - 1, n, start), True, alpha_s, sigma_s)
                sample = X - pred_terms + corr
            order = self.step_order(i, n, start)
            h = lam[i + 1] - lam[i]
            if math.isinf(h) and (order > 1 or not self.predict_x0):
                raise ValueError("UniPC cannot step to sigma = 0 with order > 1 or predict_x0=False (the update is "
                                 "infinite; diffusers returns inf/nan there): use lower_order_final=True and "
                                 "predict_x0=True, or a final sigma above zero")
            if self.predict_x0:
                base = sample * (sigma_t / sigma_s) - Lin.of(f"m{i}") * (alpha_t * math.expm1(-h))
            else:
                base = sample * (alpha_t / alpha_s) - Lin.of(f"m{i}") * (sigma_t * math.expm1(h))
            pred_terms = self._terms(lam, i, i + 1, order, False, alpha_t, sigma_t)
            x_next = base + pred_terms
            outputs = {"x": self._slots(x_next, i)}
            if i + 1 < n:
                outputs["M1"] = D
            carry = {"M3": "M2", "M2": "M1"} if self.solver_order == 3 else {"M2": "M1"}
            out.append(Stage(grid.timesteps[i], 1.0, outputs, m_i, carry=carry))
        return out

    @staticmethod
    def _slots(lin: Lin, i: int) -> Lin:
        """Name the model outputs of points i, i-1, ... by the slots holding them at stage i."""
        names = {f"m{i}": "d", f"m{i - 1}": "M1", f"m{i - 2}": "M2", f"m{i - 3}": "M3"}
        out = Lin()
        for name, coef in lin.terms.items():
            if name.startswith("m") and name not in names:
                raise AssertionError(f"UniPC stage {i} reads {name}, which is no longer held")
            out = out + Lin({names.get(name, name): coef})
        return out


# --------------------------------------------------------------------------------------------------------------
# Flow matching (rectified flow: x = (1 - s) x0 + s eps, velocity v = eps - x0)


def _velocity(grid: Grid, sample: Lin, m: Lin, sigma: float) -> Lin:
    if grid.prediction_type == "flow_prediction":
        return m
    alpha, sig = alpha_sigma(grid.kind, sigma)
    x0 = to_data(grid.prediction_type, sample, m, alpha, sig)
    return (sample - x0) / sig


@dataclass(frozen=True)
class FlowEuler(Sampler):
    """Euler on the flow ODE dx/ds = v (Liu et al. 2022; Esser et al. 2024); stochastic: re-noise x0 to s_next."""

    stochastic: bool = False

    name: ClassVar[str] = "flow_euler"
    kinds: ClassVar[Tuple[str, ...]] = ("flow",)

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        out = []
        for i in range(grid.steps):
            sigma, sigma_next = grid.sigmas[i], grid.sigmas[i + 1]
            v = _velocity(grid, X, m, sigma)
            if self.stochastic:
                x0 = X - v * sigma
                x_next = x0 * (1.0 - sigma_next) + NOISE * sigma_next
            else:
                x_next = X + v * (sigma_next - sigma)
            out.append(Stage(grid.timesteps[i], 1.0, {"x": x_next}, draw_noise=self.stochastic))
        return out


@dataclass(frozen=True)
class FlowHeun(Sampler):
    """Heun on the flow ODE (Karras et al. 2022, Alg. 1 in flow time), Euler on a last step ending at s = 0."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    name: ClassVar[str] = "flow_heun"
    kinds: ClassVar[Tuple[str, ...]] = ("flow",)
    order: ClassVar[int] = 2

    def _gamma(self, sigma: float, count: int) -> float:
        return min(self.s_churn / count, 2 ** 0.5 - 1) if self.s_tmin <= sigma <= self.s_tmax else 0.0

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        n = grid.steps
        count = 2 * n - 1  # diffusers' len(sigmas) - 1 for the repeated Heun sigmas
        out = []
        for i in range(n):
            sigma, sigma_next = grid.sigmas[i], grid.sigmas[i + 1]
            gamma = self._gamma(sigma, count)
            sigma_hat = sigma * (gamma + 1)
            sample = X
            if gamma > 0:
                sample = X + NOISE * (self.s_noise * math.sqrt(sigma_hat ** 2 - sigma ** 2))
            slope = _velocity(grid, sample, m, sigma) * (sigma / sigma_hat)
            dt = sigma_next - sigma_hat
            second = sigma_next > 0 and (i + 1 < n or grid.final_timestep is not None)
            outputs = {"x": sample + slope * dt}
            if second:
                outputs["slope"] = slope
            out.append(Stage(grid.timesteps[i], 1.0, outputs, draw_noise=gamma > 0))
            if second:
                t_next = grid.timesteps[i + 1] if i + 1 < n else grid.final_timestep
                slope_next = _velocity(grid, X, m, sigma_next)
                x_next = X + (slope_next - Lin.of("slope")) * (dt / 2)
                # diffusers draws (and discards) churn noise in the second stage too; keep the streams aligned
                out.append(Stage(t_next, 1.0, {"x": x_next}, draw_noise=gamma > 0))
        return out


# --------------------------------------------------------------------------------------------------------------
# Distilled few-step samplers


def lcm_boundary(t, timestep_scaling: float, sigma_data: float = 0.5):
    """LCM's consistency boundary condition c_skip, c_out at train timestep t (Luo et al. 2023): the consistency
    function is c_skip x_t + c_out x0(x_t), with c_skip(0) = 1, c_out(0) = 0. t: a float or a tensor."""
    scaled = t * timestep_scaling
    c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
    c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
    return c_skip, c_out


@dataclass(frozen=True)
class LCM(Sampler):
    """Latent consistency model multistep sampling (Luo et al. 2023, Alg. 1): denoise, then re-noise to t_next."""

    clip_sample: bool = False
    clip_sample_range: float = 1.0
    timestep_scaling: float = 10.0

    name: ClassVar[str] = "lcm"
    kinds: ClassVar[Tuple[str, ...]] = ("vp",)

    @property
    def clamp(self) -> float:
        return self.clip_sample_range if self.clip_sample else 0.0

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        n = grid.steps
        out = []
        for i, t in enumerate(grid.timesteps):
            a_t = grid.alpha_bar(t)
            x0 = to_data(grid.prediction_type, X, m, math.sqrt(a_t), math.sqrt(1.0 - a_t))
            c_skip, c_out = lcm_boundary(t, self.timestep_scaling)
            denoised = D * c_out + X * c_skip
            last = i == n - 1
            if last:
                x_next = denoised
            else:
                a_prev = grid.alpha_bar(grid.timesteps[i + 1])
                x_next = denoised * math.sqrt(a_prev) + NOISE * math.sqrt(1.0 - a_prev)
            out.append(Stage(t, 1.0, {"x": x_next, "denoised": denoised}, x0, draw_noise=not last,
                             extras=("denoised",)))
        return out


@dataclass(frozen=True)
class TCD(Sampler):
    """Trajectory consistency distillation's strategic stochastic sampling (Zheng et al. 2024, arXiv:2402.19159).

    gamma (diffusers' ``eta``): the stochasticity; each step predicts x at s = floor((1 - gamma) t_next) and
    forward-diffuses it to t_next with fresh noise.
    """

    gamma: float = 0.3

    name: ClassVar[str] = "tcd"
    kinds: ClassVar[Tuple[str, ...]] = ("vp",)

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        n = grid.steps
        out = []
        for i, t in enumerate(grid.timesteps):
            t_prev = int(grid.timesteps[i + 1]) if i + 1 < n else 0
            # diffusers rounds (1 - gamma) * t_prev in float32 before the floor; do the same so s matches
            s = int(torch.floor(torch.tensor(t_prev) * (1 - self.gamma)).item())
            a_t, a_prev, a_s = grid.alpha_bar(t), grid.alpha_bar(t_prev), grid.alpha_bar(s)
            alpha, sigma = math.sqrt(a_t), math.sqrt(1.0 - a_t)
            x0 = to_data(grid.prediction_type, X, m, alpha, sigma)
            eps = to_noise(grid.prediction_type, X, m, alpha, sigma)
            noised = D * math.sqrt(a_s) + eps * math.sqrt(1.0 - a_s)
            stochastic = self.gamma > 0 and i != n - 1
            x_next = noised
            if stochastic:
                x_next = noised * math.sqrt(a_prev / a_s) + NOISE * math.sqrt(1.0 - a_prev / a_s)
            out.append(Stage(t, 1.0, {"x": x_next, "noised": noised}, x0, draw_noise=stochastic,
                             extras=("noised",)))
        return out


@dataclass(frozen=True)
class ConsistencyMultistep(Sampler):
    """Consistency-model multistep sampling (Song et al. 2023, Alg. 1) in EDM space with c_skip / c_out scalings.

    The model output is the raw network F; the denoiser is c_skip x + c_out F (clipped to [-1, 1] when
    clip_denoised), re-noised to the next sigma with std sqrt(sigma_next^2 - sigma_min^2).
    """

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    s_noise: float = 1.0
    clip_denoised: bool = True

    name: ClassVar[str] = "consistency"
    kinds: ClassVar[Tuple[str, ...]] = ("ve",)

    @property
    def clamp(self) -> float:
        return 1.0 if self.clip_denoised else 0.0

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        n = grid.steps
        sd, smin = self.sigma_data, self.sigma_min
        out = []
        for i in range(n):
            sigma, sigma_next = grid.sigmas[i], grid.sigmas[i + 1]
            c_skip = sd ** 2 / ((sigma - smin) ** 2 + sd ** 2)
            c_out = (sigma - smin) * sd / math.sqrt(sigma ** 2 + sd ** 2)
            sigma_hat = min(max(sigma_next, smin), self.sigma_max)
            # the last point is sigma_min itself (stored in float32 by diffusers): no noise is left to add there
            std = 0.0 if i == n - 1 else self.s_noise * math.sqrt(max(sigma_hat ** 2 - smin ** 2, 0.0))
            x_next = D + NOISE * std if n > 1 else D
            c_in = 1.0 / math.sqrt(sigma ** 2 + sd ** 2)
            out.append(Stage(grid.timesteps[i], c_in, {"x": x_next}, m * c_out + X * c_skip, draw_noise=n > 1))
        return out


@dataclass(frozen=True)
class OneStep(Sampler):
    """A one-step generator: one model call on the noise at the first grid point, converted to x0."""

    clip: float = 0.0

    name: ClassVar[str] = "one_step"

    @property
    def clamp(self) -> float:
        return self.clip

    def stages(self, grid: Grid, m: Lin, start: int = 0) -> List[Stage]:
        if grid.steps != 1:
            raise ValueError(f"the one-step sampler takes steps=1, got {grid.steps}")
        alpha, sigma = grid.alpha_sigma(0)
        return [Stage(grid.timesteps[0], 1.0, {"x": D}, to_data(grid.prediction_type, X, m, alpha, sigma))]


# --------------------------------------------------------------------------------------------------------------
# The registry: name -> a factory of a default-configured sampler


def _named(cls, name: str, **options):
    def make(**overrides):
        merged = {**options, **overrides}
        return cls(**merged)

    make.__name__ = name
    make.__doc__ = cls.__doc__
    make.sampler_class = cls
    make.defaults = options
    return make


SAMPLERS = {
    "ddim": _named(DDIM, "ddim"),
    "euler": _named(Euler, "euler"),
    "euler_ancestral": _named(EulerAncestral, "euler_ancestral"),
    "heun": _named(Heun, "heun"),
    "dpmpp_2m": _named(DPMSolverPP, "dpmpp_2m", solver_order=2),
    "dpmpp_3m": _named(DPMSolverPP, "dpmpp_3m", solver_order=3),
    "dpmpp_2m_sde": _named(DPMSolverPP, "dpmpp_2m_sde", solver_order=2, sde=True),
    "dpmpp_3m_sde": _named(DPMSolverPP, "dpmpp_3m_sde", solver_order=3, sde=True),
    "unipc": _named(UniPC, "unipc", solver_type="bh2"),
    "unipc_bh1": _named(UniPC, "unipc_bh1", solver_type="bh1"),
    "unipc_bh2": _named(UniPC, "unipc_bh2", solver_type="bh2"),
    "flow_euler": _named(FlowEuler, "flow_euler"),
    "flow_heun": _named(FlowHeun, "flow_heun"),
    "lcm": _named(LCM, "lcm"),
    "tcd": _named(TCD, "tcd"),
    "consistency": _named(ConsistencyMultistep, "consistency"),
    "one_step": _named(OneStep, "one_step"),
}
