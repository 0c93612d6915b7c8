"""Quality vs NFE on the bundled digits DiT: classifier accuracy and FD-digits per sampler and step count.

The curve teleportation and distillation are measured against. Every sampler runs on the same noise and labels;
the real-vs-real floor of FD-digits at the same sample size is reported beside each figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import torch

TITLE = "Quality vs NFE on the bundled digits DiT"
ORDER = 40

SAMPLERS = ("ddim", "euler", "dpmpp_2m", "unipc")
GUIDANCE = 1.5
#: the teleported rows: dpmpp_2m on a grid of ceil(NFE / (1 - TELEPORTED)) steps, its first ones teleported along
#: the guided Gaussian ODE (True) or the class Gaussian's alone (False, guidance off over those steps)
TELEPORTED = 0.3
TELEPORT_ROWS = {"dpmpp_2m, teleported (guided)": True, "dpmpp_2m, teleported (class)": False}


def generate(model, sampler: str, steps: int, n: int, guidance: float, device: str, seed: int = 0, teleport=None,
             guided_teleport: bool = True):
    """n class-conditional samples (labels cycling 0..9) with classifier-free guidance; with ``teleport`` (a
    `pydiff.teleport.GaussianTeleport`) ``steps`` model calls on a longer grid whose first steps are teleported."""
    import pydiff
    from pydiff.teleport import sample_teleported

    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g).to(device)
    labels = (torch.arange(n) % cfg.num_classes).to(device)
    kwargs = dict(sampler=sampler, schedule=model.scheduler_config, **model.sampling_kwargs(labels, guidance))
    with torch.inference_mode():
        if teleport is None:
            x = pydiff.sample(model, noise, steps=steps, **kwargs)
        else:
            total = math.ceil(steps / (1 - TELEPORTED))
            x = sample_teleported(model, noise, teleport, skip=total - steps, steps=total,
                                  guided_teleport=guided_teleport, **kwargs)
    return x, labels


def run(quick: bool, device: str, progress: bool = False) -> List[Dict[str, object]]:
    from tqdm.auto import tqdm

    from pydiff.metrics import evaluate
    from pydiff.models import load, load_digits
    from pydiff.teleport import GaussianTeleport

    model = load("digits").to(device)
    n = 300 if quick else 1000
    steps_list = (2, 4, 8, 16) if quick else (1, 2, 4, 8, 16, 32)
    data = load_digits("train", size=model.config.sample_size)
    teleport = GaussianTeleport.from_data(data.images, data.labels, num_classes=model.config.num_classes)
    rows = []
    cases = [(s, k) for s in (*SAMPLERS, *TELEPORT_ROWS) for k in steps_list]
    for sampler, steps in tqdm(cases, desc="quality vs NFE", disable=not progress, leave=False):
        teleported = sampler in TELEPORT_ROWS
        x, labels = generate(model, "dpmpp_2m" if teleported else sampler, steps, n, GUIDANCE, device,
                             teleport=teleport if teleported else None, guided_teleport=TELEPORT_ROWS.get(sampler))
        rows.append({"area": "quality", "sampler": sampler, "steps": steps, "nfe": steps, "n": n,
                     "guidance": GUIDANCE, **evaluate(x.cpu(), labels.cpu())})
    return rows


def section(rows) -> str:
    if not rows:
        return "no rows"
    steps = sorted({r["steps"] for r in rows})
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    by = {(r["sampler"], r["steps"]): r for r in rows}
    head = "| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |"
    lines = [f"{rows[0]['n']} class-conditional samples per cell, guidance {rows[0]['guidance']}; each cell is "
             "classifier accuracy / FD-digits (real-vs-real floor at this sample size: "
             f"{rows[0]['fd_floor']:.3g}). NFE = steps (one batched cond+uncond call per step). Teleported: dpmpp_2m "
             f"on a grid of ceil(NFE / {1 - TELEPORTED:g}) steps whose first ones are carried by `pydiff.teleport` "
             "(no model call) along the guided ODE of the per-class and all-data Gaussians (guided) or the class "
             "Gaussian's own (class: no guidance over those steps, which lowers FD-digits the way a guidance "
             "interval does).", "", head,
             "|---|" + "---|" * len(steps)]
    for s in samplers:
        cells = [f"{by[(s, k)]['accuracy']:.1%} / {by[(s, k)]['fd']:.3g}" if (s, k) in by else "–" for k in steps]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(rows, out_dir: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return []
    fig, (ax_acc, ax_fd) = plt.subplots(1, 2, figsize=(10, 4))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        rs = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["nfe"])
        ax_acc.plot([r["nfe"] for r in rs], [100 * r["accuracy"] for r in rs], marker="o", label=sampler)
        ax_fd.plot([r["nfe"] for r in rs], [r["fd"] for r in rs], marker="o", label=sampler)
    ax_fd.axhline(rows[0]["fd_floor"], color="gray", linestyle="--", label="real-vs-real floor")
    for ax, label in ((ax_acc, "classifier accuracy (%)"), (ax_fd, "FD-digits (lower is better)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE (model calls, cond+uncond batched)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_fd.set_yscale("log")
    fig.suptitle(f"Bundled digits DiT: quality vs NFE (guidance {rows[0]['guidance']}, n={rows[0]['n']})")
    fig.tight_layout()
    path = out_dir / "quality_vs_nfe.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path, _sample_grid(out_dir)]


def _sample_grid(out_dir: Path) -> Path:
    from pydiff.models import load
    from pydiff.models.grid import save_grid

    model = load("digits")
    x, labels = generate(model, "dpmpp_2m", 20, 100, GUIDANCE, "cpu", seed=1)
    return save_grid(x, labels, out_dir / "samples_dpmpp_2m_20.png",
                     title=f"DPM-Solver++(2M), 20 steps, guidance {GUIDANCE}")
