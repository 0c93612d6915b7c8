"""``pydiff.sample``: the sampling loop -- one batched model call and one fused lincomb per stage, no host sync."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..ops.linear import SUPPORTED_DTYPES
from .kernel import MomentsKernel, StepKernel
from .grid import Grid
from .plan import Plan
from .solvers import SAMPLERS, Sampler
from .sources import grid_for

NoiseSampler = Callable[[int, torch.Tensor], torch.Tensor]


class _DefaultSteps(int):
    """The default step count, told apart from an explicit 20 so a `Grid` schedule can fix its own count."""


DEFAULT_STEPS = _DefaultSteps(20)


def resolve_sampler(sampler) -> Sampler:
    """A `Sampler` from a registry name or an instance."""
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)} or a Sampler instance, got {sampler!r}")
        return SAMPLERS[sampler]()
    raise TypeError(f"sampler must be a name or a pydiff.samplers.Sampler, got {type(sampler).__name__}")


def _check_guidance(guidance_scale, cond, uncond) -> Optional[float]:
    """The guidance scale in force, or None when the model is called once per step without guidance."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or \
            not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    for name, value in (("cond", cond), ("uncond", uncond)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a dict of model keyword arguments, got {type(value).__name__}")
    if uncond is None:
        if guidance_scale != 1.0:
            raise ValueError(f"guidance_scale={guidance_scale} needs uncond (the unconditional model kwargs)")
        return None
    if guidance_scale == 1.0:
        return None
    if set(cond or {}) != set(uncond):
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond or {})} and {sorted(uncond)}")
    return float(guidance_scale)


def _check_rescale(guidance_rescale, guidance: Optional[float]) -> float:
    """The guidance-rescale factor phi in [0, 1]; phi > 0 needs classifier-free guidance to be on."""
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, (int, float)) or \
            not math.isfinite(guidance_rescale) or not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be a finite number in [0, 1], got {guidance_rescale!r}")
    if guidance_rescale > 0 and guidance is None:
        raise ValueError(f"guidance_rescale={guidance_rescale} needs classifier-free guidance: pass uncond and a "
                         "guidance_scale != 1")
    return float(guidance_rescale)


def rescale_factors(moments: torch.Tensor, numel: int, guidance_scale: float, guidance_rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, sec. 3.4): r_b = phi std(cond_b) / std(guided_b) + 1 - phi, float64 (B,).

    moments: ``pair_moments(cond, uncond)`` (B, 5); numel: elements per row. The sums of the guided output
    g cond + (1 - g) uncond follow from the moments by expanding its square, and the (n - 1) of both variances
    cancels in the ratio. A row whose guided output is constant (centred sum of squares at the rounding level of the
    raw one, 1e-12 of it: std/|mean| < 1e-6), where diffusers would divide by zero, is left unscaled (r = 1).
    Device ops on (B,) tensors only (no host sync), and few of them: each is a kernel launch per stage.
    """
    g, h, phi = guidance_scale, 1.0 - guidance_scale, guidance_rescale
    s_c, s_u, s_cc, s_uu, s_cu = moments.unbind(1)
    s_g = torch.lerp(s_u, s_c, g)
    s_gg = (g * g) * s_cc + (h * h) * s_uu + (2.0 * g * h) * s_cu
    ss_c = torch.addcmul(s_cc, s_c, s_c, value=-1.0 / numel)  # centred sums of squares: (n - 1) var
    ss_g = torch.addcmul(s_gg, s_g, s_g, value=-1.0 / numel)
    ratio = (ss_c.clamp_min(0.0) / ss_g).sqrt()  # inf/NaN on flat rows, which the where drops
    return torch.where(ss_g > 1e-12 * s_gg, phi * ratio + (1.0 - phi), 1.0)


def model_output_columns(inputs: Sequence[str]) -> slice:
    """The columns of a wiring's table that read the model outputs (cond, uncond): adjacent by the plan's order."""
    columns = [j for j, name in enumerate(inputs) if name in ("cond", "uncond")]
    if not columns:
        return slice(0, 0)
    if columns[-1] - columns[0] + 1 != len(columns):
        raise RuntimeError(f"the model-output columns of wiring {inputs} are not adjacent")
    return slice(columns[0], columns[-1] + 1)


def rescaled_coefs(coefs: torch.Tensor, columns: slice, factors: torch.Tensor) -> torch.Tensor:
    """Per-batch coefficients (B, n_out+1, n_in+1): the (1, ...) table with its model-output columns scaled by r_b.

    Every row is linear in the guided output g cond + (1 - g) uncond, so scaling that output by r_b is scaling the
    cond and uncond columns of every row (the clamped intermediate's included).
    """
    out = coefs.repeat(factors.shape[0], 1, 1)
    out[:, :, columns].mul_(factors[:, None, None])
    return out


def _batched_cond(cond, uncond, batch: int, guided: bool) -> Dict[str, Any]:
    """Model kwargs for one call: cond alone, or cond then uncond concatenated along the batch (built once)."""
    cond = dict(cond or {})
    if not guided:
        return cond
    merged = {}
    for key, c in cond.items():
        u = uncond[key]
        if isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor):
            if c.shape[1:] != u.shape[1:] or c.shape[0] != u.shape[0]:
                raise ValueError(f"cond[{key!r}] is {tuple(c.shape)} but uncond[{key!r}] is {tuple(u.shape)}")
            merged[key] = torch.cat([c, u])
        elif isinstance(c, torch.Tensor) or isinstance(u, torch.Tensor) or c != u:
            raise ValueError(f"cond[{key!r}] and uncond[{key!r}] must both be tensors (concatenated along the "
                             "batch) or equal non-tensor values")
        else:
            merged[key] = c
    return merged


def _check_noise(noise) -> None:
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a tensor, got {type(noise).__name__}")
    if noise.dim() < 1 or noise.shape[0] < 1:
        raise ValueError(f"noise must have a non-empty batch dimension, got shape {tuple(noise.shape)}")
    if noise.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"noise has dtype {noise.dtype}; expected one of {SUPPORTED_DTYPES}")


def check_model_output(out, x: torch.Tensor, batch: int, step: int) -> None:
    """Shape/dtype/device of a model output against the sample (metadata only: no sync)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor, got {type(out).__name__} at stage {step}")
    expected = (batch,) + tuple(x.shape[1:])
    if tuple(out.shape) != expected or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"model output at stage {step} is {tuple(out.shape)} {out.dtype} on {out.device}; expected "
                         f"{expected} {x.dtype} on {x.device} like the sample")


