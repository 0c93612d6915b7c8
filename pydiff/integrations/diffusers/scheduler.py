"""`FusedScheduler`: a drop-in diffusers scheduler whose ``step`` is one fused ``pydiff::lincomb`` pass.

    pipe.scheduler = FusedScheduler.from_scheduler(pipe.scheduler)

The wrapped scheduler keeps doing what is cheap and host-side (``set_timesteps``, so timesteps and sigmas are its
own numbers, and its config); every tensor operation per step -- prediction-type conversion, the solver update
and noise injection -- runs in our kernel from coefficients compiled once per ``set_timesteps``.
Mirrors DDIM, Euler, EulerAncestral, Heun, DPMSolverMultistep, UniPCMultistep, FlowMatchEuler, FlowMatchHeun,
LCM, TCD and CMStochasticIterative schedulers. Like them it is stateful (the step index and the solver history):
use one instance per concurrent generation.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from typing import Any, Dict, Optional, Tuple

import torch

from ...samplers.kernel import StepKernel
from ...samplers.grid import Grid
from ...samplers.loop import draw_noise, plan_on
from ...samplers.plan import Plan
from ...samplers.sources import sampler_from_diffusers

#: diffusers class -> (its step output class, extra output fields beside prev_sample)
_OUTPUTS = {
    "DDIMScheduler": ("DDIMSchedulerOutput", ("pred_original_sample",)),
    "EulerDiscreteScheduler": ("EulerDiscreteSchedulerOutput", ("pred_original_sample",)),
    "EulerAncestralDiscreteScheduler": ("EulerAncestralDiscreteSchedulerOutput", ("pred_original_sample",)),
    "HeunDiscreteScheduler": ("HeunDiscreteSchedulerOutput", ("pred_original_sample",)),
    "DPMSolverMultistepScheduler": ("SchedulerOutput", ()),
    "UniPCMultistepScheduler": ("SchedulerOutput", ()),
    "FlowMatchEulerDiscreteScheduler": ("FlowMatchEulerDiscreteSchedulerOutput", ()),
    "FlowMatchHeunDiscreteScheduler": ("FlowMatchHeunDiscreteSchedulerOutput", ()),
    "LCMScheduler": ("LCMSchedulerOutput", ("denoised",)),
    "TCDScheduler": ("TCDSchedulerOutput", ("pred_noised_sample",)),
    "CMStochasticIterativeScheduler": ("CMStochasticIterativeSchedulerOutput", ()),
}
SUPPORTED = tuple(_OUTPUTS)
_TABLE_FAMILY = ("DDIMScheduler", "LCMScheduler", "TCDScheduler")  # index alphas_cumprod by timestep
_TWO_STAGE = ("HeunDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
_FLOW = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
#: per-step keyword arguments that change the coefficients (anything else diffusers accepts is ignored, as there)
_COEF_KWARGS = ("eta", "use_clipped_model_output", "s_churn", "s_tmin", "s_tmax", "s_noise")


def _floats(t) -> list:
    return torch.as_tensor(t).detach().to("cpu", torch.float64).reshape(-1).tolist()


def grid_from_scheduler(scheduler) -> Grid:
    """The `Grid` of a diffusers scheduler after its ``set_timesteps``: its own timesteps and sigmas, unchanged."""
    name = type(scheduler).__name__
    config = scheduler.config
    timesteps = _floats(scheduler.timesteps)
    sigmas = _floats(scheduler.sigmas) if name not in _TABLE_FAMILY else None
    if name in _TWO_STAGE:
        # Heun repeats every point but the first: [t0, t1, t1, ...] and [s0, s1, s1, ..., 0]
        timesteps = timesteps[:1] + timesteps[1::2]
        sigmas = sigmas[:1] + sigmas[1::2]
    if name in _FLOW or config.get("use_flow_sigmas", False):
        kind = "flow"
    elif name == "CMStochasticIterativeScheduler":
        kind = "ve"
    else:
        kind = "vp"
    default_type = "flow_prediction" if name in _FLOW else "epsilon"
    acp = getattr(scheduler, "alphas_cumprod", None)
    final = getattr(scheduler, "final_alpha_cumprod", 1.0)
    init = getattr(scheduler, "init_noise_sigma", 1.0)
    return Grid.make(timesteps, sigmas, kind=kind, prediction_type=config.get("prediction_type", default_type),
                     alphas_cumprod=acp, final_alpha_cumprod=float(final),
                     num_train_timesteps=int(config.get("num_train_timesteps", 1000)), init_noise_sigma=float(init))


class FusedScheduler:
    """A diffusers scheduler with fused steps; build it with `from_scheduler` (or `from_config`).

    extra_outputs: also write the extra fields the original step returns (pred_original_sample, LCM's denoised,
    TCD's pred_noised_sample) -- one more output tensor per step; False skips them for speed.
    """

    def __init__(self, scheduler, extra_outputs: bool = True):
        name = type(scheduler).__name__
        if name not in _OUTPUTS:
            raise ValueError(f"FusedScheduler mirrors {SUPPORTED}; got {name}")
        self._inner = scheduler
        self._name = name
        self.extra_outputs = bool(extra_outputs)
        self._step_params = set(inspect.signature(type(scheduler).step).parameters)
        sampler_from_diffusers(scheduler)  # unsupported configs fail here, not mid-generation
        self._reset()
        self._grid: Optional[Grid] = None
        if getattr(scheduler, "num_inference_steps", None):
            self._grid = grid_from_scheduler(scheduler)

    @classmethod
    def from_scheduler(cls, scheduler, extra_outputs: bool = True) -> "FusedScheduler":
        """A fused replacement of ``scheduler`` (a copy of it is kept, the original is left untouched)."""
        if isinstance(scheduler, FusedScheduler):
            scheduler = scheduler._inner
        return cls(copy.deepcopy(scheduler), extra_outputs)

    @classmethod
    def from_config(cls, config, scheduler_class=None, **kwargs) -> "FusedScheduler":
        """Build the diffusers scheduler of ``config`` and wrap it.

        scheduler_class: the diffusers class (or its name); needed when the config carries no ``_class_name`` (a
        live scheduler's ``.config`` does not; a loaded scheduler_config.json does).
        """
        import diffusers

        if not hasattr(config, "get"):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        name = scheduler_class if isinstance(scheduler_class, str) else getattr(scheduler_class, "__name__", None)
        name = name or config.get("_class_name")
        if name not in _OUTPUTS:
            raise ValueError(f"the scheduler class (scheduler_class or config['_class_name']) must be one of "
                             f"{SUPPORTED}, got {name!r}")
        return cls(getattr(diffusers, name).from_config(config, **kwargs))

    # ------------------------------------------------------------------------------------------ state
    def _reset(self) -> None:
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None
        self._start: Optional[int] = None  # the step index of the first step() of this run
        self._slots: Dict[str, torch.Tensor] = {}
        self._plans: Dict[tuple, Plan] = {}
        self._kernels: Dict[torch.device, StepKernel] = {}

    @property
    def step_index(self) -> Optional[int]:
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def __getattr__(self, name: str) -> Any:
        # config, order, sigmas, timesteps, num_inference_steps, alphas_cumprod, ... come from the wrapped scheduler
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __len__(self) -> int:
        return len(self._inner)

    @property
    def init_noise_sigma(self):
        return getattr(self._inner, "init_noise_sigma", 1.0)

    @property
    def order(self) -> int:
        return self._inner.order

    @property
    def timesteps(self) -> torch.Tensor:
        return self._inner.timesteps

    @timesteps.setter
    def timesteps(self, value) -> None:
        self._inner.timesteps = value

    def set_timesteps(self, *args, **kwargs) -> None:
        """The wrapped scheduler's ``set_timesteps`` (same arguments), then a fresh plan for its grid."""
        self._inner.set_timesteps(*args, **kwargs)
        self._grid = grid_from_scheduler(self._inner)
        self._reset()

    # ------------------------------------------------------------------------------------------ plans
    def _plan(self, step_kwargs: Dict[str, Any]) -> Plan:
        """The plan from the first step this run took (multistep solvers warm up from there, like diffusers')."""
        if self._grid is None:
            raise ValueError("call set_timesteps before step")
        options = {k: step_kwargs[k] for k in _COEF_KWARGS if k in step_kwargs and step_kwargs[k] is not None}
        start = self._start if self._start is not None else (self._step_index or 0)
        key = (tuple(sorted(options.items())), start)
        plan = self._plans.get(key)
        if plan is None:  # once per run and option set: the per-step path is a dict lookup
            sampler = sampler_from_diffusers(self._inner, **options)
            plan = sampler.plan(self._grid, None, model_space=False, keep_extras=self.extra_outputs, start=start)
            self._plans[key] = plan
        return plan

    def _index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """diffusers' rule: the position of ``timestep`` (the second one if it repeats; the last if absent)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(schedule.device)
        hits = (schedule == timestep).nonzero()
        if len(hits) == 0:
            if self._name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
                return len(schedule) - 1
            raise ValueError(f"timestep {timestep} is not one of the scheduler's timesteps")
        return int(hits[1 if len(hits) > 1 else 0].item())

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is None:
            self._step_index = self._index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    # ------------------------------------------------------------------------------------------ API
    def scale_model_input(self, sample: torch.Tensor, timestep=None, *args, **kwargs) -> torch.Tensor:
        """The model input of the current step (k-diffusion samplers divide by sqrt(sigma^2 + 1))."""
        if self._grid is None or self._name in _TABLE_FAMILY or self._name in _FLOW or \
                self._name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
            return sample
        if self._step_index is None:
            self._init_step_index(timestep)
        c_in = self._plan({}).c_in[self._step_index - (self._start if self._start is not None else self._step_index)]
        if hasattr(self._inner, "is_scale_input_called"):
            self._inner.is_scale_input_called = True
        return sample * c_in

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, generator=None,
             variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """One fused step: ``prev_sample`` (and the original's extra fields) from the model output and the sample."""
        if self._grid is None:
            raise ValueError("Number of inference steps is 'None': call set_timesteps before step")
        if args:  # positional step options, in the wrapped scheduler's order
            names = [p for p in inspect.signature(type(self._inner).step).parameters if p not in
                     ("self", "model_output", "timestep", "sample")]
            kwargs.update(zip(names, args))
        unknown = set(kwargs) - self._step_params
        if unknown:
            raise TypeError(f"{self._name}.step() got unexpected keyword arguments {sorted(unknown)}")
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise TypeError("model_output and sample must be tensors")
        if model_output.shape != sample.shape or model_output.device != sample.device:
            raise ValueError(f"model_output is {tuple(model_output.shape)} on {model_output.device}; expected "
                             f"{tuple(sample.shape)} on {sample.device} like sample")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._start is None:
            self._start = self._step_index
        plan = self._plan(kwargs)
        i = self._step_index - self._start
        if i >= len(plan):
            raise ValueError(f"step {self._step_index} is past the last of {len(plan) + self._start} steps; call "
                             "set_timesteps again")
        dtype = model_output.dtype
        x = sample.to(dtype)
        slots = dict(self._slots)
        slots["x"], slots["cond"] = x, model_output
        if plan.draw_noise[i]:
            if variance_noise is not None:
                noise = variance_noise
            elif self._name == "DPMSolverMultistepScheduler":  # diffusers draws it in float32 there
                noise = draw_noise(x.to(torch.float32), generator)
            else:
                noise = draw_noise(x, generator)
            slots["noise"] = noise.to(device=x.device, dtype=dtype)
        wiring = plan.wirings[plan.kind[i]]
        coefs = plan_on(plan, x.device).stage_coefs(i)
        kernel = self._kernels.get(x.device)
        if kernel is None:  # the backend in force at the first step on this device
            kernel = self._kernels[x.device] = StepKernel(x.device, check_every_call=True)
        outs = dict(zip(wiring.outputs, kernel([slots[n] for n in wiring.inputs], coefs, plan.clamp)))
        carried = {dst: slots[src] for dst, src in plan.carry[i].items() if src in slots}
        extras = plan.extras[i]
        self._slots = {**{k: v for k, v in slots.items() if k not in ("x", "cond", "noise")}, **carried,
                       **{k: v for k, v in outs.items() if k != "x" and k not in extras}}
        self._step_index += 1
        return self._output(outs["x"], [outs[e] for e in extras], return_dict)

    def _output(self, prev_sample, extras, return_dict: bool):
        class_name, fields = _OUTPUTS[self._name]
        values = dict(zip(fields, extras)) if self.extra_outputs else {}
        if not return_dict:
            return (prev_sample, *[values.get(f) for f in fields])
        output_cls = getattr(importlib.import_module(type(self._inner).__module__), class_name, None)
        if output_cls is None:  # DPM-Solver and UniPC return the shared SchedulerOutput
            from diffusers.schedulers.scheduling_utils import SchedulerOutput as output_cls
        return output_cls(prev_sample=prev_sample, **{f: values.get(f) for f in fields})

    # ------------------------------------------------------------------------------------------ noising
    def _noise_levels(self, timesteps: torch.Tensor, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (alpha_t, sigma_t) of the wrapped scheduler's forward process at ``timesteps``."""
        if self._name in _TABLE_FAMILY:
            acp = self._inner.alphas_cumprod.to(device=device, dtype=torch.float64)
            a = acp[timesteps.to(device).long().reshape(-1)]
            return a.sqrt(), (1 - a).sqrt()
        schedule = self.timesteps
        if self._begin_index is None:
            idx = [self._index_for_timestep(t, schedule) for t in timesteps.reshape(-1)]
        else:
            idx = [self._step_index if self._step_index is not None else self._begin_index] * timesteps.numel()
        sigma = self._inner.sigmas.to(torch.float64)[idx].to(device)
        kind = self._grid.kind if self._grid is not None else "vp"
        if kind == "flow":
            return 1 - sigma, sigma
        if self._name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
            alpha = 1 / (sigma ** 2 + 1).sqrt()
            return alpha, sigma * alpha
        return torch.ones_like(sigma), sigma

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward noising x_t = alpha_t x0 + sigma_t noise, fused (pydiff.add_noise), at the scheduler's levels."""
        from ...ops.linear import add_noise

        timesteps = torch.as_tensor(timesteps)
        alpha, sigma = self._noise_levels(timesteps, original_samples.device)
        if alpha.numel() == 1 and original_samples.shape[0] > 1:
            alpha, sigma = alpha.expand(original_samples.shape[0]), sigma.expand(original_samples.shape[0])
        return add_noise(original_samples, noise, alpha, sigma)[0]

    def scale_noise(self, sample: torch.Tensor, timestep, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Flow matching's forward process: sigma noise + (1 - sigma) sample."""
        return self.add_noise(sample, noise, torch.as_tensor(timestep).reshape(-1))

    def __repr__(self) -> str:
        return f"FusedScheduler({self._inner!r})"
