"""pydiff.export: pydiff's ops lowered to standard ONNX ops and checked with ONNX Runtime (attention over the
variant grid, against float64), whole samplers as one graph (ONNX and AOTInductor) against ``pydiff.sample``, the
rules for files, the optional TensorRT builder, and ``pydiff export``."""

import dataclasses
import os
import sys
import zipfile

import pytest
import torch

import pydiff
from pydiff import export
from pydiff.models import DiT, load, save
from pydiff.ops.backend import REGISTRY
from pydiff.samplers import SamplerModule
from test_attention import GRID, _streams, build, references, rel_err


def _missing(*modules):
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


#: torch's ONNX exporter translates through onnxscript; the files are checked with ONNX Runtime
needs_onnx = pytest.mark.skipif(bool(_missing("onnx", "onnxruntime", "onnxscript")),
                                reason=f"needs {_missing('onnx', 'onnxruntime', 'onnxscript')}")

ONNX_CASES = [c for c in GRID if c.dtype in (torch.float32, torch.float16)]


class Attend(torch.nn.Module):
    """``pydiff.attention(q, k, v, **kw)``, its other tensors constants of the graph."""

    def __init__(self, kw):
        super().__init__()
        self.kw = kw

    def forward(self, q, k, v):
        return pydiff.attention(q, k, v, **self.kw)


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def _pydiff_ops(program) -> set:
    return {str(node.target) for node in program.graph.nodes if str(node.target).startswith("pydiff.")}


def test_every_op_has_a_reference_to_lower_to():
    assert set(REGISTRY) == {"pydiff::lincomb", "pydiff::pair_moments", "pydiff::attention"}
    for name, ops in REGISTRY.items():
        assert callable(ops.reference), name


@needs_onnx
@pytest.mark.parametrize("case", ONNX_CASES, ids=str)
def test_attention_onnx(case, tmp_path):
    """Each variant's graph runs in ONNX Runtime: as close to float64 as PyTorch's own sequence in that dtype (fp32:
    1e-5 relative, or twice PyTorch's float32 error where float32 itself cannot resolve the scores: the all-padding
    masks)."""
    q, k, v, kw = build(case, seed=5)
    model = Attend(kw)
    program = torch.export.export(model, (q, k, v))
    assert _pydiff_ops(program) == {"pydiff.attention.default"}
    assert not _pydiff_ops(export.lower(program))
    result = export.onnx(model, (q, k, v), tmp_path / "attention.onnx")
    assert result.max_abs_error <= result.tolerance[0] + result.tolerance[1] * 10
    outs = export.run_onnx(result.path, q, k, v)
    ref64, lowp = references(q, k, v, kw)
    stock = lowp if lowp is not None else pydiff.reference.attention.attention_reference(q, k, v, **kw)
    got = outs if case.joint is not None else outs[0]
    for out, ref, low in zip(_streams(case, got), _streams(case, ref64), _streams(case, stock)):
        assert out.dtype == case.dtype and out.shape == ref.shape
        if out.numel() == 0:
            continue
        if case.dtype == torch.float32:
            assert rel_err(out, ref) <= max(1e-5, 2 * rel_err(low, ref))
        else:  # ONNX Runtime's float16 kernels, judged against PyTorch's float16 sequence
            ours = (out.double() - ref.double()).abs().max().item()
            torch_err = (low.double() - ref.double()).abs().max().item()
            assert ours <= 2 * torch_err + 2e-3, f"{ours:.3g} > 2 x torch's {torch_err:.3g} + 2e-3"


