"""``pydiff distill``: a few-step consistency student (--method lcm, tcd) or a one-step (``--generator-steps``: a
few-step) generator (--method dmd, vsd, sid) of the bundled digits model, written as a weight file that ``pydiff
sample --weights`` and ``pydiff export --weights`` take, and its quality beside the teacher's."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

DEFAULT_EVAL_STEPS = "1,2,4,8"


#: the options of one family of methods only (consistency: lcm, tcd; score: dmd, vsd, sid): flag -> settings field
CONSISTENCY_ONLY = {"--ema-decay": "ema_decay", "--loss": "loss", "--original-steps": "original_steps"}
SCORE_ONLY = {"--fake-updates": "fake_updates", "--fake-lr": "fake_lr", "--t-range": "t_range",
              "--sid-alpha": "sid_alpha", "--regression-weight": "regression_weight",
              "--generator-timestep": "generator_timestep", "--gan-weight": "gan_weight",
              "--gan-disc-weight": "gan_disc_weight", "--gan-layer": "gan_layer",
              "--generator-steps": "generator_steps"}
#: DMD's regression pairs: the teacher's deterministic sampler and its step count
PAIR_SAMPLER, PAIR_STEPS, PAIRS = "dpmpp_2m", 25, 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from . import consistency, score

    c, s = consistency.ConsistencyDistillation(), score.ScoreDistillation()
    parser.add_argument("--model", default="digits", choices=("digits",), help="bundled teacher")
    parser.add_argument("--method", default=c.method, choices=consistency.METHODS + score.METHODS,
                        help="lcm: latent consistency distillation; tcd: trajectory consistency distillation (a "
                        "few-step student sampling with the sampler of that name); dmd: distribution matching "
                        "distillation; vsd: variational score distillation; sid: score identity distillation (a "
                        "one-step generator, sampler one_step; data-free without --gan-weight)")
    parser.add_argument("--guidance", type=float, default=c.guidance_scale,
                        help="the teacher's classifier-free guidance, folded into the student")
    parser.add_argument("--guidance-range", default=None, help="LOW,HIGH: the teacher's scale drawn per example in "
                        "the range; lcm/tcd: the student is told it (a guidance input) and evaluated at --guidance; "
                        "dmd/vsd/sid: SNOOPI's proper guidance, the generator is not told it")
    parser.add_argument("--train-steps", type=int, default=None,
                        help=f"optimizer steps (default {c.train_steps} for lcm/tcd, {s.train_steps} for "
                        f"dmd/vsd/sid)")
    parser.add_argument("--batch-size", type=int, default=c.batch_size)
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak learning rate (default {c.lr} for lcm/tcd, the generator's {s.lr} for dmd/vsd/sid)")
    parser.add_argument("--ema-decay", type=float, default=None, help=f"lcm/tcd: the target network's EMA "
                        f"(default {c.ema_decay})")
    parser.add_argument("--loss", default=None, choices=consistency.LOSSES, help=f"lcm/tcd (default {c.loss})")
    parser.add_argument("--original-steps", type=int, default=None,
                        help=f"lcm/tcd: skipping grid size (default {c.original_steps})")
    parser.add_argument("--fake-updates", type=int, default=None,
                        help=f"dmd/vsd/sid: fake-denoiser steps per generator step (default {s.fake_updates})")
    parser.add_argument("--fake-lr", type=float, default=None,
                        help=f"dmd/vsd/sid: the fake denoiser's peak learning rate (default {s.fake_lr})")
    parser.add_argument("--sid-alpha", type=float, default=None, help=f"sid: SiD's alpha (default {s.sid_alpha})")
    parser.add_argument("--t-range", default=None, help=f"dmd/vsd/sid: LOW,HIGH noise levels compared, fractions of "
                        f"the train timesteps (default {s.t_min},{s.t_max})")
    parser.add_argument("--regression-weight", type=float, default=None,
                        help=f"dmd/vsd/sid: DMD's regression loss weight (DMD: 0.25; default "
                        f"{s.regression_weight}, off): the generator pulled to the teacher's {PAIR_SAMPLER} "
                        f"{PAIR_STEPS}-step samples (at --guidance) from the same noise")
    parser.add_argument("--generator-timestep", type=int, default=None,
                        help="dmd/vsd/sid: the train timestep the generator is called at on pure noise (default: the "
                        "last, 999)")
    parser.add_argument("--generator-steps", type=int, default=None,
                        help=f"dmd/vsd/sid: K > 1 makes DMD2's K-step generator (LCM's grid: 999, 749, 499, 249 for "
                        f"4; sampler lcm, at up to K steps) trained by backward simulation (default "
                        f"{s.generator_steps})")
    parser.add_argument("--gan-weight", type=float, default=None,
                        help=f"dmd/vsd/sid: DMD2's GAN loss weight on the generator (default {s.gan_weight}, off): a "
                        f"discriminator head on the fake denoiser's features tells the generator's samples from the "
                        f"bundled training digits (no longer data-free)")
    parser.add_argument("--gan-disc-weight", type=float, default=None,
                        help=f"with --gan-weight: the discriminator's loss weight in the fake denoiser's update "
                        f"(default {s.gan_disc_weight})")
    parser.add_argument("--gan-layer", default=None, help="with --gan-weight: the fake denoiser's layer the "
                        "discriminator reads (default: the middle transformer block)")
    parser.add_argument("--regression-pairs", type=int, default=None,
                        help=f"with --regression-weight: how many teacher samples to make (default {PAIRS})")
    parser.add_argument("--init", default=None, metavar="FILE",
                        help="start the student from this weight file of the model (e.g. an lcm student for "
                        "--method vsd/sid: a two-stage one-step generator) instead of the teacher")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="student weight file to write (default digits-<method>"
                        ".safetensors; a JSON report and a PNG grid are written beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out and its report if they exist")
    parser.add_argument("--eval-samples", type=int, default=1000, help="class-balanced samples per row; 0 skips")
    parser.add_argument("--eval-steps", default=DEFAULT_EVAL_STEPS, help="comma-separated step counts to compare")


def _pair(text: str | None):
    """"low,high" -> (low, high); anything else -> itself, for the settings to refuse by name."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        return text


