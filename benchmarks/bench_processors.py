"""diffusers models with pydiff's attention processors (``set_attention_backend``) against the same models with
their stock processors: what a pipeline gains. Each model is built with its production widths and one or two
transformer blocks (random weights), and its forward at production token counts (1024 x 1024 images, a 480p Wan
clip) is timed both ways in one process, bf16 on a GPU (the kernel autotuned, except in the quick suite); the
outputs are compared first (``max_diff``: the largest difference, relative to the largest stock output). The
blocks' MLPs, norms and projections run in both, so a ratio here is smaller than the attention call's own
(``bench_attention``'s variant rows).

On a CPU the suite runs the tests' tiny configs with "ours" being the torch backend: a smoke test of the suite,
not a performance claim. Needs diffusers (its rows say so where it is missing).

    python benchmarks/bench_processors.py [--device cuda] [--quick] [--out DIR]   # prints the table last
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

if __package__ in (None, ""):  # run as a script: make the repository root importable for ``benchmarks.*``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import comparison_row, comparison_table, measure  # noqa: E402

TITLE = "diffusers models: pydiff's attention processors vs the stock ones"
ORDER = 25


@dataclass
class Model:
    """A diffusers model to time: ``build(gpu)`` the model (production widths on a GPU, tiny on a CPU),
    ``inputs(gpu, gen)`` its forward's keyword arguments (float32, on the CPU; moved and cast before timing)."""

    name: str
    shape: str
    build: Callable[[bool], torch.nn.Module]
    inputs: Callable[[bool, torch.Generator], Dict[str, object]]


def _ids(*sizes: int) -> torch.Tensor:
    """Flux-style position ids (a grid over ``sizes``, one column per axis), (prod(sizes), len(sizes))."""
    axes = torch.meshgrid(*(torch.arange(float(n)) for n in sizes), indexing="ij")
    return torch.stack(axes, -1).reshape(-1, len(sizes))


def _flux(gpu: bool) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    if gpu:  # FLUX.1-dev's widths, one double- and one single-stream block
        return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                      attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                      pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    return FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=24, guidance_embeds=True, axes_dims_rope=(4, 6, 6))


def _flux_inputs(gpu: bool, gen: torch.Generator) -> Dict[str, object]:
    side, text, channels, width, pooled = (64, 512, 64, 4096, 768) if gpu else (6, 7, 8, 32, 24)
    return dict(hidden_states=torch.randn(1, side * side, channels, generator=gen),
                encoder_hidden_states=torch.randn(1, text, width, generator=gen),
                pooled_projections=torch.randn(1, pooled, generator=gen), timestep=torch.tensor([0.7]),
                img_ids=_ids(1, side, side), txt_ids=torch.zeros(text, 3), guidance=torch.tensor([3.5]))


def _sd3(gpu: bool) -> torch.nn.Module:
    from diffusers import SD3Transformer2DModel

    if gpu:  # SD3.5 Medium's widths (QK RMSNorms), two blocks
        return SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=2,
                                     attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                     caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                     qk_norm="rms_norm")
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                 pooled_projection_dim=24, out_channels=4, qk_norm="rms_norm")


def _sd3_inputs(gpu: bool, gen: torch.Generator) -> Dict[str, object]:
    channels, side, text, width, pooled = (16, 128, 333, 4096, 2048) if gpu else (4, 8, 9, 32, 24)
    return dict(hidden_states=torch.randn(2, channels, side, side, generator=gen),
                encoder_hidden_states=torch.randn(2, text, width, generator=gen),
                pooled_projections=torch.randn(2, pooled, generator=gen), timestep=torch.tensor([0.3, 0.3]))


def _qwen_image(gpu: bool) -> torch.nn.Module:
    from diffusers import QwenImageTransformer2DModel

    if gpu:  # Qwen-Image's widths, one block
        return QwenImageTransformer2DModel(num_layers=1)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                       axes_dims_rope=(4, 6, 6))


def _qwen_image_inputs(gpu: bool, gen: torch.Generator) -> Dict[str, object]:
    # (packed 2 x 2 latent patches of a 1024 x 1024 image; two prompts, the second padded: the text mask)
    (height, width), channels, text, features = ((64, 64), 64, 256, 3584) if gpu else ((4, 5), 16, 7, 32)
    mask = torch.ones(2, text, dtype=torch.long)
    mask[1, text // 3:] = 0
    return dict(hidden_states=torch.randn(2, height * width, channels, generator=gen),
                encoder_hidden_states=torch.randn(2, text, features, generator=gen), encoder_hidden_states_mask=mask,
                timestep=torch.tensor([0.5, 0.5]), img_shapes=[(1, height, width)] * 2)


def _wan(gpu: bool) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    if gpu:  # Wan 2.1 14B's widths, one block
        return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
                                     in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824,
                                     num_layers=1, rope_max_seq_len=1024)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                 out_channels=4, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=1,
                                 rope_max_seq_len=32)


