"""`FusedScheduler`: a drop-in for diffusers schedulers -- same loop, same numbers (float32, rel <= 1e-5)."""

from __future__ import annotations

import copy

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from pydiff.integrations.diffusers import FusedScheduler  # noqa: E402
from pydiff.integrations.diffusers.scheduler import SUPPORTED  # noqa: E402
from test_sampler_parity import (CASES, SHAPE, TOL, ToyModel, conditioning, diffusers_loop,  # noqa: E402
                                 rel_err, run_pair)


def _params():
    for cls_name, config, step_kwargs, step_counts in CASES:
        for steps in step_counts[:2]:
            for guidance in (1.0, 3.5):
                yield pytest.param(cls_name, config, step_kwargs, steps, guidance,
                                   id=f"{cls_name}-{config}-{step_kwargs}-{steps}-g{guidance}")


@pytest.mark.parametrize("cls_name,config,step_kwargs,steps,guidance", list(_params()))
def test_fused_loop_matches_diffusers(cls_name, config, step_kwargs, steps, guidance):
    ours, ref = run_pair(cls_name, config, steps, guidance, step_kwargs, through="fused")
    assert rel_err(ours, ref) <= TOL


def test_every_mirrored_scheduler_is_covered():
    assert {case[0] for case in CASES} == set(SUPPORTED)


@pytest.mark.parametrize("cls_name", SUPPORTED)
def test_attributes_equal_the_original(cls_name):
    original = getattr(diffusers, cls_name)()
    fused = FusedScheduler.from_scheduler(original)
    steps = 4
    original.set_timesteps(steps)
    fused.set_timesteps(steps)
    assert torch.equal(fused.timesteps, original.timesteps)
    if hasattr(original, "sigmas"):
        assert torch.equal(fused.sigmas, original.sigmas)
    assert float(fused.init_noise_sigma) == float(getattr(original, "init_noise_sigma", 1.0))
    assert fused.order == original.order
    assert fused.config == original.config
    assert len(fused) == len(original)
    x = torch.randn(SHAPE)
    if hasattr(original, "scale_model_input"):
        t = original.timesteps[0]
        torch.testing.assert_close(fused.scale_model_input(x, t), original.scale_model_input(x, t), rtol=1e-6,
                                   atol=0)


@pytest.mark.parametrize("cls_name", ["DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                                      "UniPCMultistepScheduler", "LCMScheduler", "CMStochasticIterativeScheduler"])
def test_add_noise_equals_the_original(cls_name):
    original = getattr(diffusers, cls_name)()
    fused = FusedScheduler.from_scheduler(original)
    original.set_timesteps(6)
    fused.set_timesteps(6)
    x0 = torch.randn(SHAPE)
    noise = torch.randn(SHAPE)
    timesteps = original.timesteps[[1, 4]]
    ref = original.add_noise(x0, noise, timesteps)
    assert rel_err(fused.add_noise(x0, noise, timesteps), ref) <= 1e-6


def test_flow_scale_noise_equals_the_original():
    original = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    fused = FusedScheduler.from_scheduler(original)
    original.set_timesteps(8)
    fused.set_timesteps(8)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = original.timesteps[3:4]
    assert rel_err(fused.scale_noise(x0, t, noise), original.scale_noise(x0, t, noise)) <= 1e-6


def test_extra_outputs_and_tuple_return():
    """LCM pipelines read `denoised` from the tuple; pred_original_sample comes back like the original's."""
    model = ToyModel(SHAPE[1])
    for cls_name, field in (("LCMScheduler", "denoised"), ("DDIMScheduler", "pred_original_sample"),
                            ("TCDScheduler", "pred_noised_sample")):
        original = getattr(diffusers, cls_name)()
        fused = FusedScheduler.from_scheduler(original)
        original.set_timesteps(4)
        fused.set_timesteps(4)
        x = torch.randn(SHAPE)
        t = original.timesteps[0]
        out = model(x, t.float().expand(SHAPE[0]))
        ref = original.step(out, t, x, generator=torch.Generator().manual_seed(3))
        ours = fused.step(out, t, x, generator=torch.Generator().manual_seed(3))
        assert rel_err(ours.prev_sample, ref.prev_sample) <= TOL
        assert rel_err(getattr(ours, field), getattr(ref, field)) <= TOL
        prev, extra = FusedScheduler.from_scheduler(original).step(out, t, x, return_dict=False,
                                                                  generator=torch.Generator().manual_seed(3))
        assert rel_err(extra, getattr(ref, field)) <= TOL
    lean = FusedScheduler.from_scheduler(diffusers.DDIMScheduler(), extra_outputs=False)
    lean.set_timesteps(3)
    assert lean.step(torch.randn(SHAPE), lean.timesteps[0], torch.randn(SHAPE)).pred_original_sample is None


@pytest.mark.parametrize("scheduler_class", [diffusers.DPMSolverMultistepScheduler,
                                             diffusers.UniPCMultistepScheduler])
def test_begin_index_resumes_mid_schedule(scheduler_class):
    """img2img: set_begin_index and start from a later timestep, as pipelines do with strength < 1."""
    model = ToyModel(SHAPE[1])
    original = scheduler_class(solver_order=3)
    fused = FusedScheduler.from_scheduler(original)
    results = []
    for scheduler in (original, fused):
        scheduler.set_timesteps(10)
        scheduler.set_begin_index(4)
        x = scheduler.add_noise(torch.ones(SHAPE) * 0.3, torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)),
                                scheduler.timesteps[4:5])
        for t in scheduler.timesteps[4:]:
            x = scheduler.step(model(x, t.float().expand(SHAPE[0])), t, x).prev_sample
        results.append(x)
    assert rel_err(results[1], results[0]) <= TOL


