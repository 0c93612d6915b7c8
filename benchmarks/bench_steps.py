"""Per-step time of pydiff's fused sampler step against diffusers' ``scheduler.step``, measured in one process.

    pytest benchmarks/bench_steps.py --benchmark-only          # pytest-benchmark
    python -m benchmarks.bench_steps [--full] [--device cuda]  # the table the report writer gets from run()

Each case is one steady-state step (step 10 of 20, history filled) on latents 1x4x64x64, 4x4x128x128 and
1x16x128x128. Peers, in the same run: diffusers' ``scheduler.step`` (given the guided model output, as pipelines
call it), the same step written in plain torch (eager, one op per term) and that function under torch.compile
(skipped when it does not compile). "step+cfg" rows time what a pipeline does around one model call -- the
guidance combine plus ``step`` -- against our step with the guidance folded into its coefficients.
GB/s counts the bytes our step reads and writes (every input once, every output once).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Dict, List

import torch

from benchmarks.bench_ceilings import ceilings
from benchmarks.common import comparison_table, measure, measure_graph

TITLE = "Fused sampler steps vs diffusers scheduler.step"
ORDER = 10

SHAPES = [(1, 4, 64, 64), (4, 4, 128, 128), (1, 16, 128, 128)]
#: on a GPU also a 64 MB float32 latent, large enough to measure the step against copy bandwidth
GPU_SHAPES = SHAPES + [(16, 16, 256, 256)]
STEPS, STEP_INDEX = 20, 10
GUIDANCE = 7.5
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
#: sampler -> (diffusers class, its config, step kwargs)
CASES = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(SD), {}),
    "unipc": ("UniPCMultistepScheduler", dict(SD), {}),
    "ddim": ("DDIMScheduler", dict(SD, clip_sample=False), {}),
    "euler": ("EulerDiscreteScheduler", dict(SD), {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", dict(SD), {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", dict(SD, algorithm_type="sde-dpmsolver++"), {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", dict(shift=3.0), {}),
}
QUICK_CASES = ("dpmpp_2m", "unipc", "euler_ancestral")


def time_ms(fn: Callable[[], object], device: str, reps: int, warmup: int = 3) -> Dict[str, float]:
    """min / median / max milliseconds per call, by the timer every suite shares."""
    return measure(fn, device=device, warmup=warmup, min_repeat=reps, max_repeat=reps, min_time=0.0).ms()


def graph_time_ms(fn: Callable[[], object], reps: int) -> Dict[str, float]:
    """Per-call milliseconds of ``fn`` replayed from a CUDA graph of 20 calls (see ``measure_graph``)."""
    return measure_graph(fn, repeat=reps).ms()


def torch_step(inputs: List[torch.Tensor], coefs: torch.Tensor, clamp: float) -> List[torch.Tensor]:
    """The fused step in plain torch, one op per term: d = clamp(c0 . in); out_o = c_o . in + c_o[n] d."""
    c = coefs[0].to(inputs[0].dtype)
    n = len(inputs)
    d = sum(c[0, j] * inputs[j] for j in range(n))
    if clamp > 0:
        d = d.clamp(-clamp, clamp)
    return [sum(c[1 + o, j] * inputs[j] for j in range(n)) + c[1 + o, n] * d for o in range(c.shape[0] - 1)]


class StepCase:
    """One sampler at one latent shape, advanced to a steady-state step, with every implementation ready to call."""

    def __init__(self, name: str, shape, device: str = "cpu", seed: int = 0):
        import diffusers

        from pydiff.integrations.diffusers import FusedScheduler
        from pydiff.integrations.diffusers.scheduler import grid_from_scheduler
        from pydiff.samplers import sampler_from_diffusers
        from pydiff.samplers.loop import plan_on

        cls_name, config, self.step_kwargs = CASES[name]
        self.name, self.shape, self.device = name, tuple(shape), device
        g = torch.Generator().manual_seed(seed)
        rand = lambda: torch.randn(self.shape, generator=g).to(device)  # noqa: E731
        self.scheduler = getattr(diffusers, cls_name)(**config)
        self.scheduler.set_timesteps(STEPS, device=device)
        self.x, self.cond, self.uncond = rand(), rand(), rand()
        self.model_out = self.uncond + GUIDANCE * (self.cond - self.uncond)
        for t in self.scheduler.timesteps[:STEP_INDEX]:  # fill the solver history
            self.scheduler.step(rand(), t, self.x, **self.step_kwargs)
        self.t = self.scheduler.timesteps[STEP_INDEX]
        self.fused = FusedScheduler.from_scheduler(self.scheduler)
        self.fused._step_index = STEP_INDEX
        self.fused._start = 0
        grid = grid_from_scheduler(self.scheduler)
        sampler = sampler_from_diffusers(self.scheduler, **self.step_kwargs)
        self.plan = plan_on(sampler.plan(grid, None, model_space=False), torch.device(device))
        self.plan_cfg = plan_on(sampler.plan(grid, GUIDANCE, model_space=False), torch.device(device))
        self.fused._slots = {k: rand() for w in self.plan.wirings for k in w.inputs
                             if k not in ("x", "cond", "uncond", "noise")}
        self.history = dict(self.fused._slots)
        self.draws_noise = self.plan.draw_noise[STEP_INDEX]
        self._compiled = None

    def _inputs(self, plan, guided: bool) -> List[torch.Tensor]:
        wiring = plan.wirings[plan.kind[STEP_INDEX]]
        slots = {"x": self.x, "cond": self.cond if guided else self.model_out, "uncond": self.uncond,
                 "noise": torch.randn_like(self.x), **self.history}
        return [slots[n] for n in wiring.inputs]

    def n_tensors(self, guided: bool = False) -> int:
        plan = self.plan_cfg if guided else self.plan
        wiring = plan.wirings[plan.kind[STEP_INDEX]]
        return len(wiring.inputs) + len(wiring.outputs)

    def bytes_touched(self, guided: bool = False) -> int:
        return self.n_tensors(guided) * self.x.numel() * self.x.element_size()

    # --- implementations (each returns a zero-argument callable doing one step) ---------------------------------
    def _with_noise(self, plan, inputs, fn) -> Callable[[], object]:
        """Stochastic steps draw their noise inside the timed call, as diffusers' step does."""
        if not self.draws_noise:
            return fn
        noise_at = plan.wirings[plan.kind[STEP_INDEX]].inputs.index("noise")

        def step():
            inputs[noise_at] = torch.randn_like(self.x)
            return fn()
        return step

    def ours(self, guided: bool = False, backend: str = "auto") -> Callable[[], object]:
        """The step as pydiff.sample runs it (StepKernel: the selected lincomb backend, validated once)."""
        from pydiff.ops.backend import use_backend
        from pydiff.samplers.kernel import StepKernel

        plan = self.plan_cfg if guided else self.plan
        inputs = self._inputs(plan, guided)
        coefs = plan.stage_coefs(STEP_INDEX)
        with use_backend(backend):
            kernel = StepKernel(torch.device(self.device))
        return self._with_noise(plan, inputs, lambda: kernel(inputs, coefs, plan.clamp))

    def ours_op(self) -> Callable[[], object]:
        """The same step through the registered op torch.ops.pydiff.lincomb (torch.library dispatch included)."""
        from pydiff.ops.linear import lincomb

        inputs = self._inputs(self.plan, False)
        coefs = self.plan.stage_coefs(STEP_INDEX)
        return self._with_noise(self.plan, inputs, lambda: lincomb(inputs, coefs, self.plan.clamp))

    def diffusers(self, guided: bool = False) -> Callable[[], object]:
        sched = self.scheduler

        def step():
            sched._step_index = STEP_INDEX
            out = self.uncond + GUIDANCE * (self.cond - self.uncond) if guided else self.model_out
            return sched.step(out, self.t, self.x, **self.step_kwargs).prev_sample
        return step

    def fused_scheduler(self) -> Callable[[], object]:
        fused = self.fused
        history = dict(fused._slots)

        def step():
            fused._step_index = STEP_INDEX
            fused._slots = dict(history)
            return fused.step(self.model_out, self.t, self.x, **self.step_kwargs).prev_sample
        return step

    def torch_eager(self) -> Callable[[], object]:
        inputs = self._inputs(self.plan, False)
        coefs = self.plan.stage_coefs(STEP_INDEX)
        return self._with_noise(self.plan, inputs, lambda: torch_step(inputs, coefs, self.plan.clamp))

    def torch_compiled(self) -> Callable[[], object]:
        inputs = self._inputs(self.plan, False)
        coefs = self.plan.stage_coefs(STEP_INDEX)
        compiled = torch.compile(torch_step, dynamic=False)
        compiled(inputs, coefs, self.plan.clamp)  # compile now, outside the timing
        return self._with_noise(self.plan, inputs, lambda: compiled(inputs, coefs, self.plan.clamp))


