"""pydiff.samplers: every common diffusion sampler as one fused ``pydiff::lincomb`` pass per step.

    import pydiff
    x0 = pydiff.sample(model, noise, sampler="dpmpp_2m", steps=20, schedule=pipe.scheduler.config)
    s = pydiff.samplers.SAMPLERS["ddim"](eta=0.5)       # a configured sampler; pass it as sampler=s

Per-step coefficients (guidance, prediction-type conversion, solver update, noise injection) are derived once per
(grid, sampler, guidance) on the host in float64 (solvers.py), compiled into device tables (plan.py), and the
loop (loop.py) only indexes them, so it never syncs with the host and can be captured in a CUDA graph.
"""

from .grid import Grid, to_data, to_noise
from .loop import SamplerModule, draw_noise, resolve_sampler, run_plan, sample
from .plan import Lin, Plan, Stage, compile_plan
from .solvers import (DDIM, LCM, SAMPLERS, TCD, ConsistencyMultistep, DPMSolverPP, Euler, EulerAncestral, FlowEuler,
                      FlowHeun, Heun, OneStep, Sampler, UniPC, lcm_boundary)
from .sources import grid_for, grid_from_discretization, sampler_from_diffusers

__all__ = [
    "DDIM", "LCM", "SAMPLERS", "TCD", "ConsistencyMultistep", "DPMSolverPP", "Euler", "EulerAncestral", "FlowEuler",
    "FlowHeun", "Grid", "Heun", "Lin", "OneStep", "Plan", "Sampler", "SamplerModule", "Stage", "UniPC", "compile_plan",
    "draw_noise", "grid_for", "grid_from_discretization", "lcm_boundary", "resolve_sampler", "run_plan", "sample",
    "sampler_from_diffusers", "to_data", "to_noise",
]
