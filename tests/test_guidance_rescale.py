"""Guidance rescale (Lin et al. 2023, sec. 3.4) in ``pydiff.sample``: parity with diffusers' ``rescale_noise_cfg``
applied in a diffusers-style loop, exact fallback to plain guidance at phi = 0, no host sync, bad input, CUDA graphs.
"""

from __future__ import annotations

import copy

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import test_sampler_parity as parity  # noqa: E402
import test_samplers  # noqa: E402
# the same function as diffusers' pipelines/stable_diffusion/pipeline_stable_diffusion.py, importable without
# transformers
from diffusers.guiders.guider_utils import rescale_noise_cfg  # noqa: E402

import pydiff  # noqa: E402
from pydiff.ops import pair_moments  # noqa: E402
from pydiff.samplers import run_plan, sampler_from_diffusers  # noqa: E402
from pydiff.samplers.loop import rescale_factors  # noqa: E402

GUIDANCE = 5.0  # strong guidance, so the rescale changes the samples a lot (checked below)
VP = parity.VP


class RescaledForDiffusersLoop:
    """Presents ``model`` to `parity.diffusers_loop` so that the loop's guidance combine yields
    ``rescale_noise_cfg(uncond + g (cond - uncond), cond, phi)``.

    The loop combines ``u + g (c - u)``; adding the same delta = rescaled - guided to both halves makes that combine
    equal the rescaled output (its other uses of the halves: none), so the whole diffusers-style loop is reused.
    """

    def __init__(self, model, guidance: float, phi: float):
        self.model, self.guidance, self.phi = model, guidance, phi

    def __call__(self, x, t, **cond):
        out_cond, out_uncond = self.model(x, t, **cond).chunk(2)
        guided = out_uncond + self.guidance * (out_cond - out_uncond)
        delta = rescale_noise_cfg(guided, out_cond, guidance_rescale=self.phi) - guided
        return torch.cat([out_cond + delta, out_uncond + delta])


# ------------------------------------------------------------------------------------------------ the factors


@pytest.mark.parametrize("guidance", [0.0, 2.5, 7.5])
@pytest.mark.parametrize("phi", [0.3, 0.7, 1.0])
def test_factors_match_rescale_noise_cfg(guidance, phi):
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 5, 7)
    cond = torch.randn(shape, generator=g, dtype=torch.float64) * torch.tensor([0.5, 1.0, 2.0]).view(-1, 1, 1, 1)
    uncond = torch.randn(shape, generator=g, dtype=torch.float64) + 0.3
    guided = uncond + guidance * (cond - uncond)
    factors = rescale_factors(pair_moments(cond, uncond), 4 * 5 * 7, guidance, phi)
    assert factors.dtype == torch.float64 and factors.shape == (3,)
    expected = rescale_noise_cfg(guided, cond, guidance_rescale=phi)
    assert parity.rel_err(factors.view(-1, 1, 1, 1) * guided, expected) < 1e-12
    ratios = (factors - (1 - phi)) / phi  # std(cond) / std(guided) per row: one per row, not one for the batch
    assert ratios.max() > 1.2 * ratios.min()