def check_finite_output(out: torch.Tensor, step: int) -> None:
    """Raise on NaN/inf in a model output. Reads a flag back to the host: a sync by nature, so opt-in."""
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"the model output at stage {step} contains NaN or inf")


def draw_noise(like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard-normal noise shaped like ``like``, drawn the way diffusers' randn_tensor draws it."""
    if generator is not None and generator.device.type != like.device.type:
        return torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


_DEVICE_PLANS: "OrderedDict[tuple, Plan]" = OrderedDict()
_DEVICE_PLANS_LOCK = threading.Lock()


def plan_on(plan: Plan, device: torch.device) -> Plan:
    """The plan's tables on ``device`` (copied once per plan and device, then reused)."""
    if device.type == "cpu":
        return plan
    if torch.compiler.is_compiling():  # (the copy becomes the graph's constants)
        return plan.to(device)
    key = (id(plan), str(device))
    with _DEVICE_PLANS_LOCK:
        hit = _DEVICE_PLANS.get(key)
        if hit is not None and hit[0] is plan:
            return hit[1]
    moved = plan.to(device)
    with _DEVICE_PLANS_LOCK:
        _DEVICE_PLANS[key] = (plan, moved)
        while len(_DEVICE_PLANS) > 64:
            _DEVICE_PLANS.popitem(last=False)
    return moved


def run_plan(model, x: torch.Tensor, plan: Plan, kwargs: Dict[str, Any], guided: bool, generator,
             noise_sampler: Optional[NoiseSampler], check_finite: bool = False, progress=None, *, start: int = 0,
             history: Optional[Mapping[str, torch.Tensor]] = None, guidance_scale: float = 1.0,
             guidance_rescale: float = 0.0) -> torch.Tensor:
    """The loop proper: every stage reads device views only (table rows, timesteps), so it can be graph-captured.

    x: the state the plan starts from (model space for a model-space plan); start, history: resume at stage
    ``start`` with the solver history slots given (e.g. exact starting values of a multistep method).
    guidance_scale, guidance_rescale: with guidance rescale on (phi > 0, guided plans only) each stage first reduces
    cond and uncond to per-row moments (``pydiff::pair_moments``) and scales the model-output columns of its
    coefficients by the factors `rescale_factors` derives from them on the device. The step itself stays one
    lincomb pass; the reduction is a pass of its own, since it must finish before any element is written.
    """
    if guidance_rescale > 0 and not guided:
        raise ValueError("guidance_rescale > 0 needs a guided plan (guided=True)")
    batch = x.shape[0]
    calls = 2 * batch if guided else batch
    # float32 model timesteps like diffusers'; float64 runs keep them exact (solver-order studies)
    timesteps = plan.timesteps.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    slots: Dict[str, torch.Tensor] = {**dict(history or {}), "x": x}
    kernel = StepKernel(x.device)
    rescale = guidance_rescale > 0
    if rescale:
        moments = MomentsKernel(x.device)
        numel = math.prod(x.shape[1:])
        model_columns = [model_output_columns(w.inputs) for w in plan.wirings]
    for i in range(start, len(plan)):
        state = slots["x"]
        t = timesteps[i].expand(calls)
        out = model(torch.cat([state, state]) if guided else state, t, **kwargs)
        check_model_output(out, state, calls, i)
        if check_finite:
            check_finite_output(out, i)
        if guided:
            slots["cond"], slots["uncond"] = out[:batch], out[batch:]
        else:
            slots["cond"] = out
        if plan.draw_noise[i]:
            if noise_sampler is None:
                slots["noise"] = draw_noise(state, generator)
            else:
                slots["noise"] = noise = noise_sampler(i, state)
                if not isinstance(noise, torch.Tensor) or noise.shape != state.shape or \
                        noise.dtype != state.dtype or noise.device != state.device:
                    raise ValueError(f"noise_sampler must return a tensor like the sample ({tuple(state.shape)} "
                                     f"{state.dtype} on {state.device}), got {getattr(noise, 'shape', noise)!r}")
        wiring = plan.wirings[plan.kind[i]]
        coefs = plan.stage_coefs(i)
        if rescale:
            factors = rescale_factors(moments(slots["cond"], slots["uncond"]), numel, guidance_scale,
                                      guidance_rescale)
            coefs = rescaled_coefs(coefs, model_columns[plan.kind[i]], factors)
        outs = kernel([slots[name] for name in wiring.inputs], coefs, plan.clamp)
        carried = {dst: slots[src] for dst, src in plan.carry[i].items() if src in slots}
        slots.update(carried)
        slots.update(zip(wiring.outputs, outs))
        if progress is not None:
            progress.update(1)
    return slots["x"]


class _GraphRunner:
    """A captured CUDA graph of the whole loop (model + fused steps) with static input buffers; its input times
    ``init_scale`` is the loop's starting state."""

    def __init__(self, model, noise, plan, kwargs, guided, generator, noise_sampler, guidance, init_scale):
        self._keep = (model, plan, generator, noise_sampler)  # the cache key holds their ids: keep them alive
        self.noise = noise.clone()
        self.kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        side = torch.cuda.Stream(device=noise.device)
        side.wait_stream(torch.cuda.current_stream(noise.device))
        with torch.cuda.stream(side):
            # warm-up outside the capture: compiles kernels, initialises libraries, fills the allocator
            run_plan(model, self.noise * init_scale, plan, self.kwargs, guided, generator, noise_sampler, **guidance)
        torch.cuda.current_stream(noise.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        if generator is not None:
            if not hasattr(self.graph, "register_generator_state"):
                raise RuntimeError("this torch cannot capture a custom generator in a CUDA graph; pass generator=None")
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self.out = run_plan(model, self.noise * init_scale, plan, self.kwargs, guided, generator, noise_sampler,
                                **guidance)

    def __call__(self, noise, kwargs) -> torch.Tensor:
        self.noise.copy_(noise)
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                self.kwargs[k].copy_(v)
        self.graph.replay()
        return self.out.clone()


_GRAPHS: "OrderedDict[tuple, _GraphRunner]" = OrderedDict()
_GRAPHS_LOCK = threading.Lock()


def check_graph(cuda_graph: bool, noise: torch.Tensor, check_finite: bool, generator) -> None:
    """What ``cuda_graph=True`` needs: CUDA noise, no host reads, a CUDA generator or none."""
    if cuda_graph and noise.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got noise on {noise.device}")
    if cuda_graph and check_finite:
        raise ValueError("check_finite reads values back to the host and cannot run inside a CUDA graph")
    if cuda_graph and generator is not None and generator.device.type != "cuda":
        raise ValueError("cuda_graph=True needs a CUDA generator (or None): CPU draws cannot be captured")


def run_graphed(model, noise: torch.Tensor, plan: Plan, kwargs, guided: bool, generator, noise_sampler,
                init_scale: float, **guidance_kw) -> torch.Tensor:
    """``run_plan`` from ``noise * init_scale`` as a CUDA graph captured on first use and replayed after (cached per
    model, plan, shapes and settings; the last 8 kept)."""
    sig = tuple(sorted((k, (tuple(v.shape), v.dtype, str(v.device)) if isinstance(v, torch.Tensor) else repr(v))
                       for k, v in kwargs.items()))
    key = (id(model), id(plan), tuple(noise.shape), noise.dtype, str(noise.device), sig, guided, id(generator),
           id(noise_sampler), float(init_scale), tuple(sorted(guidance_kw.items())))
    with _GRAPHS_LOCK:
        runner = _GRAPHS.get(key)
    if runner is None:
        runner = _GraphRunner(model, noise, plan, kwargs, guided, generator, noise_sampler, guidance_kw, init_scale)
        with _GRAPHS_LOCK:
            _GRAPHS[key] = runner
            while len(_GRAPHS) > 8:
                _GRAPHS.popitem(last=False)
    return runner(noise, kwargs)


def _sampler_grid(model, sampler, steps, schedule, mu) -> Tuple[Sampler, Grid]:
    """The sampler and its grid; schedule None: ``model.scheduler_config``; a `Grid` fixes the step count."""
    sampler = resolve_sampler(sampler)
    if isinstance(schedule, Grid) and steps is DEFAULT_STEPS:
        steps = None
    return sampler, grid_for(schedule if schedule is not None else getattr(model, "scheduler_config", None), steps,
                             sampler, mu=mu)


def sampling_setup(model, noise: torch.Tensor, sampler, steps: Optional[int], schedule, mu: Optional[float],
                   guidance_scale: float, cond, uncond, guidance_rescale: float, noise_sampler):
    """``pydiff.sample``'s argument checks and its (sampler, grid, guidance or None, rescale phi), for the calls that
    take its arguments (``pydiff.teleport.sample_teleported``)."""
    _check_noise(noise)
    sampler, grid = _sampler_grid(model, sampler, steps, schedule, mu)
    guidance = _check_guidance(guidance_scale, cond, uncond)
    rescale = _check_rescale(guidance_rescale, guidance)
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError("noise_sampler must be a callable (step index, sample) -> noise")
    return sampler, grid, guidance, rescale


def sample(model: Callable[..., torch.Tensor], noise: torch.Tensor, sampler="dpmpp_2m",
           steps: Optional[int] = DEFAULT_STEPS,
           schedule=None, guidance_scale: float = 1.0, cond: Optional[Mapping[str, Any]] = None,
           uncond: Optional[Mapping[str, Any]] = None, generator: Optional[torch.Generator] = None,
           progress: bool = False, cuda_graph: bool = False, *, noise_sampler: Optional[NoiseSampler] = None,
           check_finite: bool = False, mu: Optional[float] = None, guidance_rescale: float = 0.0) -> torch.Tensor:
    """Sample from ``model(x, t, **cond)`` starting at standard-normal ``noise`` (B, ...); returns x0 (B, ...).

    sampler: a name in ``SAMPLERS`` or a `Sampler` instance (options such as DDIM's eta live there).
    schedule: a `pydiff.schedules.Schedule`, a diffusers-style config dict, a diffusers scheduler, or a `Grid`
    (which fixes the step count: ``steps`` may be left out); None uses ``model.scheduler_config``.
    guidance_scale, cond, uncond: classifier-free guidance -- with uncond given and a scale != 1 the model is called
    once per stage on cond and uncond concatenated along the batch.
    guidance_rescale: phi in [0, 1], guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed", sec. 3.4): per batch row the guided output is scaled by phi std(cond) / std(guided) + 1 - phi
    (std over all non-batch elements), as diffusers' ``rescale_noise_cfg``; needs guidance on. A row whose guided
    output is constant is left unscaled. Costs one extra read of the model outputs per stage.
    generator: the random stream of stochastic samplers (drawn like diffusers, so a seed reproduces its runs);
    noise_sampler(i, x) -> noise overrides it. progress: a tqdm bar. cuda_graph: capture the loop (model + steps)
    into a CUDA graph on first use and replay it (the graph is cached per model, shapes and settings).
    check_finite: raise on NaN/inf in a model output -- a host sync per stage by nature, so off by default.
    mu: the dynamic-shift parameter of flow schedules (Flux).
    """
    sampler, grid, guidance, rescale = sampling_setup(model, noise, sampler, steps, schedule, mu, guidance_scale,
                                                      cond, uncond, guidance_rescale, noise_sampler)
    check_graph(cuda_graph, noise, check_finite, generator)
    kwargs = _batched_cond(cond, uncond, noise.shape[0], guidance is not None)
    plan = plan_on(sampler.plan(grid, guidance, model_space=True), noise.device)
    guidance_kw = dict(guidance_scale=guidance if guidance is not None else 1.0, guidance_rescale=rescale)
    with torch.no_grad():
        if cuda_graph:
            return run_graphed(model, noise, plan, kwargs, guidance is not None, generator, noise_sampler,
                               plan.init_scale, **guidance_kw)
        return run_with_progress(model, noise * plan.init_scale, plan, kwargs, guidance is not None, generator,
                                 noise_sampler, check_finite, f"pydiff {sampler.name}" if progress else None,
                                 **guidance_kw)


def run_with_progress(model, x: torch.Tensor, plan: Plan, kwargs, guided: bool, generator, noise_sampler,
                      check_finite: bool, desc: Optional[str], start: int = 0, **guidance_kw) -> torch.Tensor:
    """``run_plan`` from stage ``start`` with a tqdm bar named ``desc`` over its stages (no bar when desc is None)."""
    bar = None
    if desc is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan) - start, desc=desc)
    try:
        return run_plan(model, x, plan, kwargs, guided, generator, noise_sampler, check_finite, bar, start=start,
                        **guidance_kw)
    finally:
        if bar is not None:
            bar.close()


