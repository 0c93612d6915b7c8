"""Full-loop parity of ``pydiff.sample`` with the diffusers schedulers each sampler mirrors (float32, rel <= 1e-5).

The reference loop is written the way diffusers pipelines write it (init_noise_sigma, scale_model_input,
classifier-free guidance on a doubled batch, ``step`` with a seeded generator); pydiff gets the same scheduler
object as its schedule, the sampler derived from it, the same initial noise and a generator with the same seed.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import pydiff  # noqa: E402
from pydiff.samplers import sampler_from_diffusers  # noqa: E402

SHAPE = (2, 3, 5, 7)  # odd sizes
TOL = 1e-5


class ToyModel:
    """A smooth, nonlinear, timestep- and label-dependent stand-in for a denoiser network: model(x, t, y=None)."""

    def __init__(self, channels: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(channels, channels, generator=g) / channels ** 0.5
        self.b = torch.randn(channels, generator=g) * 0.1
        self.emb = torch.randn(11, channels, generator=g) * 0.2

    def __call__(self, x, t, y=None):
        view = (-1,) + (1,) * (x.dim() - 1)
        tt = (t.to(torch.float64) / 1000).reshape(view).to(x.dtype)
        h = torch.einsum("oc,bc...->bo...", self.w.to(x.dtype), x) + self.b.to(x.dtype).reshape((1, -1) + (1,) * (
            x.dim() - 2))
        out = torch.tanh(h * (1 + tt)) * 0.7 + 0.4 * x * torch.cos(3 * tt)
        if y is not None:
            out = out + self.emb.to(x.dtype)[y].reshape((x.shape[0], -1) + (1,) * (x.dim() - 2))
        return out


def conditioning(guidance: float, batch: int):
    if guidance == 1.0:
        return None, None
    return {"y": torch.arange(1, batch + 1)}, {"y": torch.full((batch,), 10)}


def diffusers_loop(scheduler, model, noise, steps, guidance=1.0, cond=None, uncond=None, seed=1, step_kwargs=None):
    """Sample the way diffusers pipelines do; ``scheduler`` may be a diffusers or a Fused scheduler."""
    scheduler.set_timesteps(steps)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(step_kwargs or {})
    if "generator" in inspect.signature(scheduler.step).parameters or hasattr(scheduler, "_inner"):
        kwargs["generator"] = generator
    guided = uncond is not None and guidance != 1.0
    for t in scheduler.timesteps:
        model_in = torch.cat([x, x]) if guided else x
        if hasattr(scheduler, "scale_model_input"):
            model_in = scheduler.scale_model_input(model_in, t)
        cond_kwargs = {}
        if cond is not None:
            cond_kwargs = {k: torch.cat([cond[k], uncond[k]]) for k in cond} if guided else dict(cond)
        out = model(model_in, t.float().expand(model_in.shape[0]), **cond_kwargs)
        if guided:
            out_cond, out_uncond = out.chunk(2)
            out = out_uncond + guidance * (out_cond - out_uncond)
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def rel_err(out, ref) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def run_pair(cls_name, config, steps, guidance, step_kwargs=None, through="sample"):
    """(ours, reference) final samples for one configuration."""
    scheduler = getattr(diffusers, cls_name)(**config)
    model = ToyModel(SHAPE[1])
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    cond, uncond = conditioning(guidance, SHAPE[0])
    ref = diffusers_loop(copy.deepcopy(scheduler), model, noise, steps, guidance, cond, uncond,
                         step_kwargs=step_kwargs)
    if through == "sample":
        sampler = sampler_from_diffusers(scheduler, **(step_kwargs or {}))
        ours = pydiff.sample(model, noise, sampler=sampler, steps=steps, schedule=scheduler, guidance_scale=guidance,
                             cond=cond, uncond=uncond, generator=torch.Generator().manual_seed(1))
    else:
        from pydiff.integrations.diffusers import FusedScheduler

        fused = FusedScheduler.from_scheduler(scheduler)
        ours = diffusers_loop(fused, model, noise, steps, guidance, cond, uncond, step_kwargs=step_kwargs)
    assert torch.isfinite(ref).all(), "the diffusers reference itself is not finite for this configuration"
    return ours, ref


# (scheduler class, config, step kwargs, step counts). Every config runs with and without guidance.
VP = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CASES = [
    # DDIM: eta (noise), clipping, set_alpha_to_one, spacings, prediction types, zero terminal SNR
    ("DDIMScheduler", dict(clip_sample=False, **VP), {}, (1, 7, 50)),
    ("DDIMScheduler", dict(clip_sample=True, timestep_spacing="trailing"), {"eta": 0.5}, (2, 13)),
    ("DDIMScheduler", dict(clip_sample=False, timestep_spacing="linspace", prediction_type="v_prediction",
                           beta_schedule="squaredcos_cap_v2"), {"eta": 1.0}, (3, 20)),
    ("DDIMScheduler", dict(clip_sample=True, prediction_type="sample", set_alpha_to_one=False, steps_offset=1),
     {"use_clipped_model_output": True}, (4, 25)),
    ("DDIMScheduler", dict(clip_sample=False, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                           timestep_spacing="trailing", **VP), {}, (5, 30)),
    # Euler: spacings, Karras / exponential sigmas, prediction types, final sigma, churn noise
    ("EulerDiscreteScheduler", dict(**VP), {}, (1, 7, 50)),
    ("EulerDiscreteScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction", timestep_spacing="leading",
                                    steps_offset=1, **VP), {}, (4, 20)),
    ("EulerDiscreteScheduler", dict(use_exponential_sigmas=True, final_sigmas_type="sigma_min"), {}, (9,)),
    ("EulerDiscreteScheduler", dict(timestep_spacing="trailing", prediction_type="sample"), {"s_churn": 1.0}, (6, 25)),
    ("EulerDiscreteScheduler", dict(timestep_type="continuous", prediction_type="v_prediction", **VP), {}, (10,)),
    # Euler ancestral (noise every step)
    ("EulerAncestralDiscreteScheduler", dict(**VP), {}, (1, 8, 30)),
    ("EulerAncestralDiscreteScheduler", dict(prediction_type="v_prediction", timestep_spacing="leading",
                                             steps_offset=1), {}, (5,)),
    # Heun
    ("HeunDiscreteScheduler", dict(), {}, (1, 6, 25)),
    ("HeunDiscreteScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction", **VP), {}, (9,)),
    ("HeunDiscreteScheduler", dict(clip_sample=True, prediction_type="sample", timestep_spacing="trailing"), {},
     (4,)),
    # DPM-Solver++: 2M / 3M, midpoint / heun, SDE, sigma spacings, final-step rules, prediction types, flow sigmas
    ("DPMSolverMultistepScheduler", dict(**VP), {}, (1, 2, 7, 20, 50)),
    ("DPMSolverMultistepScheduler", dict(solver_type="heun", use_karras_sigmas=True), {}, (8, 25)),
    ("DPMSolverMultistepScheduler", dict(solver_order=3, prediction_type="v_prediction",
                                         final_sigmas_type="sigma_min", **VP), {}, (5, 16)),
    ("DPMSolverMultistepScheduler", dict(solver_order=3, use_lu_lambdas=True, timestep_spacing="trailing"), {},
     (12,)),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", **VP), {}, (3, 20)),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun",
                                         use_karras_sigmas=True), {}, (10,)),
    ("DPMSolverMultistepScheduler", dict(lower_order_final=False, final_sigmas_type="sigma_min", euler_at_final=True,
                                         prediction_type="sample", timestep_spacing="leading", steps_offset=1), {},
     (6,)),
    ("DPMSolverMultistepScheduler", dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0),
     {}, (4, 15)),
    # UniPC: bh1 / bh2, orders 1-3, corrector on/off, noise-prediction form, Karras sigmas, prediction types
    ("UniPCMultistepScheduler", dict(**VP), {}, (1, 2, 7, 20, 50)),
    ("UniPCMultistepScheduler", dict(solver_type="bh1", final_sigmas_type="sigma_min"), {}, (5, 18)),
    ("UniPCMultistepScheduler", dict(solver_order=3, use_karras_sigmas=True, **VP), {}, (6, 25)),
    ("UniPCMultistepScheduler", dict(solver_order=1, prediction_type="v_prediction", timestep_spacing="trailing"),
     {}, (9,)),
    ("UniPCMultistepScheduler", dict(solver_order=3, predict_x0=False, final_sigmas_type="sigma_min",
                                     disable_corrector=[0, 3]), {}, (8,)),
    ("UniPCMultistepScheduler", dict(prediction_type="sample", lower_order_final=False,
                                     final_sigmas_type="sigma_min"), {}, (7,)),
    ("UniPCMultistepScheduler", dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0), {},
     (10,)),
    # flow matching
    ("FlowMatchEulerDiscreteScheduler", dict(shift=3.0), {}, (1, 9, 28)),
    ("FlowMatchEulerDiscreteScheduler", dict(shift=1.0, stochastic_sampling=True), {}, (4, 12)),
    ("FlowMatchEulerDiscreteScheduler", dict(use_karras_sigmas=True, shift=2.0), {}, (8,)),
    ("FlowMatchHeunDiscreteScheduler", dict(shift=3.0), {}, (1, 5, 12)),
    ("FlowMatchHeunDiscreteScheduler", dict(shift=1.0), {"s_churn": 1.0}, (10,)),
    # distilled few-step samplers
    ("LCMScheduler", dict(), {}, (1, 2, 4, 8)),
    ("LCMScheduler", dict(clip_sample=True, prediction_type="v_prediction", beta_schedule="linear"), {}, (3,)),
    ("TCDScheduler", dict(), {"eta": 0.3}, (1, 4, 8)),
    ("TCDScheduler", dict(prediction_type="sample"), {"eta": 0.0}, (2, 6)),
    ("TCDScheduler", dict(prediction_type="v_prediction"), {"eta": 1.0}, (5,)),
    ("CMStochasticIterativeScheduler", dict(), {}, (1, 2, 5)),
    ("CMStochasticIterativeScheduler", dict(clip_denoised=False, s_noise=0.7), {}, (3,)),
]


def _params():
    for cls_name, config, step_kwargs, step_counts in CASES:
        for steps in step_counts:
            for guidance in (1.0, 3.5):
                yield pytest.param(cls_name, config, step_kwargs, steps, guidance,
                                   id=f"{cls_name}-{config}-{step_kwargs}-{steps}-g{guidance}")


PARAMS = list(_params())


@pytest.mark.parametrize("cls_name,config,step_kwargs,steps,guidance", PARAMS)
def test_sample_matches_diffusers(cls_name, config, step_kwargs, steps, guidance):
    ours, ref = run_pair(cls_name, config, steps, guidance, step_kwargs)
    assert rel_err(ours, ref) <= TOL


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("cls_name,config,step_kwargs,steps", [
    ("DPMSolverMultistepScheduler", dict(solver_order=3, **VP), {}, 6),
    ("UniPCMultistepScheduler", dict(solver_order=3, **VP), {}, 5),
    ("DDIMScheduler", dict(clip_sample=True), {"eta": 0.7}, 4),
    ("HeunDiscreteScheduler", dict(use_karras_sigmas=True), {}, 3),
])
def test_backends_match_diffusers(backend, cls_name, config, step_kwargs, steps):
    from pydiff.ops import REGISTRY

    reason = REGISTRY["pydiff::lincomb"].why_not(backend, torch.device("cpu"))
    if reason is not None:
        pytest.skip(reason)
    with pydiff.use_backend(backend):
        ours, ref = run_pair(cls_name, config, steps, 2.0, step_kwargs)
    assert rel_err(ours, ref) <= TOL


def test_unipc_bh1_to_zero_is_finite_where_diffusers_is_not():
    """diffusers' UniPC bh1 multiplies B(h) = -inf by a zero residual on the last step to sigma = 0 (nan). Ours takes
    the limit: that first-order step returns the data prediction at the (uncorrected) last sample, so it equals
    diffusers run one step short followed by that prediction."""
    model = ToyModel(SHAPE[1])
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    scheduler = diffusers.UniPCMultistepScheduler(solver_type="bh1")
    ref = diffusers_loop(copy.deepcopy(scheduler), model, noise, 6)
    assert not torch.isfinite(ref).all()
    ours = pydiff.sample(model, noise, sampler=sampler_from_diffusers(scheduler), steps=6, schedule=scheduler)
    short = copy.deepcopy(scheduler)
    short.set_timesteps(6)
    x = noise.clone()
    for t in short.timesteps[:-1]:
        x = short.step(model(x, t.float().expand(x.shape[0])), t, x).prev_sample
    alpha, sigma = short._sigma_to_alpha_sigma_t(short.sigmas[5])
    data = (x - sigma * model(x, short.timesteps[-1].float().expand(x.shape[0]))) / alpha
    assert rel_err(ours, data) <= TOL