@needs_onnx
def test_neighborhood_attention_onnx(tmp_path):
    """Neighborhood attention (block lists, QK norms, RoPE, grouped heads, strided views) exports: its layout, made
    by the eager call before the export, is a constant of the graph; ONNX Runtime against float64."""
    from pydiff.neighborhood import neighborhood_attention
    from test_neighborhood import _inputs, _reference

    grid, kernel_size, dim = (3, 6, 9), (3, 3, 5), 32
    q, k, v = _inputs(grid, 4, 2, dim, torch.float32, seed=8, strided=True)
    gen = torch.Generator().manual_seed(9)
    angles = torch.rand(q.shape[1:-2].numel(), dim // 2, generator=gen) * 6
    tables = (angles.cos(), angles.sin())
    norms = tuple(torch.rand(dim, generator=gen) + 0.5 for _ in range(2))

    class Neighborhood(torch.nn.Module):
        def forward(self, q, k, v):
            return neighborhood_attention(q, k, v, kernel_size, 0.3, rope=tables, q_norm_weight=norms[0],
                                          k_norm_weight=norms[1])

    result = export.onnx(Neighborhood(), (q, k, v), tmp_path / "neighborhood.onnx")
    got = export.run_onnx(result.path, q, k, v)[0]
    ref = _reference(q, k, v, kernel_size, scale=0.3, rope=tables, norms=norms)
    assert (got.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


@needs_onnx
def test_bfloat16_is_exported_unverified(tmp_path):
    """ONNX Runtime takes no bfloat16 inputs: verify=True says so; verify=False writes the graph."""
    q, k, v, kw = build(next(c for c in GRID if c.dtype == torch.bfloat16), seed=2)
    with pytest.raises(TypeError, match="bfloat16"):
        export.onnx(Attend(kw), (q, k, v), tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()
    result = export.onnx(Attend(kw), (q, k, v), tmp_path / "a.onnx", verify=False)
    assert result.max_abs_error is None and "not verified" in str(result)
    import onnx

    graph = onnx.load(str(result.path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    assert not [n for n in graph.node if n.domain not in ("", "ai.onnx")]  # standard ops only


def _sample_kwargs(digits, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 1, 16, 16, generator=gen)
    labels = torch.randint(0, 10, (batch,), generator=gen)
    return noise, {"y": labels}, {"y": torch.full_like(labels, 10)}


@pytest.mark.parametrize("sampler, steps, rescale", [("dpmpp_2m", 4, 0.0), ("unipc", 3, 0.7), ("lcm", 2, 0.0)])
def test_sampler_module_is_sample(digits, sampler, steps, rescale):
    """The module runs ``pydiff.sample``'s loop: the same kernels, bit for bit; stochastic samplers take their
    stages' noise as an input."""
    noise, cond, uncond = _sample_kwargs(digits, 3, 0)
    module = SamplerModule(digits, sampler, steps, guidance_scale=2.5, guidance_rescale=rescale)
    draws = torch.randn(len(module.noise_stages), *noise.shape)
    rows = {stage: j for j, stage in enumerate(module.noise_stages)}
    with torch.no_grad():
        expected = pydiff.sample(digits, noise, sampler, steps, guidance_scale=2.5, guidance_rescale=rescale,
                                 cond=cond, uncond=uncond, noise_sampler=lambda i, x: draws[rows[i]])
        got = module(noise, cond, uncond, step_noise=draws if module.noise_stages else None)
    assert (sampler == "lcm") == bool(module.noise_stages)
    assert torch.equal(got, expected)


def test_sampler_module_compiles_whole(digits):
    """torch.compile(fullgraph=True) takes the whole loop, model and steps, as one graph (Inductor fuses each
    lowered step into the model's kernels): against the eager module."""
    noise, cond, uncond = _sample_kwargs(digits, 2, 5)
    module = SamplerModule(digits, "dpmpp_2m", 3, guidance_scale=2.0)
    torch._dynamo.reset()
    with torch.no_grad():
        expected = module(noise, cond, uncond)
        got = torch.compile(module, fullgraph=True)(noise, cond, uncond)
    assert rel_err(got, expected) <= 1e-5


def test_sampler_module_errors(digits):
    noise, cond, uncond = _sample_kwargs(digits, 2, 1)
    guided = SamplerModule(digits, "dpmpp_2m", 2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="uncond must be given exactly when"):
        guided(noise, cond)
    with pytest.raises(ValueError, match="uncond must be given exactly when"):
        SamplerModule(digits, "dpmpp_2m", 2)(noise, cond, uncond)
    with pytest.raises(ValueError, match=r"step_noise must be a torch.float32 tensor of shape \(1, 2, 1, 16, 16\)"):
        SamplerModule(digits, "lcm", 2)(noise, cond, step_noise=torch.randn(2, 2, 1, 16, 16))
    with pytest.raises(ValueError, match="step_noise must be None: dpmpp_2m draws no noise"):
        SamplerModule(digits, "dpmpp_2m", 2)(noise, cond, step_noise=torch.randn(1, 2, 1, 16, 16))
    with pytest.raises(ValueError, match="guidance_rescale=0.5 needs classifier-free guidance"):
        SamplerModule(digits, "dpmpp_2m", 2, guidance_rescale=0.5)
    with pytest.raises(ValueError, match="sampler must be one of"):
        SamplerModule(digits, "nope", 2)


@needs_onnx
def test_sampler_onnx_dynamic_batch(digits, tmp_path):
    """A guided, rescaled 3-step UniPC with the model, every pydiff op (attention, lincomb, pair_moments) lowered,
    exported once with a symbolic batch and run by ONNX Runtime at another batch: within 1e-4 of the float64
    sampler (the model and the loop in float64)."""
    module = SamplerModule(digits, "unipc", 3, guidance_scale=3.0, guidance_rescale=0.7)
    noise, cond, uncond = _sample_kwargs(digits, 3, 2)
    batch = torch.export.Dim("batch", min=1)
    shapes = {"noise": {0: batch}, "cond": {"y": {0: batch}}, "uncond": {"y": {0: batch}}}
    with torch.no_grad():
        program = torch.export.export(module, (noise, cond, uncond), dynamic_shapes=shapes)
    assert _pydiff_ops(program) == {"pydiff.attention.default", "pydiff.lincomb.default",
                                    "pydiff.pair_moments.default"}
    result = export.onnx(module, (noise,), tmp_path / "sampler.onnx", kwargs={"cond": cond, "uncond": uncond},
                         dynamic_shapes=shapes)
    noise, cond, uncond = _sample_kwargs(digits, 5, 3)
    got = export.run_onnx(result.path, noise, cond=cond, uncond=uncond)[0]
    with torch.no_grad():
        ref64 = pydiff.sample(digits.double(), noise.double(), "unipc", 3, guidance_scale=3.0, guidance_rescale=0.7,
                              cond=cond, uncond=uncond)
    digits.float()
    assert got.shape == (5, 1, 16, 16)
    assert rel_err(got, ref64) <= 1e-4


def test_sampler_aoti(digits, tmp_path):
    """The same as an AOTInductor package (compiled C++ on this CPU), loaded again: against the float64 sampler."""
    module = SamplerModule(digits, "dpmpp_2m", 2, guidance_scale=2.0)
    noise, cond, uncond = _sample_kwargs(digits, 2, 4)
    result = export.aoti(module, (noise, cond, uncond), tmp_path / "sampler.pt2")
    assert result.format == "aoti" and result.max_abs_error <= 1e-4
    with zipfile.ZipFile(result.path) as archive:
        assert archive.comment.startswith(export.MARKER.encode())
    runner = torch._inductor.aoti_load_package(str(result.path))
    with torch.no_grad():
        got = runner(noise, cond, uncond)
        ref64 = pydiff.sample(digits.double(), noise.double(), "dpmpp_2m", 2, guidance_scale=2.0, cond=cond,
                              uncond=uncond)
    digits.float()
    assert rel_err(got, ref64) <= 1e-4


@needs_onnx
def test_diffusers_flux_onnx(tmp_path):
    """A diffusers model with pydiff's processors set exports like the stock one: the tiny FLUX.1 transformer's two
    ONNX graphs agree in ONNX Runtime. (Both differ from eager PyTorch by about 4e-4 at outputs of about 5: ONNX
    Runtime's float32 math on the stock model alone does; hence the tolerance.)"""
    pytest.importorskip("diffusers")
    from pydiff.integrations.diffusers import PydiffFluxAttnProcessor, set_attention_backend
    from test_attention_diffusers import _flux_inputs, tiny_flux

    class Sample(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, **inputs):
            return self.model(**inputs).sample

    inputs = _flux_inputs(6)
    model = tiny_flux().eval()
    stock = export.onnx(Sample(model), (), tmp_path / "stock.onnx", kwargs=inputs, tolerance=(2e-3, 1e-3))
    set_attention_backend(model)
    assert {type(m.processor) for m in model.modules() if hasattr(m, "processor")} == {PydiffFluxAttnProcessor}
    ours = export.onnx(Sample(model), (), tmp_path / "pydiff.onnx", kwargs=inputs, tolerance=(2e-3, 1e-3))
    got, expected = (export.run_onnx(r.path, **inputs)[0] for r in (ours, stock))
    assert rel_err(got, expected) <= 1e-5


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        out = self.proj(x)
        # a model whose traced graph is not what it runs eagerly: its export must not verify
        return out + 1 if torch.compiler.is_exporting() else out


@needs_onnx
def test_files_are_kept_safe(tmp_path):
    x = torch.randn(2, 8)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"somebody's file")
    with pytest.raises(FileExistsError, match="pydiff did not make it; pass overwrite=True"):
        export.onnx(torch.nn.Linear(8, 8), (x,), target)
    assert target.read_bytes() == b"somebody's file"
    first = export.onnx(torch.nn.Linear(8, 8), (x,), target, overwrite=True)
    assert first.path == target and target.stat().st_size > 100
    export.onnx(torch.nn.Linear(8, 8), (x,), target)  # pydiff's own file: replaced without asking
    with pytest.raises(export.ExportMismatch, match="differs from the eager model's by up to 1"):
        export.onnx(Linear(), (x,), tmp_path / "bad.onnx")
    with pytest.raises(export.ExportMismatch):
        export.aoti(Linear(), (x,), tmp_path / "bad.pt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # nothing half-written, no scratch folders
    with pytest.raises(ValueError, match="path must end in .onnx"):
        export.onnx(torch.nn.Linear(8, 8), (x,), tmp_path / "m.pt2")
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        export.onnx(torch.nn.Linear(8, 8), (x,), tmp_path / "missing" / "m.onnx")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        export.onnx(lambda x: x, (x,), tmp_path / "f.onnx")
    with pytest.raises(TypeError, match="args must be a tuple"):
        export.onnx(torch.nn.Linear(8, 8), x, tmp_path / "f.onnx")


def test_tensorrt_is_optional(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    with pytest.raises(ImportError, match="needs NVIDIA TensorRT's Python package"):
        export.tensorrt(tmp_path / "m.onnx", tmp_path / "m.plan")


@needs_onnx
@pytest.mark.gpu
def test_gpu_tensorrt_engine(digits, tmp_path):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device")
    model = digits.cuda()
    x, t, y = torch.randn(4, 1, 16, 16, device="cuda"), torch.full((4,), 300.0, device="cuda"), torch.arange(4).cuda()
    onnx_file = export.onnx(model, (x, t), tmp_path / "dit.onnx", kwargs={"y": y})
    engine = export.tensorrt(onnx_file.path, tmp_path / "dit.plan", fp16=True)
    assert engine.path.stat().st_size > 0
    digits.cpu()


@pytest.mark.gpu
def test_gpu_aoti_keeps_the_triton_kernel(tmp_path):
    """On CUDA the package compiles pydiff's Triton attention in (the op is a triton_op there)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from pydiff import attention as attention_module

    assert attention_module.ATTENTION_IS_TRITON_OP
    case = next(c for c in GRID if c.name == "f16-flux-like-even")
    q, k, v, kw = build(case, seed=6)
    q, k, v = (t.cuda() for t in (q, k, v))
    kw = {name: value.cuda() if isinstance(value, torch.Tensor) else
          tuple(t.cuda() for t in value) if isinstance(value, tuple) else value for name, value in kw.items()}
    result = export.aoti(Attend(kw), (q, k, v), tmp_path / "attention.pt2")
    assert result.max_abs_error <= 1e-2


@needs_onnx
def test_cli(tmp_path, capsys):
    from pydiff.cli import main

    out = tmp_path / "digits.onnx"
    assert main(["export", "--steps", "2", "--batch", "4", "--sampler", "lcm", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"onnx: {out}" in printed and "4 digits sampled through" in printed
    import onnx

    graph = onnx.load(str(out)).graph  # what TensorRT would take: standard ops, no float64 weights
    assert not [n.op_type for n in graph.node if n.domain not in ("", "ai.onnx")]
    assert not [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.DOUBLE]
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("mine")
    assert main(["export", "model", "--out", str(foreign)]) == 2
    assert "pydiff did not make it" in capsys.readouterr().err and foreign.read_text() == "mine"
    assert main(["export", "--steps", "0"]) == 2
    teacher = load("digits")  # a guidance-embedded model (a guidance-distilled student's architecture)
    embedded = DiT(dataclasses.replace(teacher.config, guidance_embed=True), teacher.scheduler_config)
    embedded.load_state_dict(teacher.state_dict(), strict=False)
    save(embedded, tmp_path / "embedded.safetensors")
    assert main(["export", "model", "--weights", str(tmp_path / "embedded.safetensors"), "--dynamic-batch",
                 "--batch", "3", "--out", str(tmp_path / "embedded.onnx")]) == 0
    import onnxruntime

    names = [i.name for i in onnxruntime.InferenceSession(str(tmp_path / "embedded.onnx")).get_inputs()]
    assert names == ["x", "t", "y", "guidance"]
    assert main(["export", "--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "w.onnx")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "w.onnx").exists()
    assert not os.path.exists("digits-sampler.onnx")