class SamplerModule(torch.nn.Module):
    """A whole sampler as one module, ``pydiff.sample`` with the sampler, steps, schedule and guidance fixed when
    made: ``forward(noise, cond, uncond=None, step_noise=None) -> x0``. Its stages unroll into one graph under
    ``torch.export`` / ``torch.compile`` (the per-stage coefficients become constants), which is how pydiff.export
    exports a few-step sampler with its model.

    noise: (B, ...) standard normal, as ``pydiff.sample`` takes it; cond, uncond: dicts of model keyword arguments
    (uncond exactly when made with guidance_scale != 1). step_noise: the noise of the stochastic samplers' stages,
    (S, B, ...) for the S stages that draw it (``len(module.noise_stages)``; none for deterministic samplers), so
    the graph itself draws nothing and reproduces ``pydiff.sample(..., noise_sampler=...)`` given the same draws.
    """

    def __init__(self, model: torch.nn.Module, sampler="dpmpp_2m", steps: Optional[int] = DEFAULT_STEPS,
                 schedule=None, guidance_scale: float = 1.0, guidance_rescale: float = 0.0,
                 mu: Optional[float] = None):
        super().__init__()
        self.model = model
        self.sampler, grid = _sampler_grid(model, sampler, steps, schedule, mu)
        # guided exactly when the scale is not 1: the unconditional inputs come with each call
        self.guidance = _check_guidance(guidance_scale, {}, {})
        self.guidance_rescale = _check_rescale(guidance_rescale, self.guidance)
        self.plan = self.sampler.plan(grid, self.guidance, model_space=True)
        #: the stages that draw noise, in order (step_noise's rows)
        self.noise_stages = tuple(i for i, draws in enumerate(self.plan.draw_noise) if draws)

    def forward(self, noise: torch.Tensor, cond: Optional[Mapping[str, Any]] = None,
                uncond: Optional[Mapping[str, Any]] = None, step_noise: Optional[torch.Tensor] = None):
        _check_noise(noise)
        guided = self.guidance is not None
        if guided != (uncond is not None):
            raise ValueError(f"uncond must be given exactly when the module guides (made with guidance_scale "
                             f"{self.guidance if guided else 1.0}), got {'None' if uncond is None else 'a dict'}")
        _check_guidance(self.guidance or 1.0, cond, uncond)
        kwargs = _batched_cond(cond, uncond, noise.shape[0], guided)
        noise_sampler = None
        if self.noise_stages:
            expected = (len(self.noise_stages), *noise.shape)
            if not isinstance(step_noise, torch.Tensor) or tuple(step_noise.shape) != expected or \
                    step_noise.dtype != noise.dtype or step_noise.device != noise.device:
                raise ValueError(f"step_noise must be a {noise.dtype} tensor of shape {expected} on {noise.device} "
                                 f"({self.sampler.name} draws noise at {len(self.noise_stages)} stages), got "
                                 f"{getattr(step_noise, 'shape', step_noise)!r}")
            row = {stage: j for j, stage in enumerate(self.noise_stages)}
            noise_sampler = lambda i, x: step_noise[row[i]]  # noqa: E731
        elif step_noise is not None:
            raise ValueError(f"step_noise must be None: {self.sampler.name} draws no noise")
        plan = plan_on(self.plan, noise.device)
        return run_plan(self.model, noise * plan.init_scale, plan, kwargs, guided, None, noise_sampler,
                        guidance_scale=self.guidance or 1.0, guidance_rescale=self.guidance_rescale)


__all__ = ["DEFAULT_STEPS", "SamplerModule", "check_model_output", "draw_noise", "rescale_factors", "resolve_sampler",
           "run_plan", "sample"]
