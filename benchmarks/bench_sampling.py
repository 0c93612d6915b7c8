"""End-to-end sampling on the bundled digits DiT: ``pydiff.sample`` vs the loop diffusers' pipelines run
(``scheduler.scale_model_input`` + model + ``scheduler.step``), same model, same schedule, same guidance.

The model dominates on a CPU, so the end-to-end ratio is bounded by it; the table also gives each loop's
per-step overhead beyond the model calls (the part the fused step removes)."""

from __future__ import annotations

from typing import Dict, List

import torch

from benchmarks.common import comparison_row, comparison_table, measure

TITLE = "End-to-end sampling on the bundled digits DiT (pydiff.sample vs a diffusers loop)"
ORDER = 30

# sampler name in pydiff -> diffusers scheduler class and its extra config
SAMPLERS = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
}


def diffusers_loop(model, scheduler, noise, labels, null, steps, guidance):
    """How a diffusers pipeline samples with classifier-free guidance."""
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    y = torch.cat([labels, null])
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        cond, uncond = model(model_in, t.expand(model_in.shape[0]), y=y).chunk(2)
        x = scheduler.step(uncond + guidance * (cond - uncond), t, x).prev_sample
    return x


def run(quick: bool, device: str, progress: bool = False) -> List[Dict[str, object]]:
    import diffusers

    import pydiff
    from pydiff.models import load

    model = load("digits").to(device)
    num_classes = model.config.num_classes
    sample_shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
    shape_name = "x".join(map(str, sample_shape))
    samplers = ["dpmpp_2m", "unipc"] if quick else list(SAMPLERS)
    batches = [20] if quick else [20, 200]
    steps, guidance = 20, 1.5
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(batch, *sample_shape, generator=g).to(device)
        labels = (torch.arange(batch) % num_classes).to(device)
        null = torch.full_like(labels, num_classes)
        with torch.inference_mode():
            xin = torch.cat([noise, noise])
            model_t = measure(lambda: model(xin, torch.full((2 * batch,), 500.0, device=device),
                                            y=torch.cat([labels, null])), device=device, min_repeat=3)
        for name in samplers:
            cls_name, extra = SAMPLERS[name]
            scheduler = getattr(diffusers, cls_name).from_config({**model.scheduler_config, **extra})

            def ours():
                with torch.inference_mode():
                    return pydiff.sample(model, noise, sampler=name, steps=steps, schedule=scheduler,
                                         guidance_scale=guidance, cond={"y": labels}, uncond={"y": null})

            def peer():
                with torch.inference_mode():
                    return diffusers_loop(model, scheduler, noise, labels, null, steps, guidance)

            ours_t = measure(ours, device="cpu", warmup=1, min_repeat=3, min_time=0.5)
            peer_t = measure(peer, device=device, warmup=1, min_repeat=3, min_time=0.5)
            with torch.inference_mode():
                diff = ((ours() - peer()).norm() / peer().norm()).item()
            model_ms = model_t.median * 1e3 * steps
            rows.append(comparison_row(
                "sampling", f"{name} {steps} steps, cfg {guidance}", f"{batch}x{shape_name}",
                ours_t, f"diffusers {cls_name}", peer_t,
                ours_overhead_ms_per_step=(ours_t.median * 1e3 - model_ms) / steps,
                peer_overhead_ms_per_step=(peer_t.median * 1e3 - model_ms) / steps,
                rel_diff=diff))
            if device == "cuda":
                graph_t = measure(lambda: pydiff.sample(model, noise, sampler=name, steps=steps, schedule=scheduler,
                                                        guidance_scale=guidance, cond={"y": labels},
                                                        uncond={"y": null}, cuda_graph=True),
                                  device=device, warmup=2, min_repeat=3)
                rows.append(comparison_row("sampling", f"{name} {steps} steps, cfg {guidance}, CUDA graph",
                                           f"{batch}x{shape_name}", graph_t,
                                           f"diffusers {cls_name}", peer_t))
    if not quick and device == "cpu":  # (ONNX Runtime here has no CUDA provider)
        rows.append(_onnx_row(model, noise, labels, null, steps, guidance, f"{batch}x{shape_name}"))
    return rows


def _onnx_row(model, noise, labels, null, steps, guidance, shape) -> Dict[str, object]:
    """The same loop exported as one graph (``pydiff.export.onnx`` of a ``SamplerModule``: DPM-Solver++(2M), the
    model and every step) and run by ONNX Runtime's CPU provider, beside ``pydiff.sample`` in PyTorch on the CPU."""
    import tempfile
    from pathlib import Path

    import pydiff
    from pydiff import export
    from pydiff.samplers import SamplerModule

    graph = SamplerModule(model, "dpmpp_2m", steps, guidance_scale=guidance)
    inputs = (noise, {"y": labels}, {"y": null})
    with tempfile.TemporaryDirectory() as folder:
        result = export.onnx(graph, inputs, Path(folder) / "sampler.onnx")
        runner = export.OnnxRunner(result.path)
        peer_t = measure(lambda: runner(*inputs), device="cpu", warmup=1, min_repeat=3, min_time=0.5)
        with torch.inference_mode():
            ours = lambda: pydiff.sample(model, noise, "dpmpp_2m", steps, guidance_scale=guidance,  # noqa: E731
                                         cond={"y": labels}, uncond={"y": null})
            ours_t = measure(ours, device="cpu", warmup=1, min_repeat=3, min_time=0.5)
            expected = ours()
            diff = ((runner(*inputs)[0] - expected).norm() / expected.norm()).item()
    return comparison_row("sampling", f"dpmpp_2m {steps} steps, cfg {guidance}, exported", shape, ours_t,
                          "ONNX Runtime (pydiff.export.onnx)", peer_t, export_s=result.seconds, rel_diff=diff)


def section(rows) -> str:
    return ("Same model, schedule, noise and guidance in both loops; `rel_diff` is ||ours - diffusers|| / "
            "||diffusers|| of the final samples. Overhead per step = (loop time - steps x one model call) / steps. "
            "The `exported` row (full suite) runs the same sampler exported with its model as one ONNX graph in ONNX "
            "Runtime (`export_s`: the export, its check included)."
            "\n\n" + comparison_table(rows, ["ours_overhead_ms_per_step", "peer_overhead_ms_per_step", "rel_diff",
                                            "export_s"]))