def _wan_inputs(gpu: bool, gen: torch.Generator) -> Dict[str, object]:
    # (480p, 81 frames: 21 latent frames of 60 x 104, 32760 tokens after the 2 x 2 patches)
    shape, text, width = ((1, 16, 21, 60, 104), 512, 4096) if gpu else ((1, 4, 3, 8, 6), 9, 32)
    return dict(hidden_states=torch.randn(*shape, generator=gen), timestep=torch.tensor([500]),
                encoder_hidden_states=torch.randn(1, text, width, generator=gen))


def _z_image(gpu: bool) -> torch.nn.Module:
    from diffusers import ZImageTransformer2DModel

    if gpu:  # Z-Image Turbo's widths, one block after one refiner block per stream
        return ZImageTransformer2DModel(dim=3840, n_layers=1, n_refiner_layers=1, n_heads=30, n_kv_heads=30,
                                        cap_feat_dim=2560)
    return ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=64, n_layers=1,
                                    n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=24,
                                    axes_dims=[8, 12, 12], axes_lens=[128, 32, 32])


def _z_image_inputs(gpu: bool, gen: torch.Generator) -> Dict[str, object]:
    # (two prompts of different lengths: the padding is the key mask; its forward takes lists per sample)
    channels, side, width, texts = (16, 128, 2560, (200, 120)) if gpu else (4, 8, 24, (37, 4))
    return dict(x=[torch.randn(channels, 1, side, side, generator=gen) for _ in texts], t=torch.tensor([0.5, 0.5]),
                cap_feats=[torch.randn(n, width, generator=gen) for n in texts])


def _pixart(gpu: bool) -> torch.nn.Module:
    from diffusers import PixArtTransformer2DModel

    if gpu:  # PixArt-Sigma's widths, two blocks
        return PixArtTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                        num_layers=2, cross_attention_dim=1152, sample_size=128, patch_size=2,
                                        caption_channels=4096, use_additional_conditions=False)
    return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=2, cross_attention_dim=16, norm_num_groups=8, sample_size=8,
                                    patch_size=2, caption_channels=24, use_additional_conditions=False)


