"""pydiff.distill: the consistency function is one LCM step, the teacher step is guided DDIM, distillation moves a
student towards the teacher's ODE solutions, and the command line writes a student that samples."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

import pydiff
from pydiff.distill import ConsistencyDistillation, consistency_function, distill_consistency
from pydiff.distill.common import Pairs as _Pairs
from pydiff.distill.consistency import _ddim_jump, _teacher_step
from pydiff.models import DiT, DiTConfig, GaussianData, load
from pydiff.schedules import Schedule

SCHEDULE = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
FAST = ConsistencyDistillation(train_steps=2, batch_size=4)


def tiny_dit(prediction_type="epsilon", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = DiT(DiTConfig(sample_size=8, patch_size=4, width=32, depth=1, num_heads=2, num_classes=3),
                scheduler_config={**SCHEDULE, "prediction_type": prediction_type})
    for p in model.parameters():  # DiT zero-inits its output layer; random everywhere so predictions differ
        torch.nn.init.normal_(p, std=0.2)
    return model.to(dtype).eval()


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_consistency_function_is_one_lcm_step(prediction_type):
    model = tiny_dit(prediction_type)
    student_config = {**SCHEDULE, "_class_name": "LCMScheduler", "prediction_type": prediction_type}
    g = torch.Generator().manual_seed(1)
    noise, y = torch.randn(7, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 1])
    schedule = Schedule.from_diffusers(model.scheduler_config)
    with torch.no_grad():
        ours = consistency_function(model, noise, torch.full((7,), 999), {"y": y}, schedule)
        lcm = pydiff.sample(model, noise, sampler="lcm", steps=1, schedule=student_config, cond={"y": y})
        at_zero = consistency_function(model, noise, torch.zeros(7, dtype=torch.int64), {"y": y}, schedule)
    assert rel(ours, lcm) < 1e-5
    assert torch.equal(at_zero, noise)  # the boundary condition: f(x, 0) = x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_teacher_step_is_guided_ddim(prediction_type, guidance):
    from diffusers import DDIMScheduler

    model = tiny_dit(prediction_type, torch.float64)
    schedule = Schedule.from_diffusers(model.scheduler_config)
    pairs = _Pairs(schedule, 50, torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([999, 519, 39, 259, 20])
    y, null = torch.tensor([0, 1, 2, 1, 0]), torch.full((5,), 3)
    with torch.no_grad():
        ours = _teacher_step(model, x, t, t - 20, {"y": y}, None if guidance == 1 else {"y": null}, guidance, pairs,
                             prediction_type)
        ddim = DDIMScheduler.from_config(model.scheduler_config, clip_sample=False)
        ddim.set_timesteps(50)
        expected = []
        for i in range(5):
            pred_c, pred_u = model(x[i:i + 1].repeat(2, 1, 1, 1), t[i:i + 1].repeat(2), y=torch.stack([y[i], null[i]]))
            pred = pred_u + guidance * (pred_c - pred_u) if guidance != 1 else pred_c
            expected.append(ddim.step(pred[None], int(t[i]), x[i:i + 1]).prev_sample)
    assert rel(ours, torch.cat(expected)) < 1e-6  # diffusers keeps alphas_cumprod in float32


def test_teacher_step_takes_one_guidance_scale_per_row():
    model = tiny_dit("epsilon", torch.float64)
    pairs = _Pairs(Schedule.from_diffusers(model.scheduler_config), 50, torch.device("cpu"))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t, y, null = torch.tensor([999, 519, 259, 39]), torch.tensor([0, 1, 2, 1]), torch.full((4,), 3)
    scales = torch.tensor([1.0, 1.7, 2.4, 3.0], dtype=torch.float64)
    with torch.no_grad():
        ours = _teacher_step(model, x, t, t - 20, {"y": y}, {"y": null}, scales.view(-1, 1, 1, 1), pairs, "epsilon")
        rows = [_teacher_step(model, x[i:i + 1], t[i:i + 1], t[i:i + 1] - 20, {"y": y[i:i + 1]},
                              {"y": null[i:i + 1]}, float(scales[i]), pairs, "epsilon") for i in range(4)]
    assert rel(ours, torch.cat(rows)) < 1e-12


def test_guidance_range_trains_a_student_told_its_scale():
    teacher = tiny_dit()
    student = DiT(dataclasses.replace(teacher.config, guidance_embed=True), teacher.scheduler_config)
    student.load_state_dict(teacher.state_dict(), strict=False)
    data, cond, uncond = torch.randn(16, 1, 8, 8), {"y": torch.arange(16) % 3}, {"y": torch.full((16,), 3)}
    settings = ConsistencyDistillation(guidance_range=(1.0, 3.0), train_steps=3, batch_size=8, lr=1e-3)
    result = distill_consistency(teacher, data, cond, uncond, settings, student=student, progress=False)
    assert result.settings.guidance_range == (1.0, 3.0)
    assert not torch.equal(result.student.g_embed[2].weight, student.g_embed[2].weight)  # the guidance input learns
    assert torch.equal(student.g_embed[2].weight, torch.zeros_like(student.g_embed[2].weight))  # a copy trained
    with pytest.raises(ValueError, match="no guidance embedding"):  # a student that cannot be told its scale
        distill_consistency(teacher, data, cond, uncond, settings, progress=False)
    with pytest.raises(ValueError, match="must not hold 'guidance'"):
        distill_consistency(teacher, data, {**cond, "guidance": torch.ones(16)}, {**uncond, "guidance": torch.ones(16)},
                            settings, student=student, progress=False)
    for bad in [(3.0, 1.0), (0.0, 2.0), (1.0,), "1,3", (1.0, float("inf"))]:
        with pytest.raises(ValueError, match="guidance_range must be"):
            ConsistencyDistillation(guidance_range=bad)


class AffineEpsilon(nn.Module):
    """eps(x, t) = w[t] x + b[t]: per-timestep tables, which can hold a Gaussian's exact denoiser and its exact
    consistency function (both affine in x_t)."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x, t):
        return self.w[t].view(-1, *[1] * (x.dim() - 1)) * x + self.b[t]


