"""``pydiff export``: the bundled digits model, or a whole sampler with it as one graph, as an ONNX file (checked
with ONNX Runtime) or an AOTInductor package (checked by loading it), then sampled through the exported file."""

from __future__ import annotations

import argparse
import inspect
import sys

from pydiff.models.cli import add_sampling_arguments, load_model, sampling_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default="sampler", choices=("sampler", "model"),
                        help="sampler: noise, labels -> digits, every step in one graph (default); model: x, t, y -> "
                             "the model's prediction")
    add_sampling_arguments(parser, steps=8)
    parser.add_argument("--format", default="onnx", choices=("onnx", "aoti"))
    parser.add_argument("--batch", type=int, default=10, help="batch of the example inputs")
    parser.add_argument("--dynamic-batch", action="store_true", help="export with a symbolic batch size")
    parser.add_argument("--out", default=None, help="file to write (default: <model>-<what>.onnx or .pt2)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if pydiff did not make it")


def main(args: argparse.Namespace) -> int:
    import torch

    from pydiff import export
    from pydiff.metrics import evaluate
    from pydiff.samplers import SamplerModule

    error = sampling_error(args, "batch")
    if error is not None:
        print(f"pydiff export: {error}", file=sys.stderr)
        return 2
    out = args.out or f"{args.model}-{args.what}.{'onnx' if args.format == 'onnx' else 'pt2'}"
    model = load_model(args, "export")
    if model is None:
        return 2
    cfg = model.config
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    labels = torch.arange(args.batch) % cfg.num_classes
    batch = torch.export.Dim("batch", min=1) if args.dynamic_batch else None
    guided = model.sampling_kwargs(labels.to(args.device), args.guidance)  # cond (with a guidance input) + uncond
    per_row = {name: {0: batch} for name in guided["cond"]}
    if args.what == "sampler":
        graph = SamplerModule(model, args.sampler, args.steps, guidance_scale=guided["guidance_scale"])
        inputs = (noise.to(args.device),)
        kwargs = {"cond": guided["cond"]}
        if graph.guidance is not None:
            kwargs["uncond"] = guided["uncond"]
        if graph.noise_stages:
            kwargs["step_noise"] = torch.randn(len(graph.noise_stages), *noise.shape, generator=g).to(args.device)
        dims = {"noise": {0: batch}, "cond": per_row, "uncond": {"y": {0: batch}}, "step_noise": {1: batch}}
    else:
        graph = model
        inputs = (noise.to(args.device), torch.full((args.batch,), 500.0, device=args.device))
        kwargs = guided["cond"]
        dims = {"x": {0: batch}, "t": {0: batch}, **per_row}
    names = list(inspect.signature(graph.forward).parameters)[:len(inputs)] + list(kwargs)
    shapes = None if batch is None else {name: dims[name] for name in names}
    write = export.onnx if args.format == "onnx" else export.aoti
    try:
        result = write(graph, inputs, out, kwargs=kwargs, dynamic_shapes=shapes, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"pydiff export: {exc}", file=sys.stderr)
        return 2
    print(result)
    if args.what == "sampler":
        if args.format == "onnx":
            samples = export.run_onnx(result.path, *inputs, **kwargs)[0]
        else:
            with torch.no_grad():
                samples = torch._inductor.aoti_load_package(str(result.path))(*inputs, **kwargs).cpu()
        q = evaluate(samples, labels)
        print(f"{args.batch} digits sampled through {result.path}: classifier accuracy {q['accuracy']:.1%}")
    return 0