def _pixart_inputs(gpu: bool, gen: torch.Generator) -> Dict[str, object]:
    side, text, width = (128, 300, 4096) if gpu else (8, 9, 24)
    mask = torch.ones(2, text)
    mask[1, text // 4:] = 0  # (the second prompt's T5 padding)
    return dict(hidden_states=torch.randn(2, 4, side, side, generator=gen),
                encoder_hidden_states=torch.randn(2, text, width, generator=gen), timestep=torch.tensor([500, 500]),
                encoder_attention_mask=mask)


def _flux3(gpu: bool) -> torch.nn.Module:
    from diffusers.models.transformers.transformer_flux3 import Flux3Transformer2DModel

    if gpu:  # FLUX.3's widths, one per-mode block (per mode) and one joint block
        return Flux3Transformer2DModel(num_layers=1, num_single_layers=1)
    return Flux3Transformer2DModel(in_channels=8, cond_in_channels=8, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                   timestep_channels=32, axes_dims_rope=(4, 4, 4, 4))


def _flux3_inputs(gpu: bool, gen: torch.Generator) -> Dict[str, object]:
    side, text, channels, width = (64, 512, 128, 20480) if gpu else (4, 5, 8, 24)
    text_ids = torch.zeros(text, 4)
    text_ids[:, 3] = torch.arange(float(text))
    return dict(hidden_states=torch.randn(1, side * side, channels, generator=gen),
                encoder_hidden_states=torch.randn(1, text, width, generator=gen), timestep=torch.tensor([0.7]),
                img_ids=torch.cat([_ids(1, side, side), torch.zeros(side * side, 1)], 1), txt_ids=text_ids)


def _krea2(gpu: bool) -> torch.nn.Module:
    from diffusers.models.transformers.transformer_krea2 import Krea2Transformer2DModel

    if gpu:  # Krea 2's widths (48 query, 12 key/value heads), its text fusion and one block
        return Krea2Transformer2DModel(num_layers=1)
    return Krea2Transformer2DModel(in_channels=8, num_layers=1, attention_head_dim=16, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, timestep_embed_dim=32,
                                   text_hidden_dim=24, num_text_layers=2, text_num_attention_heads=2,
                                   text_num_key_value_heads=2, text_intermediate_size=32, num_layerwise_text_blocks=1,
                                   num_refiner_text_blocks=1, axes_dims_rope=(4, 6, 6))


def _krea2_inputs(gpu: bool, gen: torch.Generator) -> Dict[str, object]:
    # (two prompts, the second padded: the key mask; the text encoder's 12 tapped layers)
    side, text, layers, width, channels = (64, 256, 12, 2560, 64) if gpu else (4, 7, 2, 24, 8)
    mask = torch.ones(2, text, dtype=torch.bool)
    mask[1, text // 3:] = False
    positions = torch.zeros(text + side * side, 3, dtype=torch.long)
    positions[text:, 1:] = _ids(side, side).long()
    return dict(hidden_states=torch.randn(2, side * side, channels, generator=gen),
                encoder_hidden_states=torch.randn(2, text, layers, width, generator=gen),
                timestep=torch.tensor([0.5, 0.5]), position_ids=positions, encoder_attention_mask=mask)


def _prx(gpu: bool) -> torch.nn.Module:
    from diffusers.models.transformers.transformer_prx import PRXTransformer2DModel

    if gpu:  # PRX's widths (28 heads of 64), two blocks
        return PRXTransformer2DModel(depth=2)
    return PRXTransformer2DModel(in_channels=4, patch_size=2, context_in_dim=24, hidden_size=32, mlp_ratio=2.0,
                                 num_heads=2, depth=2, axes_dim=[8, 8])


def _prx_inputs(gpu: bool, gen: torch.Generator) -> Dict[str, object]:
    side, text, channels, width = (128, 256, 16, 2304) if gpu else (8, 7, 4, 24)
    mask = torch.ones(2, text, dtype=torch.bool)
    mask[1, text // 3:] = False
    return dict(hidden_states=torch.randn(2, channels, side, side, generator=gen), timestep=torch.tensor([0.5, 0.5]),
                encoder_hidden_states=torch.randn(2, text, width, generator=gen), attention_mask=mask)


MODELS = [
    Model("FLUX.1 (1 double + 1 single block)", "B1 4096 img + 512 txt, H24 D128", _flux, _flux_inputs),
    Model("SD3.5 Medium (2 joint blocks)", "B2 4096 img + 333 txt, H24 D64", _sd3, _sd3_inputs),
    Model("PixArt-Sigma (2 blocks, text padding)", "B2 4096 img, 300 txt, H16 D72", _pixart, _pixart_inputs),
    Model("Z-Image (2 refiner + 1 block)", "B2 4096 img + 200/120 txt, H30 D128", _z_image, _z_image_inputs),
    Model("Qwen-Image (1 block, text padding)", "B2 4096 img + 256 txt, H24 D128", _qwen_image, _qwen_image_inputs),
    Model("Wan 2.1 14B (1 block)", "B1 480p x 81 frames (32760 tokens), H40 D128", _wan, _wan_inputs),
    Model("FLUX.3 (1 per-mode + 1 joint block)", "B1 4096 img + 512 txt, H24 D128", _flux3, _flux3_inputs),
    Model("Krea 2 (text fusion + 1 block, text padding)", "B2 256 txt + 4096 img, H48/12 D128", _krea2,
          _krea2_inputs),
    # (image queries only: the text's keys a second stream of keys only)
    Model("PRX (2 blocks, text padding)", "B2 4096 img x (4096 img + 256 txt), H28 D64", _prx, _prx_inputs),
]
#: the models the quick suite times on a GPU (the video block alone takes longer than the rest)
GPU_QUICK = (0, 1, 2, 3, 4)


def _moved(x, device, dtype):
    """``x`` on ``device``, its floating-point tensors in ``dtype`` (lists and dicts of them too)."""
    if isinstance(x, dict):
        return {name: _moved(value, device, dtype) for name, value in x.items()}
    if isinstance(x, list):
        return [_moved(value, device, dtype) for value in x]
    if not isinstance(x, torch.Tensor):
        return x
    return x.to(device, dtype) if x.is_floating_point() else x.to(device)


def _flat(output) -> torch.Tensor:
    """A model's output sample as one flat tensor (Z-Image's is a list of per-sample tensors)."""
    sample = output.sample
    return torch.cat([x.flatten() for x in sample]) if isinstance(sample, list) else sample.flatten()


def _rows(model: Model, device: str, dtype, quick: bool) -> List[Dict[str, object]]:
    from pydiff.integrations.diffusers import set_attention_backend

    gpu = device == "cuda"
    with torch.random.fork_rng(devices=[]):  # (the same random weights in every run, whatever ran before)
        torch.manual_seed(0)
        stock = model.build(gpu).to(device, dtype).eval()
    ours = copy.deepcopy(stock)
    switched = set_attention_backend(ours)
    if not switched:  # (Qwen-Image's processor is replaced from diffusers 0.39)
        import diffusers

        return [{"area": "processors", "name": model.name, "shape": model.shape, "peer": "stock processors",
                 "unavailable": f"no processor of this model is replaced on diffusers {diffusers.__version__}"}]
    inputs = _moved(model.inputs(gpu, torch.Generator().manual_seed(0)), device, dtype)

    def run(m):
        return lambda: _flat(m(**inputs))

    expected, got = run(stock)(), run(ours)()
    diff = ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
    repeat = dict(warmup=2, min_repeat=3 if quick else 5, min_time=0.1 if quick else 0.5)
    ours_time = measure(run(ours), device=device, **repeat)
    stock_time = measure(run(stock), device=device, **repeat)
    shape = model.shape if gpu else "the tests' tiny config"
    return [comparison_row("processors", model.name, shape, ours_time, "stock processors", stock_time,
                           max_diff=diff, modules_switched=switched, device=device)]


def run(quick: bool, device: str, progress: bool = False) -> List[Dict[str, object]]:
    """One row per model: its forward with our processors vs with the stock ones."""
    try:
        import diffusers  # noqa: F401
    except ImportError as exc:
        return [{"area": "processors", "name": "every model", "peer": "stock processors",
                 "unavailable": f"diffusers is not installed ({exc})"}]
    import pydiff

    gpu = device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch sees no CUDA device")
    dtype = torch.bfloat16 if gpu else torch.float32
    models = [MODELS[i] for i in GPU_QUICK] if gpu and quick else MODELS
    rows: List[Dict[str, object]] = []
    from benchmarks.bench_attention import _autotune

    # (tuned as the library tunes, each call signature once, but not in the quick suite: the untuned default tiles)
    with pydiff.use_backend("triton" if gpu else "torch"), _autotune(gpu and not quick), torch.no_grad():
        for model in models:
            if progress:
                print(f"  processors: {model.name}", file=sys.stderr, flush=True)
            try:
                rows += _rows(model, device, dtype, quick)
            except (ImportError, RuntimeError, TypeError, ValueError) as exc:
                # (a diffusers without the model, a constructor of another version, out of memory: report it)
                rows.append({"area": "processors", "name": model.name, "shape": model.shape,
                             "peer": "stock processors", "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            if gpu:
                torch.cuda.empty_cache()
    return rows


def section(rows) -> str:
    figures = [r for r in rows if "speedup" in r]
    where = ("On a CPU: the tests' tiny configs, ours being the torch backend (SDPA as the stock processors): a check "
             "that the suite runs, not a speed claim. " if any(r.get("device") == "cpu" for r in figures) else "")
    lines = [where + "Whole forwards of models with a block or two at production widths on a GPU (random weights); "
             "the speedup is the stock processors' time over ours. max_diff: the largest output difference relative "
             "to the largest stock output.", "", comparison_table(figures, extra_columns=["max_diff",
                                                                                           "modules_switched"])]
    skipped = [r for r in rows if "unavailable" in r or "error" in r]
    if skipped:
        lines += ["", "Not measured:"]
        lines += [f"- {r['name']}: {r.get('unavailable') or r.get('error')}" for r in skipped]
    return "\n".join(lines)


def plots(rows, out_dir) -> List[Path]:
    """The speedup of each model's forward with our processors over the stock ones, a bar per model (1 marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [r for r in rows if "speedup" in r]
    if not figures:
        return []
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(figures) + 1.5))
    names = [r["name"] for r in figures]
    ax.barh(range(len(figures)), [r["speedup"] for r in figures], color="C0")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(figures)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup: stock processors' time / ours (median)")
    ax.set_title(f"diffusers models' forward, ours vs stock processors ({figures[0]['device']})", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path = Path(out_dir) / "processors_speedup.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv=None) -> int:
    from benchmarks.report import write_area

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="folder for results.json and report.md")
    args = parser.parse_args(argv)
    rows = run(args.quick, args.device, progress=True)
    print(section(rows))
    if args.out:
        report = write_area("benchmarks.bench_processors", rows, args.out, "quick" if args.quick else "full",
                            args.device)
        print(f"wrote {Path(args.out) / 'results.json'} and {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
