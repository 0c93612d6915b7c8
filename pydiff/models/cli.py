"""``pydiff sample``: a labelled grid from a bundled model with any sampler, and its quality figures."""

from __future__ import annotations

import argparse
import sys
import time

#: the guidance scale the bundled model samples with unless told otherwise
DEFAULT_GUIDANCE = 1.5


def add_sampling_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """The options of the commands that sample a bundled model (``pydiff sample``, ``pydiff export``)."""
    parser.add_argument("--model", default="digits", choices=("digits",), help="bundled model")
    parser.add_argument("--weights", default=None, help="weight file for --model instead of the bundled one (e.g. "
                                                        "a `pydiff distill` student)")
    parser.add_argument("--sampler", default="dpmpp_2m", help="any name in pydiff.samplers.SAMPLERS")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance scale (default "
                        f"{DEFAULT_GUIDANCE}; 1 for a distilled student with its teacher's guidance folded in)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")


def sampling_error(args: argparse.Namespace, *counts: str) -> str | None:
    """What is wrong with ``add_sampling_arguments``' options and the command's own ``counts`` (each >= 1), if
    anything."""
    from pydiff.samplers import SAMPLERS

    if args.sampler not in SAMPLERS:
        return f"--sampler must be one of {sorted(SAMPLERS)}, got {args.sampler!r}"
    names = ("steps", *counts)
    if any(getattr(args, name) < 1 for name in names):
        return " and ".join(f"--{name.replace('_', '-')}" for name in names) + " must be >= 1"
    return None


def load_model(args: argparse.Namespace, command: str):
    """``--model`` from ``--weights`` (or the bundled file) on ``--device``; None after saying why it cannot load."""
    from pydiff.models import load

    try:
        model = load(args.model, args.weights).to(args.device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pydiff {command}: {exc}", file=sys.stderr)
        return None
    if args.guidance is None:
        args.guidance = 1.0 if folds_guidance(model) else DEFAULT_GUIDANCE
    return model


def folds_guidance(model) -> bool:
    """Whether ``model`` is a distilled student with its teacher's guidance folded in (its weight file names the
    teacher it was distilled from, and it takes no guidance input): it samples unguided."""
    return "teacher" in getattr(model, "provenance", {}) and not model.config.guidance_embed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sampling_arguments(parser, steps=20)
    parser.add_argument("--per-class", type=int, default=10, help="samples per class (rows: classes 0-9)")
    parser.add_argument("--out", default="grid.png", help="PNG to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    import pydiff
    from pydiff.metrics import evaluate
    from pydiff.models.grid import save_grid

    error = sampling_error(args, "per_class")
    if error is not None:
        print(f"pydiff sample: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"pydiff sample: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    model = load_model(args, "sample")
    if model is None:
        return 2
    cfg = model.config
    n = cfg.num_classes * args.per_class
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g).to(args.device)
    labels = (torch.arange(n) // args.per_class).to(args.device)
    start = time.perf_counter()
    with torch.inference_mode():
        x = pydiff.sample(model, noise, sampler=args.sampler, steps=args.steps, schedule=model.scheduler_config,
                          generator=g, progress=True, **model.sampling_kwargs(labels, args.guidance))
    seconds = time.perf_counter() - start
    save_grid(x, labels, out, per_class=args.per_class,
              title=f"{args.model}: {args.sampler}, {args.steps} steps, guidance {args.guidance}")
    q = evaluate(x.cpu(), labels.cpu())
    print(f"{args.sampler}, {args.steps} steps, guidance {args.guidance}: {n} samples in {seconds:.2f} s")
    print(f"classifier accuracy {q['accuracy']:.1%}; FD-digits {q['fd']:.3g} "
          f"(real-vs-real floor at n={n}: {q['fd_floor']:.3g}, ratio {q['fd'] / q['fd_floor']:.2f}x)")
    print(f"wrote {out}")
    return 0