def test_from_config_and_swap_into_pipeline_style_use():
    original = diffusers.UniPCMultistepScheduler(solver_order=3)
    fused = FusedScheduler.from_config(original.config, scheduler_class=diffusers.UniPCMultistepScheduler)
    assert isinstance(fused, FusedScheduler) and fused.config == original.config
    loaded = FusedScheduler.from_config({**original.config, "_class_name": "UniPCMultistepScheduler"})
    assert loaded.config["solver_order"] == 3 and isinstance(loaded._inner, diffusers.UniPCMultistepScheduler)
    with pytest.raises(ValueError, match="scheduler_class"):
        FusedScheduler.from_config(original.config)
    model = ToyModel(SHAPE[1])
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    cond, uncond = conditioning(4.0, SHAPE[0])
    ref = diffusers_loop(copy.deepcopy(original), model, noise, 9, 4.0, cond, uncond)
    assert rel_err(diffusers_loop(fused, model, noise, 9, 4.0, cond, uncond), ref) <= TOL
    # a second run on the same instance starts clean after set_timesteps
    assert rel_err(diffusers_loop(fused, model, noise, 9, 4.0, cond, uncond), ref) <= TOL


def test_bad_input():
    fused = FusedScheduler.from_scheduler(diffusers.EulerDiscreteScheduler())
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        fused.step(x, torch.tensor(999.0), x)
    fused.set_timesteps(3)
    t = fused.timesteps[0]
    with pytest.raises(ValueError, match="model_output"):
        fused.step(torch.randn(2, 3, 5, 6), t, x)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fused.step(x, t, x, not_an_option=1)
    with pytest.raises(ValueError, match="mirrors"):
        FusedScheduler.from_scheduler(diffusers.DDPMScheduler())
    with pytest.raises(NotImplementedError, match="thresholding"):
        FusedScheduler.from_scheduler(diffusers.DPMSolverMultistepScheduler(thresholding=True))
    with pytest.raises(NotImplementedError, match="algorithm_type"):
        FusedScheduler.from_scheduler(diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver",
                                                                            final_sigmas_type="sigma_min"))
    fused.set_timesteps(1)
    fused.step(x, fused.timesteps[0], x)
    with pytest.raises(ValueError, match="past the last"):
        fused.step(x, fused.timesteps[0], x)


def test_flux_dynamic_shift_mu():
    """Flux-style dynamic shifting: set_timesteps(mu=...) on the drop-in, pydiff.sample(mu=...) on the engine."""
    import pydiff
    from pydiff.samplers import sampler_from_diffusers

    config = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    model = ToyModel(SHAPE[1])
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    outs = []
    for scheduler in (diffusers.FlowMatchEulerDiscreteScheduler(**config),
                      FusedScheduler.from_scheduler(diffusers.FlowMatchEulerDiscreteScheduler(**config))):
        scheduler.set_timesteps(7, mu=0.9)
        x = noise.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t.float().expand(SHAPE[0])), t, x).prev_sample
        outs.append(x)
    assert rel_err(outs[1], outs[0]) <= TOL
    original = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    ours = pydiff.sample(model, noise, sampler=sampler_from_diffusers(original), steps=7, schedule=original, mu=0.9)
    assert rel_err(ours, outs[0]) <= TOL