def _eval_steps(text: str, most: int) -> list[int] | None:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        return None
    return steps if steps and all(1 <= s <= most for s in steps) else None


def settings_of(args: argparse.Namespace):
    """The method's settings from the command line (its defaults where an option is not given); ValueError names
    an option of the other family of methods, or what the settings refuse."""
    from . import consistency, score

    one_step = args.method in score.METHODS
    wrong = CONSISTENCY_ONLY if one_step else SCORE_ONLY
    for flag, name in wrong.items():
        if getattr(args, name) is not None:
            family = "lcm or tcd" if one_step else "dmd, vsd or sid"
            raise ValueError(f"{flag} applies to --method {family}, not {args.method}")
    given = {name: getattr(args, name) for name in ("train_steps", "lr", *(SCORE_ONLY if one_step else
                                                                           CONSISTENCY_ONLY).values())}
    given = {k: v for k, v in given.items() if v is not None}
    if "t_range" in given:
        t_range = _pair(given.pop("t_range"))
        if not isinstance(t_range, tuple) or len(t_range) != 2:
            raise ValueError(f"--t-range must be LOW,HIGH, got {args.t_range!r}")
        given["t_min"], given["t_max"] = t_range
    kind = score.ScoreDistillation if one_step else consistency.ConsistencyDistillation
    return kind(method=args.method, guidance_scale=args.guidance, batch_size=args.batch_size,
                guidance_range=_pair(args.guidance_range), **given)


def initial_student(args: argparse.Namespace, teacher, one_step: bool, guided_input: bool):
    """The student to start from: ``--init``'s model (None without it); ValueError says why the file cannot serve:
    not the model's, another prediction type, or a guidance input where the method gives none (or none where
    --guidance-range needs one)."""
    from pydiff.models import load

    if args.init is None:
        return None
    try:
        student = load(args.model, args.init)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"--init: {exc}") from exc
    ours, theirs = (m.scheduler_config.get("prediction_type") for m in (student, teacher))
    if ours != theirs:
        raise ValueError(f"--init {args.init} predicts {ours!r}; the teacher predicts {theirs!r}")
    has_input = bool(getattr(student.config, "guidance_embed", False))
    if has_input != guided_input:
        needs = ("a one-step generator is told no guidance scale" if one_step else
                 "--guidance-range needs a student with a guidance input" if guided_input else
                 "its guidance input needs --guidance-range")
        raise ValueError(f"--init {args.init} {'has' if has_input else 'has no'} guidance input; {needs}")
    return student