def test_constant_guided_rows_are_left_unscaled():
    """std(guided) = 0 (where diffusers divides by zero): factor 1 for that row; a 1-element row is constant too."""
    cond = torch.stack([torch.full((6,), 2.0), torch.arange(6.0)]).double()
    uncond = torch.stack([torch.full((6,), -1.0), torch.arange(6.0) * 0.5 - 1.0]).double()
    factors = rescale_factors(pair_moments(cond, uncond), 6, 3.0, 0.7)
    assert factors[0] == 1.0
    guided = uncond[1] + 3.0 * (cond[1] - uncond[1])
    assert torch.isclose(factors[1], 0.7 * cond[1].std() / guided.std() + 0.3, rtol=1e-12, atol=0)
    one = rescale_factors(pair_moments(torch.ones(2, 1), torch.zeros(2, 1)), 1, 3.0, 1.0)
    assert torch.equal(one, torch.ones(2, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------ full loops


CASES = [
    # (scheduler, config, steps): DDIM with v prediction and sample clipping (the rescale reaches the clamped
    # intermediate row), first- and multistep solvers, ancestral noise from a seeded generator, two model calls
    # per step (Heun), a flow schedule
    ("DDIMScheduler", dict(prediction_type="v_prediction", clip_sample=True, **VP), 8),
    ("EulerDiscreteScheduler", dict(**VP), 7),
    ("DPMSolverMultistepScheduler", dict(**VP), 10),
    ("UniPCMultistepScheduler", dict(**VP), 9),
    ("EulerAncestralDiscreteScheduler", dict(prediction_type="v_prediction", **VP), 8),
    ("HeunDiscreteScheduler", dict(**VP), 6),
    ("FlowMatchEulerDiscreteScheduler", dict(shift=3.0), 8),
]


def _pydiff_run(scheduler, model, noise, steps, cond, uncond, phi=None):
    kwargs = {} if phi is None else {"guidance_rescale": phi}
    return pydiff.sample(model, noise, sampler=sampler_from_diffusers(scheduler), steps=steps, schedule=scheduler,
                         guidance_scale=GUIDANCE, cond=cond, uncond=uncond,
                         generator=torch.Generator().manual_seed(1), **kwargs)


@pytest.mark.parametrize("phi", [0.3, 0.7, 1.0])
@pytest.mark.parametrize("cls_name,config,steps", CASES, ids=[c[0] for c in CASES])
def test_sample_matches_diffusers_loop_with_rescale(cls_name, config, steps, phi):
    scheduler = getattr(diffusers, cls_name)(**config)
    model = parity.ToyModel(parity.SHAPE[1])
    noise = torch.randn(parity.SHAPE, generator=torch.Generator().manual_seed(0))
    cond, uncond = parity.conditioning(GUIDANCE, parity.SHAPE[0])  # a different label per row: r differs per row
    ref = parity.diffusers_loop(copy.deepcopy(scheduler), RescaledForDiffusersLoop(model, GUIDANCE, phi), noise,
                                steps, GUIDANCE, cond, uncond)
    assert torch.isfinite(ref).all()
    ours = _pydiff_run(scheduler, model, noise, steps, cond, uncond, phi)
    assert parity.rel_err(ours, ref) <= parity.TOL
    plain = _pydiff_run(scheduler, model, noise, steps, cond, uncond)
    assert parity.rel_err(plain, ref) > 100 * parity.TOL  # the rescale is not a no-op here


def test_phi_zero_is_plain_guidance_exactly():
    scheduler = diffusers.DPMSolverMultistepScheduler(**VP)
    model = parity.ToyModel(parity.SHAPE[1])
    noise = torch.randn(parity.SHAPE, generator=torch.Generator().manual_seed(2))
    cond, uncond = parity.conditioning(GUIDANCE, parity.SHAPE[0])
    plain = _pydiff_run(scheduler, model, noise, 6, cond, uncond)
    assert torch.equal(_pydiff_run(scheduler, model, noise, 6, cond, uncond, 0.0), plain)
    assert torch.equal(_pydiff_run(scheduler, model, noise, 6, cond, uncond, 0), plain)


# ------------------------------------------------------------------------------------------------ no host sync


@pytest.mark.parametrize("via_op", [False, True], ids=["direct", "custom_op"])
@pytest.mark.parametrize("sampler,schedule", [("dpmpp_2m", "DPMSolverMultistepScheduler"),
                                              ("euler_ancestral", "EulerAncestralDiscreteScheduler")])
def test_no_host_sync_with_rescale(sampler, schedule, via_op, monkeypatch):
    monkeypatch.setattr(pydiff.samplers.kernel, "USE_OP", via_op)
    model = test_samplers.Toy()
    log = test_samplers.OpLog()

    def watched(x, t, **cond):
        if log.setup_done is None:
            log.setup_done = len(log.ops)
        return model(x, t, **cond)

    with log:
        out = pydiff.sample(watched, test_samplers.noise_like(), sampler=sampler, steps=6,
                            schedule={**test_samplers.SD_CONFIG, "_class_name": schedule}, guidance_scale=4.0,
                            cond={"y": torch.tensor([1, 2, 3])}, uncond={"y": torch.tensor([10, 10, 10])},
                            generator=torch.Generator().manual_seed(0), guidance_rescale=0.7)
    assert torch.isfinite(out).all()
    loop_ops = log.ops[log.setup_done:]
    if via_op:
        assert loop_ops.count("pair_moments") == 6 and loop_ops.count("lincomb") == 6
    else:
        assert loop_ops.count("empty") >= 6 and loop_ops.count("repeat") == 6  # moments outputs, per-row tables
    assert not test_samplers.SYNC_OPS & set(loop_ops), sorted(test_samplers.SYNC_OPS & set(loop_ops))


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs,match", [
    (dict(guidance_rescale=-0.1), r"guidance_rescale must be a finite number in \[0, 1\]"),
    (dict(guidance_rescale=1.5), r"guidance_rescale must be a finite number in \[0, 1\]"),
    (dict(guidance_rescale=float("nan")), "guidance_rescale must be a finite number"),
    (dict(guidance_rescale=True), "guidance_rescale must be a finite number"),
    (dict(guidance_rescale="0.5"), "guidance_rescale must be a finite number"),
    (dict(guidance_rescale=0.5, guidance_scale=1.0), "guidance_rescale=0.5 needs classifier-free guidance"),
    (dict(guidance_rescale=0.5, uncond=None, guidance_scale=1.0), "guidance_rescale=0.5 needs classifier-free"),
])
def test_bad_input(kwargs, match):
    model = test_samplers.Toy()
    calls = dict(sampler="ddim", steps=3, schedule=test_samplers.SD_CONFIG, guidance_scale=3.0,
                 cond={"y": torch.tensor([1, 2, 3])}, uncond={"y": torch.tensor([10, 10, 10])})
    calls.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pydiff.sample(model, test_samplers.noise_like(), **calls)
    assert model.calls == 0


