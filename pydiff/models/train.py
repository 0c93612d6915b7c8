"""Train the bundled digits models on CPU and write their weights + provenance.

    python -m pydiff.models.train --what classifier     # ~1 minute; needed by the DiT's evaluation
    python -m pydiff.models.train --what dit            # ~15 minutes on 2 cores, then evaluates its samples

The DiT is a diffusers-compatible VP epsilon model (DDPM, Ho et al. 2020): 1000 train timesteps, scaled_linear
betas 0.00085..0.012, 10% label dropout to the null class for classifier-free guidance (Ho & Salimans 2022); the weights
written are an exponential moving average of the trained ones. The evaluation samples with diffusers'
DPMSolverMultistepScheduler (DPM-Solver++(2M), Lu et al. 2022) as the reference sampler.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pydiff.models import WEIGHTS_DIR, ClassifierConfig, DigitsClassifier, DiT, DiTConfig, save
from pydiff.models.digits import NUM_CLASSES, SPLIT_RANDOM_STATE, TEST_FRACTION, load_digits

# The sampler named by _class_name is the one the quality numbers are measured with; the model itself only
# depends on the beta schedule and the prediction type. scaled_linear rather than linear: on 16x16 digits
# (8x8 of content) the linear schedule leaves SNR < 0.03 for the last 40% of timesteps, so little of the
# training signal falls where the digit's class is decided (a first run ignored its labels: 18% accuracy).
SCHEDULER_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}
# Patch 4 (16 tokens of 4x4 pixels = 2x2 pixels of the 8x8 originals): a quarter of patch 2's cost, so four
# times the optimizer steps fit the CPU budget; at equal time it samples far better (measured, see weights/).
DIT_CONFIG = DiTConfig(sample_size=16, patch_size=4, width=128, depth=4, num_heads=4, rope=False)
DEFAULTS = {
    "dit": {"steps": 3000, "batch_size": 128, "lr": 1e-3, "warmup": 100, "ema_decay": 0.998, "label_dropout": 0.1},
    "classifier": {"steps": 1500, "batch_size": 64, "lr": 2e-3, "warmup": 50},
}
ARCH_OPTIONS = ("patch_size", "width", "depth", "num_heads")
EVAL_GUIDANCE = (1.0, 1.5, 2.0)
EVAL_SEED = 1234


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless index batches, reshuffled every epoch."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def optimise(opt, args, generator: torch.Generator, examples: int, desc: str, loss_of, clip=None,
             after_step=None) -> None:
    """The trainers' loop: ``args.steps`` optimizer steps at ``lr_at``'s rate over shuffled batches of
    ``args.batch_size`` example indices; ``loss_of(indices)`` gives the loss, gradients of ``clip`` are clipped to
    norm 1, and ``after_step(step)`` runs after each step (the EMA)."""
    index_batches = batches(examples, args.batch_size, generator)
    bar = tqdm(range(args.steps), desc=desc, mininterval=5)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
        loss = loss_of(next(index_batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(clip, 1.0)
        opt.step()
        if after_step is not None:
            after_step(step)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)


def random_shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by up to max_shift pixels per axis, filling with background (-1)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def train_classifier(args, generator: torch.Generator) -> tuple[DigitsClassifier, dict]:
    """Cross-entropy training with +-1 pixel shifts, so generated digits a little off-centre still classify."""
    train, test = load_digits("train"), load_digits("test")
    model = DigitsClassifier(ClassifierConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    model.train()

    def loss_of(idx):
        return F.cross_entropy(model(random_shift(train.images[idx], generator)), train.labels[idx])

    optimise(opt, args, generator, len(train.labels), "classifier", loss_of)
    model.eval()
    with torch.no_grad():
        accuracy = (model(test.images).argmax(1) == test.labels).double().mean().item()
    return model, {"held_out_accuracy": accuracy}


def train_dit(args, generator: torch.Generator) -> tuple[DiT, dict]:
    """Epsilon-prediction DDPM loss, uniform timesteps, EMA of the weights."""
    from pydiff.schedules import Schedule

    config = dataclasses.replace(DIT_CONFIG, **{k: getattr(args, k) for k in ARCH_OPTIONS if getattr(args, k)})
    train = load_digits("train", size=config.sample_size)
    abar = Schedule.from_diffusers(SCHEDULER_CONFIG).alphas_cumprod.to(torch.float32)
    model = DiT(config, scheduler_config=SCHEDULER_CONFIG)
    ema = DiT(config, scheduler_config=SCHEDULER_CONFIG)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    model.train()

    def loss_of(idx):
        x0, y = train.images[idx], train.labels[idx].clone()
        y[torch.rand(len(y), generator=generator) < args.label_dropout] = NUM_CLASSES
        t = torch.randint(0, SCHEDULER_CONFIG["num_train_timesteps"], (len(y),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = abar[t].view(-1, 1, 1, 1)
        return F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y=y), noise)

    def update_ema(step):
        # EMA warm-up (decay (1+n)/(10+n) early on) so the average does not remember the random init.
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)

    optimise(opt, args, generator, len(train.labels), "dit", loss_of, clip=params, after_step=update_ema)
    return ema.eval(), {}


@torch.no_grad()
def sample_with_diffusers(model, labels: torch.Tensor, guidance_scale: float = 1.0, steps: int = 20,
                          generator: torch.Generator | None = None, batch_size: int = 500) -> torch.Tensor:
    """Class-conditional samples (N, 1, H, W) from diffusers' DPM-Solver++(2M) with classifier-free guidance
    eps = eps_null + g (eps_y - eps_null); the reference loop for quality checks."""
    from diffusers import DPMSolverMultistepScheduler

    cfg = model.config
    noise = torch.randn((len(labels), cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=generator)
    out = []
    for start in range(0, len(labels), batch_size):
        scheduler = DPMSolverMultistepScheduler.from_config(model.scheduler_config)
        scheduler.set_timesteps(steps)
        x = noise[start:start + batch_size] * scheduler.init_noise_sigma
        y = labels[start:start + batch_size]
        null = torch.full_like(y, cfg.num_classes)
        for t in scheduler.timesteps:
            if guidance_scale == 1.0:
                eps = model(x, t, y=y)
            else:
                eps_y, eps_null = model(torch.cat([x, x]), t, y=torch.cat([y, null])).chunk(2)
                eps = eps_null + guidance_scale * (eps_y - eps_null)
            x = scheduler.step(eps, t, x).prev_sample
        out.append(x)
    return torch.cat(out)


def evaluate_dit(model: DiT, num_samples: int, steps: int = 20, guidance=EVAL_GUIDANCE) -> list[dict]:
    """Accuracy and FD-digits of `num_samples` class-balanced DPM++(2M) samples at each guidance scale."""
    from pydiff.metrics import evaluate

    labels = torch.arange(num_samples) % NUM_CLASSES
    rows = []
    for g in guidance:
        samples = sample_with_diffusers(model, labels, g, steps, torch.Generator().manual_seed(EVAL_SEED))
        result = evaluate(samples, labels)
        rows.append({"guidance_scale": g, "steps": steps, "num_samples": num_samples, **result,
                     "fd_ratio": result["fd"] / result["fd_floor"]})
        print(f"guidance {g}: accuracy {result['accuracy']:.3f}  FD {result['fd']:.3f}  floor "
              f"{result['fd_floor']:.3f}  ratio {rows[-1]['fd_ratio']:.2f}", flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=("dit", "classifier"), required=True)
    parser.add_argument("--steps", type=int, help="optimizer steps (default: dit 3000, classifier 1500)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--ema-decay", type=float)
    parser.add_argument("--label-dropout", type=float)
    for option in ARCH_OPTIONS:
        parser.add_argument("--" + option.replace("_", "-"), type=int, help="dit only: overrides DIT_CONFIG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--eval-samples", type=int, default=1000, help="dit only; 0 skips the evaluation")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.what].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unused = [k for k in (*DEFAULTS["dit"], *ARCH_OPTIONS) if k not in DEFAULTS[args.what] and getattr(args, k)]
    if args.what == "classifier" and unused:
        parser.error(f"options {unused} apply to --what dit only")
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    model, results = (train_dit if args.what == "dit" else train_classifier)(args, generator)
    train_seconds = time.perf_counter() - started
    # Process CPU time too: on a shared machine the wall time mostly measures the neighbours.
    cpu_seconds = time.process_time() - cpu_started
    name = "digits_dit" if args.what == "dit" else "digits_classifier"
    provenance = {
        "command": "python -m pydiff.models.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "seed": args.seed,
        "hyperparameters": {k: getattr(args, k) for k in DEFAULTS[args.what]},
        "data": {"source": "sklearn.datasets.load_digits", "split": "train", "size": model.config.sample_size,
                 "split_rule": f"sklearn train_test_split(test_size={TEST_FRACTION}, stratify=target, "
                               f"random_state={SPLIT_RANDOM_STATE})"},
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "threads": args.threads,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "cpu": platform.processor() or platform.machine(),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    save(model, args.out_dir / f"{name}.safetensors", provenance)
    print(f"trained in {train_seconds:.0f} s; wrote {args.out_dir / (name + '.safetensors')}", flush=True)
    if args.what == "dit" and args.eval_samples:
        from pydiff.models import load

        # Evaluate the model read back from disk, so the numbers describe the committed file.
        results["evaluation"] = evaluate_dit(load("digits", args.out_dir / f"{name}.safetensors"), args.eval_samples)
    (args.out_dir / f"{name}.json").write_text(json.dumps({**provenance, "results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=2), flush=True)


if __name__ == "__main__":
    main()