def _row(area, case: StepCase, ours, peer, peer_ms, guided=False) -> dict:
    gbps = case.bytes_touched(guided) / (ours["median"] * 1e-3) / 1e9
    return {
        "area": area, "name": case.name, "shape": "x".join(map(str, case.shape)), "device": case.device,
        "ours_ms": ours, "peer": peer, "peer_ms": peer_ms, "speedup": peer_ms["median"] / ours["median"],
        "ours_gbps": gbps, "tensors_touched": case.n_tensors(guided),
    }


def run(quick: bool = True, device: str = "cpu", progress: bool = False) -> List[dict]:
    """Rows {area, name, shape, ours_ms, peer, peer_ms, speedup, ours_gbps, ...}; ms as {min, median, max}.

    quick: three samplers, fewer repetitions, no torch.compile (tens of seconds on CPU); otherwise every sampler
    and the compiled peer (compiles once per case).
    """
    names = QUICK_CASES if quick else tuple(CASES)
    reps = 10 if quick else 30
    rows = []
    compile_ok = not quick
    for shape in GPU_SHAPES if device.startswith("cuda") else SHAPES:
        for name in names:
            case = StepCase(name, shape, device)
            ours = time_ms(case.ours(), device, reps)
            rows.append(_row("step", case, ours, "diffusers scheduler.step", time_ms(case.diffusers(), device, reps)))
            rows.append(_row("step", case, ours, "torch eager", time_ms(case.torch_eager(), device, reps)))
            rows.append(_row("step", case, ours, "pydiff via torch.ops.pydiff.lincomb",
                             time_ms(case.ours_op(), device, reps)))
            if compile_ok:
                try:
                    rows.append(_row("step", case, ours, "torch.compile", time_ms(case.torch_compiled(), device,
                                                                                  reps)))
                except Exception as exc:  # noqa: BLE001 - a peer that fails to compile is reported, not fatal
                    rows.append({"area": "step", "name": name, "shape": "x".join(map(str, shape)), "device": device,
                                 "peer": "torch.compile", "skipped": f"{type(exc).__name__}: {exc}"[:200]})
                    compile_ok = False
            ours_cfg = time_ms(case.ours(guided=True), device, reps)
            rows.append(_row("step+cfg", case, ours_cfg, "guidance combine + diffusers scheduler.step",
                             time_ms(case.diffusers(guided=True), device, reps), guided=True))
            rows.append(_row("drop-in", case, time_ms(case.fused_scheduler(), device, reps),
                             "diffusers scheduler.step", time_ms(case.diffusers(), device, reps)))
            if device.startswith("cuda"):
                # device time alone (graph replays): the figure to hold against copy bandwidth
                ours_graph = graph_time_ms(case.ours(), reps)
                rows.append(_row("step (graph)", case, ours_graph, "torch eager (graph replay)",
                                 graph_time_ms(case.torch_eager(), reps)))
                rows.append(_row("step (graph)", case, ours_graph, "pydiff triton backend (graph replay)",
                                 graph_time_ms(case.ours(backend="triton"), reps)))
    copy_gbps = ceilings(device, quick)["copy_GBps"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for row in rows:
        row["load_average"] = load
        if "ours_gbps" in row:
            row["fraction_of_copy"] = row["ours_gbps"] / copy_gbps
    return rows


def section(rows: List[dict]) -> str:
    """Tables per area (step, step+cfg, drop-in); GB/s of our step beside the measured copy bandwidth."""
    out = ["Steady-state step 10 of 20 with its history filled. `fraction_of_copy` = our GB/s over the measured "
           "device copy bandwidth (see Ceilings): how close the one-pass step runs to the memory ceiling (above 1 "
           "when the latents fit in cache). "
           + (f"CPU figures are noisy on a shared machine (load average {rows[0].get('load_average') or 0:.1f} "
              "when measured)." if rows[0].get("device") == "cpu" else "") if rows else "no rows"]
    for area, text in (("step", "Our step vs each peer"),
                       ("step+cfg", "With classifier-free guidance: our step (combine folded in) vs combine + step"),
                       ("drop-in", "FusedScheduler.step (diffusers' API, our kernel) vs the scheduler it replaces"),
                       ("step (graph)", "Device time alone: 20 steps captured in a CUDA graph and replayed (ours "
                                        "= the default backend, CUDA C++)")):
        sub = [r for r in rows if r["area"] == area and "skipped" not in r]
        if sub:
            out += ["", f"**{text}**", "", comparison_table(sub, ["ours_gbps", "fraction_of_copy",
                                                                  "tensors_touched"])]
    skipped = [r for r in rows if "skipped" in r]
    out += [f"\nSkipped peer {r['peer']} for {r['name']} {r['shape']}: {r['skipped']}" for r in skipped]
    return "\n".join(out)


def plots(rows: List[dict], out_dir: Path) -> List[Path]:
    """Per-step time vs latent size, ours and diffusers, one line per sampler (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = [r for r in rows if r["area"] == "step" and r.get("peer") == "diffusers scheduler.step"]
    if not sub:
        return []
    shapes = list(dict.fromkeys(r["shape"] for r in sub))  # in run order: SHAPES, growing
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(dict.fromkeys(r["name"] for r in sub)):
        rs = {r["shape"]: r for r in sub if r["name"] == name}
        xs = [j for j, shape in enumerate(shapes) if shape in rs]
        color = f"C{i}"
        ax.plot(xs, [rs[shapes[j]]["ours_ms"]["median"] for j in xs], "o-", color=color, label=f"pydiff {name}")
        ax.plot(xs, [rs[shapes[j]]["peer_ms"]["median"] for j in xs], "s--", color=color, alpha=0.6,
                label=f"diffusers {name}")
    ax.set_xticks(range(len(shapes)), [f"{s}\n({_numel(s) * 4 / 2**20:.2g} MB fp32)" for s in shapes])
    ax.set_yscale("log")
    ax.set_xlabel("latent shape")
    ax.set_ylabel("time per step (ms, median)")
    ax.set_title(f"Sampler step time vs latent size ({sub[0]['device']})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / "step_time_vs_latent_size.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _numel(shape: str) -> int:
    n = 1
    for d in shape.split("x"):
        n *= int(d)
    return n


def format_rows(rows: List[dict]) -> str:
    lines = [f"{'area':9s} {'sampler':16s} {'shape':13s} {'ours ms':>9s} {'GB/s':>6s}  {'peer':44s} {'peer ms':>9s} "
             f"{'speedup':>7s}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['area']:9s} {r['name']:16s} {r['shape']:13s} {'':>9s} {'':>6s}  {r['peer']:44s} "
                         f"skipped: {r['skipped'][:40]}")
            continue
        lines.append(f"{r['area']:9s} {r['name']:16s} {r['shape']:13s} {r['ours_ms']['median']:9.3f} "
                     f"{r['ours_gbps']:6.1f}  {r['peer']:44s} {r['peer_ms']['median']:9.3f} {r['speedup']:7.1f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ pytest-benchmark
try:
    import pytest
except ImportError:  # run() works without pytest
    pytest = None

if pytest is not None:
    _CACHE: Dict[tuple, StepCase] = {}

    def _case(name, shape) -> StepCase:
        key = (name, shape)
        if key not in _CACHE:
            _CACHE[key] = StepCase(name, shape, "cpu")
        return _CACHE[key]

    @pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
    @pytest.mark.parametrize("name", list(CASES))
    @pytest.mark.parametrize("impl", ["pydiff", "pydiff_op", "diffusers", "torch_eager", "fused_scheduler"])
    def test_step(benchmark, impl, name, shape):
        pytest.importorskip("diffusers")
        case = _case(name, shape)
        fn = {"pydiff": case.ours, "pydiff_op": case.ours_op, "diffusers": case.diffusers,
              "torch_eager": case.torch_eager, "fused_scheduler": case.fused_scheduler}[impl]()
        benchmark.group = f"{name} {'x'.join(map(str, shape))}"
        benchmark.extra_info["bytes_touched_by_ours"] = case.bytes_touched()
        benchmark(fn)

    @pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
    @pytest.mark.parametrize("impl", ["pydiff", "diffusers"])
    def test_step_with_guidance(benchmark, impl, shape):
        pytest.importorskip("diffusers")
        case = _case("dpmpp_2m", shape)
        benchmark.group = f"dpmpp_2m+cfg {'x'.join(map(str, shape))}"
        benchmark(case.ours(guided=True) if impl == "pydiff" else case.diffusers(guided=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every sampler, more repetitions, torch.compile peer")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = run(quick=not args.full, device=args.device)
    print(format_rows(result))