def test_run_plan_rejects_rescale_without_guidance():
    plan = pydiff.samplers.SAMPLERS["ddim"]().plan(pydiff.samplers.grid_for(test_samplers.SD_CONFIG, 3,
                                                                           pydiff.samplers.SAMPLERS["ddim"]()))
    with pytest.raises(ValueError, match="guidance_rescale"):
        run_plan(test_samplers.Toy(), test_samplers.noise_like(), plan, {}, False, None, None, guidance_rescale=0.5)


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_ancestral"])
def test_cuda_eager_and_graph_match_cpu(sampler, cuda_device):
    model = test_samplers.Toy()
    noise = test_samplers.noise_like()
    cond, uncond = {"y": torch.tensor([1, 2, 3])}, {"y": torch.full((3,), 10)}
    kw = dict(sampler=sampler, steps=8, schedule=test_samplers.SD_CONFIG, guidance_scale=GUIDANCE)
    cpu = pydiff.sample(model, noise, cond=cond, uncond=uncond, guidance_rescale=0.7, **kw)
    model.w, model.emb = model.w.to(cuda_device), model.emb.to(cuda_device)
    cond, uncond = {"y": cond["y"].to(cuda_device)}, {"y": uncond["y"].to(cuda_device)}
    kw.update(cond=cond, uncond=uncond)
    noise = noise.to(cuda_device)
    stochastic = sampler == "euler_ancestral"  # CPU and CUDA generators draw different streams
    results = {}
    for phi in (0.7, 0.0, 0.7):  # the graph cache must tell phi apart: 0.7 again replays its own graph
        eager = pydiff.sample(model, noise, generator=torch.Generator(cuda_device).manual_seed(0),
                              guidance_rescale=phi, **kw)
        graphed = pydiff.sample(model, noise, generator=torch.Generator(cuda_device).manual_seed(0),
                                cuda_graph=True, guidance_rescale=phi, **kw)
        assert torch.isfinite(graphed).all()
        if not stochastic:
            assert test_samplers.rel(graphed, eager) < 1e-5
        results.setdefault(phi, []).append(graphed)
    if not stochastic:
        assert test_samplers.rel(results[0.7][0].cpu(), cpu) < 1e-5
        assert test_samplers.rel(results[0.7][1], results[0.7][0]) < 1e-6
        assert test_samplers.rel(results[0.0][0], results[0.7][0]) > 1e-3