@pytest.mark.parametrize("method, loss", [("lcm", "l2"), ("lcm", "huber"), ("tcd", "l2")])
def test_distillation_reaches_the_teachers_ode_chain(method, loss):
    """Gaussian data, the exact denoiser as teacher, and a student that starts as that teacher: one student step
    from t = 999 must land where the teacher's chain of 50 DDIM steps lands (the fixed point of consistency
    distillation), from the 40% away of the teacher's own one-step answer. TCD's student, whose one prediction
    per point serves jumps to every earlier time, can only compromise between them: it must halve the distance."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(1, 3, 5, generator=g, dtype=torch.float64), 0.5
    teacher = GaussianData(mean, std).denoiser(SCHEDULE)
    schedule = Schedule.from_diffusers(SCHEDULE)
    abar = schedule.alphas_cumprod
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    var = alpha ** 2 * std ** 2 + sigma ** 2
    student = AffineEpsilon((sigma / var).float(), (-(alpha * sigma / var).view(-1, 1, 1, 1) * mean).float())
    noise = torch.randn(64, 1, 3, 5, generator=g)
    t_max = torch.full((64,), 999)
    with torch.no_grad():
        assert rel(student(noise, t_max), teacher(noise.double(), t_max)) < 1e-6
    pairs = _Pairs(schedule, 50, torch.device("cpu"))
    chain = noise.double()
    for t in pairs.timesteps.flip(0).tolist():
        t = torch.full((64,), t)
        chain = _teacher_step(teacher, chain, t, (t - 20).clamp(min=0), {}, None, 1.0, pairs, "epsilon")
    data = GaussianData(mean, std).sample(2000, generator=g).float()
    settings = ConsistencyDistillation(method=method, guidance_scale=1.0, train_steps=1500, batch_size=64, lr=1e-2,
                                       loss=loss)
    result = distill_consistency(teacher, data, settings=settings, schedule=SCHEDULE, student=student,
                                 generator=torch.Generator().manual_seed(1), progress=False)
    with torch.no_grad():
        if method == "lcm":
            before = consistency_function(student, noise, t_max, {}, schedule)
            after = consistency_function(result.student, noise, t_max, {}, schedule)
        else:  # the jump from 999 to 0 (what one tcd sampler step without noise computes)
            zero = torch.zeros(64, dtype=torch.int64)
            before, after = (_ddim_jump(m(noise, t_max), noise, t_max, zero, pairs, "epsilon")
                             for m in (student, result.student))
    assert rel(before, chain) > 0.35
    # pseudo-Huber with c = 1e-3 is L1 at these distances: its gradients do not shrink near the optimum
    bound = {"l2": 1e-3, "huber": 1e-2}[loss] if method == "lcm" else 0.5 * rel(before, chain)
    assert rel(after, chain) < bound, rel(after, chain)
    # the chain itself is 50 first-order steps: about 2% from the exact ODE solution
    assert rel(chain, teacher.exact_ode_solution(noise.double(), 999, 0)) < 0.03
    assert len(result.losses) == 1500 and all(map(math.isfinite, result.losses))
    assert torch.equal(student.w, (sigma / var).float())  # the student given is not changed


@pytest.mark.parametrize("method", ["lcm", "tcd"])
def test_student_config_matches_diffusers(method):
    import diffusers

    settings = ConsistencyDistillation(method=method, train_steps=2, batch_size=4)
    result = distill_consistency(tiny_dit(), torch.randn(6, 1, 8, 8), {"y": torch.arange(6) % 3},
                                 {"y": torch.full((6,), 3)}, settings, progress=False)
    config = result.student.scheduler_config
    assert config["_class_name"] == f"{method.upper()}Scheduler" and config["original_inference_steps"] == 50
    grid = pydiff.samplers.grid_for(config, 4, pydiff.samplers.resolve_sampler(method))
    reference = getattr(diffusers, config["_class_name"]).from_config(config)
    reference.set_timesteps(4)
    assert [int(t) for t in grid.timesteps] == reference.timesteps.tolist()


def test_bad_settings():
    for kwargs, match in [({"train_steps": 0}, "train_steps"), ({"batch_size": 2.0}, "batch_size"),
                          ({"original_steps": True}, "original_steps"), ({"warmup": -1}, "warmup"),
                          ({"guidance_scale": 0.0}, "guidance_scale"), ({"lr": float("nan")}, "lr"),
                          ({"ema_decay": 1.0}, "ema_decay"), ({"loss": "l1"}, "loss"),
                          ({"timestep_scaling": -1}, "timestep_scaling"), ({"method": "dmd"}, "method")]:
        with pytest.raises(ValueError, match=match):
            ConsistencyDistillation(**kwargs)


def test_bad_inputs():
    model, data = tiny_dit(), torch.randn(6, 1, 8, 8)
    cond, uncond = {"y": torch.arange(6) % 3}, {"y": torch.full((6,), 3)}
    cases = [
        (dict(teacher="model"), TypeError, "teacher must be an nn.Module"),
        (dict(data=data.long()), ValueError, "data must be a floating-point"),
        (dict(data=torch.randn(6)), ValueError, "data must be a floating-point"),
        (dict(data=torch.randn(3, 1, 8, 8)), ValueError, "fewer than batch_size"),
        (dict(data=torch.full((6, 1, 8, 8), float("nan"))), ValueError, "data must be finite"),
        (dict(cond={"y": torch.arange(5)}), ValueError, r"cond\['y'\] must be a tensor with one row per data row"),
        (dict(cond=[1]), TypeError, "cond must be a mapping"),
        (dict(uncond=None), ValueError, "needs uncond"),
        (dict(uncond={"z": torch.arange(6)}), ValueError, "needs uncond with the keywords"),
        (dict(settings={"train_steps": 1}), TypeError, "settings must be a ConsistencyDistillation"),
        (dict(schedule={"_class_name": "FlowMatchEulerDiscreteScheduler"}), ValueError, "discrete VP schedule"),
        (dict(settings=ConsistencyDistillation(train_steps=1, batch_size=4, original_steps=2000)), ValueError,
         "original_steps"),
    ]
    for change, error, match in cases:
        kwargs = {**dict(teacher=model, data=data, cond=cond, uncond=uncond, settings=FAST, progress=False), **change}
        with pytest.raises(error, match=match):
            distill_consistency(**kwargs)
    with pytest.raises(ValueError, match="schedule must be given"):
        distill_consistency(torch.nn.Linear(2, 2), torch.randn(6, 2), settings=FAST, progress=False)


@pytest.mark.parametrize("method", ["lcm", "tcd"])
def test_cli_writes_a_student_that_samples(tmp_path, capsys, method):
    from pydiff.cli import main

    out = tmp_path / "student.safetensors"
    argv = ["distill", "--method", method, "--train-steps", "3", "--batch-size", "8", "--eval-samples", "20",
            "--eval-steps", "1,2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"| 2 | student | {method} | 2 |" in printed and "| 2 | teacher | dpmpp_2m | 4 |" in printed
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["train_steps"] == 3 and len(report["evaluation"]) == 4
    assert [r["guidance_scale"] for r in report["evaluation"]] == [1.0, 1.5, 1.0, 1.5]  # guidance folded in
    assert out.with_suffix(".png").stat().st_size > 0
    student = load("digits", out)
    assert student.scheduler_config["_class_name"] == f"{method.upper()}Scheduler"
    assert report["method"].startswith({"lcm": "latent", "tcd": "trajectory"}[method])
    assert main(argv) == 2 and "pass --overwrite" in capsys.readouterr().err
    grid = tmp_path / "grid.png"
    assert main(["sample", "--weights", str(out), "--sampler", method, "--steps", "2", "--guidance", "1",
                 "--per-class", "1", "--out", str(grid)]) == 0
    assert f"{method}, 2 steps, guidance 1.0: 10 samples" in capsys.readouterr().out
    assert main(["sample", "--weights", str(tmp_path / "missing.safetensors"), "--out", str(grid), "--overwrite"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["distill", "--eval-steps", "0,2", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert main(["distill", "--train-steps", "0", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "train_steps must be an int >= 1" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_distillation_follows_the_cpu_run(cuda_device):
    """The same draws (a CPU generator) on CUDA: the first steps' losses and the student agree with the CPU run's."""
    teacher = load("digits")
    g = torch.Generator().manual_seed(4)
    data, y = torch.rand(64, 1, 16, 16, generator=g) * 2 - 1, torch.arange(64) % 10
    settings = ConsistencyDistillation(train_steps=5, batch_size=16)
    runs = []
    for device in ("cpu", cuda_device):
        runs.append(distill_consistency(teacher.to(device), data.to(device), {"y": y.to(device)},
                                        {"y": torch.full_like(y, 10).to(device)}, settings,
                                        generator=torch.Generator().manual_seed(0), progress=False))
    cpu, gpu = runs
    assert max(abs(a - b) / abs(a) for a, b in zip(cpu.losses, gpu.losses)) < 0.05
    for a, b in zip(cpu.student.parameters(), gpu.student.parameters()):
        assert rel(b.cpu(), a) < 1e-2


def test_cli_guidance_range_student(tmp_path, capsys):
    from pydiff.cli import main

    out = tmp_path / "w.safetensors"
    assert main(["distill", "--guidance-range", "1,3", "--train-steps", "2", "--batch-size", "8", "--eval-samples",
                 "20", "--eval-steps", "1", "--out", str(out)]) == 0
    assert "| 1 | student | lcm | 1 |" in capsys.readouterr().out
    student = load("digits", out)
    assert student.config.guidance_embed
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["guidance_range"] == [1.0, 3.0]
    assert [r["guidance_scale"] for r in report["evaluation"]] == [1.5, 1.5]  # the student is told the scale
    grid = tmp_path / "grid.png"
    assert main(["sample", "--weights", str(out), "--sampler", "lcm", "--steps", "1", "--guidance", "2.5",
                 "--per-class", "1", "--out", str(grid)]) == 0
    assert "guidance 2.5: 10 samples" in capsys.readouterr().out
    assert main(["sample", "--weights", str(out), "--sampler", "lcm", "--steps", "1", "--per-class", "1", "--out",
                 str(grid), "--overwrite"]) == 0  # told the bundled default scale
    assert "guidance 1.5: 10 samples" in capsys.readouterr().out
    assert main(["distill", "--guidance-range", "3,1", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "guidance_range must be (low, high)" in capsys.readouterr().err