def student_scale(student, guidance: float) -> float:
    """The scale a student samples with: a student with a guidance input is told ``guidance``; one distilled at a
    fixed scale has it folded in and runs unguided (1)."""
    return guidance if getattr(student.config, "guidance_embed", False) else 1.0


def compare(student, teacher, num_samples: int, steps_list: list[int], guidance: float, seed: int = 0,
            sampler: str = "lcm", student_steps: int | None = None) -> list[dict]:
    """Rows of quality (`pydiff.metrics.evaluate`) for the student (``sampler``, one model call per step; a
    guidance-embedded student told ``guidance``; at most ``student_steps``: a generator's steps) and the teacher
    (DPM-Solver++(2M) with classifier-free guidance: two calls per step) at each step count, same noise and
    labels."""
    import torch

    import pydiff
    from pydiff.metrics import evaluate

    cfg = teacher.config
    labels = torch.arange(num_samples) % cfg.num_classes
    noise = torch.randn(num_samples, cfg.in_channels, cfg.sample_size, cfg.sample_size,
                        generator=torch.Generator().manual_seed(seed))
    runs = [("student", student, sampler, student_scale(student, guidance)), ("teacher", teacher, "dpmpp_2m", guidance)]
    rows = []
    for steps in steps_list:
        for who, model, sampler, g in runs:
            if who == "student" and student_steps is not None and steps > student_steps:
                continue
            kwargs = model.sampling_kwargs(labels, g)
            started = time.perf_counter()
            with torch.inference_mode():
                x = pydiff.sample(model, noise, sampler=sampler, steps=steps, schedule=model.scheduler_config,
                                  generator=torch.Generator().manual_seed(seed + 1), **kwargs)
            seconds = time.perf_counter() - started
            calls = steps * (1 if kwargs["guidance_scale"] == 1 else 2)
            rows.append({"model": who, "sampler": sampler, "steps": steps, "model_calls": calls, "guidance_scale": g,
                         "seconds": round(seconds, 3), **evaluate(x, labels)})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| steps | model | sampler | model calls | accuracy | FD-digits | FD / floor | s |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['model']} | {r['sampler']} | {r['model_calls']} | {r['accuracy']:.1%} | "
                     f"{r['fd']:.1f} | {r['fd'] / r['fd_floor']:.2f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import torch

    import pydiff
    from pydiff.models import DiT, load, load_digits, save
    from pydiff.models.grid import save_grid

    from .consistency import distill_consistency
    from .score import RealSamples, ScoreDistillation, distill_one_step, gan_layer_name, teacher_pairs

    out = Path(args.out or f"{args.model}-{args.method}.safetensors")
    report, grid = out.with_suffix(".json"), out.with_suffix(".png")
    existing = [str(p) for p in (out, report, grid) if p.exists()]
    if existing and not args.overwrite:
        print(f"pydiff distill: {', '.join(existing)} exist(s); pass --overwrite to replace", file=sys.stderr)
        return 2
    try:
        settings = settings_of(args)
        if args.regression_pairs is not None and not getattr(settings, "regression_weight", 0):
            raise ValueError("--regression-pairs applies with --regression-weight > 0")
        if args.regression_pairs is not None and args.regression_pairs < 1:
            raise ValueError(f"--regression-pairs must be >= 1, got {args.regression_pairs}")
    except ValueError as exc:
        print(f"pydiff distill: {exc}", file=sys.stderr)
        return 2
    teacher = load(args.model)
    one_step = isinstance(settings, ScoreDistillation)
    try:
        student = initial_student(args, teacher, one_step, not one_step and settings.guidance_range is not None)
        if one_step and settings.gan_weight:  # (the fake denoiser starts as the teacher's copy)
            gan_layer_name(teacher, settings.gan_layer)
    except ValueError as exc:
        print(f"pydiff distill: {exc}", file=sys.stderr)
        return 2
    init = {} if student is None else {"init": args.init,
                                       "init_method": (getattr(student, "provenance", None) or {}).get("method")}
    # a generator: sampler one_step (K steps: lcm), its steps shown, the teacher's at any count up to T
    sampler, most = ((("one_step" if settings.generator_steps == 1 else "lcm"),
                      teacher.scheduler_config["num_train_timesteps"]) if one_step
                     else (args.method, settings.original_steps))
    eval_steps = _eval_steps(args.eval_steps, most)
    if eval_steps is None or args.eval_samples < 0 or args.eval_samples == 1:
        print(f"pydiff distill: --eval-steps must be comma-separated ints in [1, {most}], got {args.eval_steps!r}; "
              f"--eval-samples must be 0 or >= 2", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    if one_step:  # data-free (only the labels) unless DMD2's GAN reads the training digits
        cfg = teacher.config
        labels = torch.arange(cfg.num_classes)
        shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        pairs = None
        if settings.regression_weight:  # class-balanced teacher samples from their own noise
            count = args.regression_pairs or PAIRS
            pair_labels = torch.arange(count) % cfg.num_classes
            noise = torch.randn(count, *shape, generator=torch.Generator().manual_seed(args.seed + 2))
            pairs = teacher_pairs(teacher, noise, **teacher.sampling_kwargs(pair_labels, args.guidance),
                                  steps=PAIR_STEPS, sampler=PAIR_SAMPLER)
        real = None
        if settings.gan_weight:
            data = load_digits("train", size=cfg.sample_size)
            real = RealSamples(data.images, {"y": data.labels})
        result = distill_one_step(teacher, shape, {"y": labels}, {"y": torch.full_like(labels, cfg.num_classes)},
                                  settings, student=student, generator=generator, regression=pairs, real=real)
    else:
        data = load_digits("train", size=teacher.config.sample_size)
        null = torch.full_like(data.labels, teacher.config.num_classes)
        # without --init, a guidance-conditioned student is the teacher's architecture plus a guidance input at 0
        if student is None and settings.guidance_range is not None:
            student = DiT(dataclasses.replace(teacher.config, guidance_embed=True), teacher.scheduler_config)
            student.load_state_dict(teacher.state_dict(), strict=False)
        result = distill_consistency(teacher, data.images, {"y": data.labels}, {"y": null}, settings,
                                     student=student, generator=generator)
    provenance = {"teacher": args.model, "seed": args.seed, **result.provenance(), **init,
                  "command": "pydiff distill " + " ".join(sys.argv[2:])}
    out.parent.mkdir(parents=True, exist_ok=True)
    save(result.student, out, provenance)
    print(f"distilled in {result.seconds:.0f} s (final loss {result.losses[-1]:.3g}); wrote {out}")
    rows = []
    if args.eval_samples:
        student = load(args.model, out)  # read back, so the figures describe the file written
        rows = compare(student, teacher, args.eval_samples, eval_steps, args.guidance, args.seed, sampler,
                       settings.generator_steps if one_step else None)
        cfg = student.config
        labels = torch.arange(cfg.num_classes * 10) // 10
        noise = torch.randn(len(labels), cfg.in_channels, cfg.sample_size, cfg.sample_size,
                            generator=torch.Generator().manual_seed(args.seed))
        steps = settings.generator_steps if one_step else min(4, settings.original_steps)
        with torch.inference_mode():
            x = pydiff.sample(student, noise, sampler=sampler, steps=steps, schedule=student.scheduler_config,
                              **student.sampling_kwargs(labels, student_scale(student, args.guidance)))
        save_grid(x, labels, grid, title=f"{args.model} {args.method} student: {steps} step{'s' * (steps > 1)}, no "
                                         f"guidance pass")
        print(format_rows(rows))
        print(f"wrote {grid}")
    report.write_text(json.dumps({**provenance, "evaluation": rows}, indent=2) + "\n")
    print(f"wrote {report}")
    return 0
