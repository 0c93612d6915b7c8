"""pydiff's diffusers attention processors give the stock processors' outputs on tiny UNet, SD3 and Flux models.

Each model is built from a small config in code, run with its stock processors, then switched with
``set_attention_backend`` and run again on the torch backend and on the Triton kernel (interpreted on CPU).
"""

from __future__ import annotations

import copy
import inspect
import functools
import importlib
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import pydiff
from pydiff.attention import block_mask_tiles
from pydiff.ops import native
from pydiff.reference.attention import _block_keep, rms_norm_reference, rope_reference

diffusers = pytest.importorskip("diffusers")

from pydiff.integrations.diffusers import attention_processors  # noqa: E402
from pydiff.integrations.diffusers.attention_processors import (  # noqa: E402
    PydiffAttnProcessor,
    PydiffAuraFlowAttnProcessor,
    PydiffBriaFibo2AttnProcessor,
    PydiffCogVideoXAttnProcessor,
    PydiffCogView4AttnProcessor,
    PydiffCosmos25AttnProcessor,
    PydiffCosmosAttnProcessor,
    PydiffEasyAnimateAttnProcessor,
    PydiffErnieImageAttnProcessor,
    PydiffFlux2AttnProcessor,
    PydiffFlux2KVAttnProcessor,
    PydiffFlux2KVParallelSelfAttnProcessor,
    PydiffFlux2ParallelSelfAttnProcessor,
    PydiffFlux3AttnProcessor,
    PydiffFluxAttnProcessor,
    PydiffFluxIPAdapterAttnProcessor,
    PydiffGlmImageAttnProcessor,
    PydiffHeliosAttnProcessor,
    PydiffHiDreamAttnProcessor,
    PydiffHunyuanDiTAttnProcessor,
    PydiffHunyuanVideo15AttnProcessor,
    PydiffHunyuanVideoAttnProcessor,
    PydiffIdeogram4AttnProcessor,
    PydiffIPAdapterAttnProcessor,
    PydiffJointAttnProcessor,
    PydiffJoyImageAttnProcessor,
    PydiffJoyImageEditPlusAttnProcessor,
    PydiffKandinsky5AttnProcessor,
    PydiffKandinsky6AttnProcessor,
    PydiffKandinsky6SRAttnProcessor,
    PydiffKrea2AttnProcessor,
    PydiffLTX2AttnProcessor,
    PydiffLTXVideoAttnProcessor,
    PydiffLumina2AttnProcessor,
    PydiffMochiAttnProcessor,
    PydiffMotifVideoAttnProcessor,
    PydiffMotifVideoCrossAttnProcessor,
    PydiffOmniGenAttnProcessor,
    PydiffNucleusMoEAttnProcessor,
    PydiffPAGCFGIdentitySelfAttnProcessor,
    PydiffPAGIdentitySelfAttnProcessor,
    PydiffPRXAttnProcessor,
    PydiffWanAttnProcessor,
    PydiffQwenImage21AttnProcessor,
    PydiffQwenImageAttnProcessor,
    PydiffSanaAttnProcessor,
    PydiffSanaWMCrossAttnProcessor,
    PydiffSD3IPAdapterAttnProcessor,
    PydiffZImageAttnProcessor,
    set_attention_backend,
)

CPU = torch.device("cpu")
needs_interpreter = pytest.mark.skipif(native.triton_why_not(CPU) is not None,
                                       reason=f"Triton on CPU: {native.triton_why_not(CPU)}")
BACKENDS = ["torch", pytest.param("triton", marks=needs_interpreter)]


def _needs(stock_name: str, model: str, version: str):
    """Skips a test where this diffusers has no ``attention_processors.<stock_name>`` (it predates ``model``)."""
    return pytest.mark.skipif(getattr(attention_processors, stock_name) is None,
                              reason=f"diffusers {diffusers.__version__} predates {model} ({version})")


def test_reference_prologue_matches_diffusers_conventions():
    """The kernel is checked against pydiff's references; these follow diffusers' RoPE and RMSNorm conventions."""
    from diffusers.models import embeddings as diffusers_embeddings
    from diffusers.models import normalization as norm_mod

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 7, 8, generator=gen)
    cos, sin = torch.rand(7, 8, generator=gen), torch.rand(7, 8, generator=gen)
    for interleaved, unbind in ((True, -1), (False, -2)):
        ours = rope_reference(x, cos, sin, interleaved)
        theirs = diffusers_embeddings.apply_rotary_emb(x, (cos, sin), use_real=True, use_real_unbind_dim=unbind)
        torch.testing.assert_close(ours, theirs)
    norm = norm_mod.RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(8, generator=gen) + 0.5)
    torch.testing.assert_close(rms_norm_reference(x, norm.weight.detach(), 1e-6), norm(x))


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised output layers would hide attention differences)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def _same(x):
    """Inputs as they are (the default ``move`` of the KV-cache flows, which the GPU test moves)."""
    return x


def _processor_types(model):
    return {type(m.processor) for m in model.modules() if getattr(m, "processor", None) is not None}


def _compare(model, run, backend, expect_types, rtol=2e-5):
    with torch.no_grad():
        stock = run(model)
        ours_model = copy.deepcopy(model)
        switched = set_attention_backend(ours_model)
        assert switched > 0 and expect_types <= _processor_types(ours_model)
        with pydiff.use_backend(backend):
            ours = run(ours_model)
    stock = stock if isinstance(stock, tuple) else (stock,)
    ours = ours if isinstance(ours, tuple) else (ours,)
    for a, b in zip(ours, stock):
        err = ((a.double() - b.double()).norm() / b.double().norm()).item()
        assert err <= rtol, f"relative difference to the stock processors {err:.3g} > {rtol}"


def tiny_unet():
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, attention_head_dim=2, norm_num_groups=8)
    return _perturb(model, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unet2d_condition(backend):
    model = tiny_unet()
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    context = torch.randn(2, 7, 24, generator=gen)
    t = torch.tensor([10, 500])
    _compare(model, lambda m: m(sample, t, encoder_hidden_states=context).sample, backend, {PydiffAttnProcessor})


@pytest.mark.parametrize("backend", BACKENDS)
def test_unet2d_simple_cross_attention(backend, monkeypatch):
    """A tiny UNet of DeepFloyd IF's simple cross-attention blocks (``AttnAddedKVProcessor2_0``: the image's
    queries over [the text's added keys; its own keys]): outputs the stock processors', each such attention a
    joint call with a stream of keys only."""
    from diffusers import UNet2DConditionModel

    model = _perturb(UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "SimpleCrossAttnUpBlock2D"), mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        cross_attention_dim=24, attention_head_dim=16, norm_num_groups=8, encoder_hid_dim=24,
        encoder_hid_dim_type="text_proj", resnet_time_scale_shift="scale_shift"), 166)
    gen = torch.Generator().manual_seed(167)
    sample, context = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 7, 24, generator=gen)
    calls = _spy(monkeypatch, lambda args, kwargs: "joint" in kwargs)
    _compare(model, lambda m: m(sample, torch.tensor([10, 500]), encoder_hidden_states=context).sample, backend,
             {attention_processors.PydiffAttnAddedKVProcessor})
    assert calls and all(calls)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lumina_next_transformer(backend, monkeypatch):
    """The tiny Lumina-Next (four query heads over two key heads of 16, two layers; 6 x 8 patches, 7 text tokens
    with padding): self-attention with its complex RoPE on queries and keys and cross-attention with it on the
    queries alone, without and with proportional attention's scale; outputs the stock processors'."""
    from diffusers import LuminaNextDiT2DModel
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    model = _perturb(LuminaNextDiT2DModel(
        sample_size=16, patch_size=2, in_channels=4, hidden_size=64, num_layers=2, num_attention_heads=4,
        num_kv_heads=2, multiple_of=16, cross_attention_dim=24, learn_sigma=False), 168)
    gen = torch.Generator().manual_seed(169)
    latents, text = torch.randn(2, 4, 12, 16, generator=gen), torch.randn(2, 7, 24, generator=gen)
    text_mask = torch.ones(2, 7, dtype=torch.long)
    text_mask[1, 4:] = 0
    rope = get_2d_rotary_pos_embed_lumina(16, 32, 32)
    calls = _spy(monkeypatch, lambda args, kwargs: (kwargs.get("rope") is not None, kwargs.get("key_rope") is not None))
    for kwargs in ({}, {"base_sequence_length": 16}):  # (the pipeline's proportional attention: a scale of its own)
        _compare(model, lambda m: m(latents, torch.tensor([0.3, 0.7]), text, text_mask, rope, kwargs).sample,
                 backend, {attention_processors.PydiffLuminaAttnProcessor})
    assert calls == [(True, False), (True, True)] * 4  # (cross-attention's keys unturned)


def tiny_vae(channels=32, sample_size=16, seed=8):
    """A one-block VAE; its mid-block attention has one head over all ``channels``."""
    from diffusers import AutoencoderKL

    return _perturb(AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), block_out_channels=(channels,),
                                  latent_channels=4, norm_num_groups=8, sample_size=sample_size), seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_attention(backend):
    """The VAE's mid-block attention: 4-D input, group norm, residual connection, output rescale."""
    model = tiny_vae()
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    _compare(model, lambda m: m(image, sample_posterior=False).sample, backend, {PydiffAttnProcessor})


def _spy(monkeypatch, record):
    """Records ``record(args, kwargs)`` for every ``pydiff.attention`` call the processors make; returns the list."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(record(args, kwargs))
        return pydiff.attention(*args, **kwargs)

    monkeypatch.setattr(attention_processors, "attention", spy)
    return calls


def _masked_calls(monkeypatch):
    """Records, for every ``pydiff.attention`` call the processors make, the mask it carried: None, "keys" (a key
    mask: one row every query shares) or "rows" (one per query)."""
    def record(args, kwargs):
        mask = kwargs.get("attn_mask")
        return None if mask is None else "rows" if mask.dim() > 1 and mask.shape[-2] > 1 else "keys"

    return _spy(monkeypatch, record)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unet2d_condition_with_encoder_mask(backend, monkeypatch):
    """The UNet's text-padding mask ((1 - mask) * -10000, (B, 1, N_k)) goes into the kernel as its key mask."""
    model = tiny_unet()
    gen = torch.Generator().manual_seed(2)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    context = torch.randn(2, 7, 24, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]])
    calls = _masked_calls(monkeypatch)
    _compare(model, lambda m: m(sample, torch.tensor([3, 900]), encoder_hidden_states=context,
                                encoder_attention_mask=mask).sample, backend, {PydiffAttnProcessor})
    assert calls.count("keys") == calls.count(None) == _cross_attentions(model)  # self-attention has no mask


def tiny_unet_with_custom_diffusion(train_q_out: bool):
    """The tiny UNet with Custom Diffusion's processors set as its training script sets them: the cross-attention's
    with key and value projections of their own (and query and output ones with ``train_q_out``); the
    self-attention's with none, or with ``train_q_out`` all four (over the image's own tokens)."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    model = tiny_unet()
    processors = {}
    for name, module in model.attn_processors.items():
        attn = model.get_submodule(name[:-len(".processor")])
        cross = name.endswith("attn2.processor")
        processors[name] = CustomDiffusionAttnProcessor2_0(
            train_kv=cross or train_q_out, train_q_out=train_q_out, hidden_size=attn.to_q.out_features,
            cross_attention_dim=attn.to_k.in_features if cross else None)
    model.set_attn_processor(processors)
    return _perturb(model, 180)


@pytest.mark.parametrize("train_q_out", [False, True], ids=["kv", "kv-q-out"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_unet_with_custom_diffusion(backend, train_q_out, monkeypatch):
    """Custom Diffusion's processors on the tiny UNet: ours, built from each stock one, keep its weights (the state
    dict unchanged) and give its outputs; a masked call (one sample's self-attention) and a forward with grad on its
    weights (training) take the stock path, whose gradients reach the custom projections."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    model = tiny_unet_with_custom_diffusion(train_q_out)
    assert _processor_types(model) == {CustomDiffusionAttnProcessor2_0}
    gen = torch.Generator().manual_seed(181)
    sample, context = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 7, 24, generator=gen)
    t = torch.tensor([10, 500])
    calls = _spy(monkeypatch, lambda args, kwargs: args[0].shape)
    _compare(model, lambda m: m(sample, t, encoder_hidden_states=context).sample, backend,
             {attention_processors.PydiffCustomDiffusionAttnProcessor})
    assert len(calls) == len(model.attn_processors)  # (every attention module of ours)
    ours = copy.deepcopy(model)
    set_attention_backend(ours)
    assert ours.state_dict().keys() == model.state_dict().keys()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    calls.clear()
    attn, ours_attn = (m.down_blocks[0].attentions[0].transformer_blocks[0].attn1 for m in (model, ours))
    hidden, mask = torch.randn(1, 64, 32, generator=gen), torch.rand(1, 1, 64, generator=gen) > 0.3
    with torch.no_grad(), pydiff.use_backend(backend):  # (one sample: the stock processor's mask is per head)
        torch.testing.assert_close(ours_attn(hidden, attention_mask=mask), attn(hidden, attention_mask=mask))
    with pydiff.use_backend(backend):
        ours(sample, t, encoder_hidden_states=context).sample.square().mean().backward()
    weights = [p for n, p in ours.named_parameters() if "custom_diffusion" in n]
    assert not calls and weights and all(p.grad is not None for p in weights)


def tiny_unet_with_ip_adapters():
    """The tiny UNet with two IP-Adapters as ``load_ip_adapter`` sets them up (random weights): an image
    projection each (4 and 2 tokens per image) and ``IPAdapterAttnProcessor2_0`` on every cross-attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

    unet = tiny_unet()
    width = unet.config.cross_attention_dim
    processors = {}
    for name, module in unet.named_modules():
        if getattr(module, "processor", None) is not None:
            processors[f"{name}.processor"] = IPAdapterAttnProcessor2_0(
                module.inner_dim, width, num_tokens=(4, 2), scale=[0.7, 0.4]) if module.is_cross_attention \
                else AttnProcessor2_0()
    unet.set_attn_processor(processors)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([
        ImageProjection(cross_attention_dim=width, image_embed_dim=12, num_image_text_embeds=tokens)
        for tokens in (4, 2)])
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")
    return _perturb(unet, 80)


def _ip_adapter_inputs(seed):
    """7 text tokens; one image for the first IP-Adapter, two for the second (their tokens one key sequence)."""
    gen = torch.Generator().manual_seed(seed)
    return dict(sample=torch.randn(2, 4, 8, 8, generator=gen), timestep=torch.tensor([10, 500]),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen),
                added_cond_kwargs={"image_embeds": [torch.randn(2, 1, 12, generator=gen),
                                                    torch.randn(2, 2, 12, generator=gen)]})


@pytest.mark.parametrize("backend", BACKENDS)
def test_unet_with_ip_adapters(backend, monkeypatch):
    """IP-Adapter (two, the second with two images): the text's and the first image prompt's attentions summed in
    one pass over q (the negative stream at -scale), the second one call more; outputs the stock processors'. Ours
    keep the stock processors' weights (the same state dict) and stay ``IPAdapterAttnProcessor2_0``s, so a new
    scale set on them (as ``set_ip_adapter_scale`` does) holds: 0 skips a prompt; per-image scales and IP-Adapter
    masks take the stock path."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    model, inputs = tiny_unet_with_ip_adapters(), _ip_adapter_inputs(81)
    calls = _spy(monkeypatch, lambda args, kwargs: kwargs.get("negative_scale"))
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffIPAdapterAttnProcessor, PydiffAttnProcessor})
    cross = _cross_attentions(model)
    # (every attention module one call, each cross-attention one more for the second IP-Adapter)
    modules = sum(getattr(m, "processor", None) is not None for m in model.modules())
    assert calls.count(-0.7) == cross and len(calls) == modules + cross
    ours = copy.deepcopy(model)
    set_attention_backend(ours)
    assert ours.state_dict().keys() == model.state_dict().keys()
    for scales in ([0.0, 0.4], [0.0, 0.0]):
        for m in (model, ours):
            for processor in m.attn_processors.values():
                if isinstance(processor, IPAdapterAttnProcessor2_0):
                    processor.scale = scales
        with torch.no_grad(), pydiff.use_backend(backend):
            torch.testing.assert_close(ours(**inputs).sample, model(**inputs).sample, rtol=2e-5, atol=2e-5)
    attn = ours.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    stock_calls = []
    monkeypatch.setattr(attn.processor, "stock", lambda *args: stock_calls.append(args[-1]))
    hidden, text = torch.randn(2, 16, attn.inner_dim), inputs["encoder_hidden_states"]
    images = [torch.randn(2, 1, 4, 24), torch.randn(2, 2, 2, 24)]
    masks = [torch.ones(1, 1, 4, 4), None]  # (IP-Adapter masks, per-image scales: the stock path)
    attn.processor(attn, hidden, (text, images), None, None, 1.0, masks)
    attn.processor.scale = [[0.5], 0.3]
    attn.processor(attn, hidden, (text, images))
    assert stock_calls == [masks, None]


@pytest.mark.parametrize("cfg", [False, True], ids=["pag", "pag-cfg"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_unet_with_pag_processors(backend, cfg, monkeypatch):
    """Perturbed-attention guidance on the tiny UNet's self-attention (as a PAG pipeline sets it during a call, with
    CFG: [unconditional, conditional, perturbed] samples; without: [original, perturbed]): the unperturbed samples
    in the kernel, the perturbed ones' identity attention; outputs the stock processors'. A PAG pipeline's
    ``_pag_attn_processors`` become ours."""
    from diffusers.models.attention_processor import (
        AttnProcessor2_0,
        PAGCFGIdentitySelfAttnProcessor2_0,
        PAGIdentitySelfAttnProcessor2_0,
    )

    stock_pag = PAGCFGIdentitySelfAttnProcessor2_0 if cfg else PAGIdentitySelfAttnProcessor2_0
    ours_pag = PydiffPAGCFGIdentitySelfAttnProcessor if cfg else PydiffPAGIdentitySelfAttnProcessor
    model = tiny_unet()
    model.set_attn_processor({name: stock_pag() if name.endswith("attn1.processor") else AttnProcessor2_0()
                              for name in model.attn_processors})
    batch = 3 if cfg else 2
    gen = torch.Generator().manual_seed(119)
    inputs = (torch.randn(batch, 4, 8, 8, generator=gen), torch.tensor([10] * batch),
              torch.randn(batch, 7, 24, generator=gen))
    calls = _spy(monkeypatch, lambda args, kwargs: args[0].shape[0])
    _compare(model, lambda m: m(*inputs).sample, backend, {ours_pag, PydiffAttnProcessor})
    # (the self-attentions over the unperturbed samples, the cross-attentions over all)
    self_attentions = sum(name.endswith("attn1.processor") for name in model.attn_processors)
    assert calls.count(batch - 1) == self_attentions and calls.count(batch) == _cross_attentions(model)

    class Pipe:  # (what set_attention_backend reads of a PAG pipeline)
        components = {"unet": copy.deepcopy(model)}
        _pag_attn_processors = (PAGCFGIdentitySelfAttnProcessor2_0(), PAGIdentitySelfAttnProcessor2_0())

    pipe = Pipe()
    set_attention_backend(pipe)
    assert [type(p) for p in pipe._pag_attn_processors] == [PydiffPAGCFGIdentitySelfAttnProcessor,
                                                             PydiffPAGIdentitySelfAttnProcessor]


def _cross_attentions(model) -> int:
    return sum(getattr(m, "is_cross_attention", False) for m in model.modules())


needs_flux2 = _needs("Flux2AttnProcessor", "FLUX.2", "0.36")


def tiny_flux2():
    from diffusers import Flux2Transformer2DModel

    # (guidance_embeds: diffusers 0.37+, whose default embeds guidance; 0.36 has none)
    return _perturb(Flux2Transformer2DModel(**_accepted(Flux2Transformer2DModel.__init__, dict(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, timestep_guidance_channels=16, mlp_ratio=2.0, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False))), 18)


def _four_axis_ids(height: int, width: int, text: int):
    """FLUX.2's and FLUX.3's positions (time, height, width, text index): the image's (H*W, 4), the text's (T, 4)."""
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(float(height)), torch.arange(float(width)),
                                         torch.zeros(1), indexing="ij"), -1).reshape(-1, 4)
    txt_ids = torch.zeros(text, 4)
    txt_ids[:, 3] = torch.arange(float(text))
    return dict(img_ids=img_ids, txt_ids=txt_ids)


def _flux2_inputs(seed):
    """FLUX.2 inputs: 4 x 5 image tokens, 6 text tokens, 4-axis positions."""
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(hidden_states=torch.randn(1, 20, 8, generator=gen),
                  encoder_hidden_states=torch.randn(1, 6, 32, generator=gen), timestep=torch.tensor([0.7]),
                  **_four_axis_ids(4, 5, 6))
    from diffusers import Flux2Transformer2DModel

    if not _accepted(Flux2Transformer2DModel.__init__, {"guidance_embeds": False}):  # (0.36: guidance embedded)
        inputs["guidance"] = torch.tensor([3.5])
    return inputs


def test_processors_name_the_diffusers_they_need(monkeypatch):
    """Where this diffusers lacks a model's stock processor, ours for it says which diffusers brought it."""
    for stock, ours, version in (("Flux2AttnProcessor", PydiffFlux2AttnProcessor, "0.36"),
                                 ("Flux2ParallelSelfAttnProcessor", PydiffFlux2ParallelSelfAttnProcessor, "0.36"),
                                 ("ZSingleStreamAttnProcessor", PydiffZImageAttnProcessor, "0.36"),
                                 ("HunyuanVideo15AttnProcessor2_0", PydiffHunyuanVideo15AttnProcessor, "0.36"),
                                 ("LTX2AudioVideoAttnProcessor", PydiffLTX2AttnProcessor, "0.37"),
                                 ("LTX2PerturbedAttnProcessor", attention_processors.PydiffLTX2PerturbedAttnProcessor,
                                  "0.38"),
                                 ("CosmosAttnProcessor2_5", PydiffCosmos25AttnProcessor, "0.37"),
                                 ("Kandinsky5AttnProcessor", PydiffKandinsky5AttnProcessor, "0.36"),
                                 ("Krea2AttnProcessor", PydiffKrea2AttnProcessor, "0.39"),
                                 ("Ideogram4AttnProcessor", PydiffIdeogram4AttnProcessor, "0.39"),
                                 ("Flux3AttnProcessor", PydiffFlux3AttnProcessor, "0.42"),
                                 ("Flux2KVAttnProcessor", PydiffFlux2KVAttnProcessor, "0.39"),
                                 ("Flux2KVParallelSelfAttnProcessor", PydiffFlux2KVParallelSelfAttnProcessor, "0.39"),
                                 ("GlmImageAttnProcessor", PydiffGlmImageAttnProcessor, "0.37"),
                                 ("PRXAttnProcessor2_0", PydiffPRXAttnProcessor, "0.36"),
                                 ("NucleusMoEAttnProcessor2_0", PydiffNucleusMoEAttnProcessor, "0.39"),
                                 ("ErnieImageAttnProcessor", PydiffErnieImageAttnProcessor, "0.39"),
                                 ("JoyImageAttnProcessor", PydiffJoyImageAttnProcessor, "0.39"),
                                 ("JoyImageEditPlusAttnProcessor", PydiffJoyImageEditPlusAttnProcessor, "0.42"),
                                 ("QwenImage21AttnProcessor", PydiffQwenImage21AttnProcessor, "0.42"),
                                 ("QwenImage21FlexAttnProcessor",
                                  attention_processors.PydiffQwenImage21FlexAttnProcessor, "0.42"),
                                 ("HeliosAttnProcessor", PydiffHeliosAttnProcessor, "0.39"),
                                 ("MotifVideoAttnProcessor2_0", PydiffMotifVideoAttnProcessor, "0.39"),
                                 ("SanaWMCrossAttnProcessor", PydiffSanaWMCrossAttnProcessor, "0.42"),
                                 ("Kandinsky6AttnProcessor", PydiffKandinsky6AttnProcessor, "0.42"),
                                 ("Kandinsky6SRAttnProcessor", PydiffKandinsky6SRAttnProcessor, "0.42"),
                                 ("BriaFibo2AttnProcessor", PydiffBriaFibo2AttnProcessor, "0.42"),
                                 ("WanAnimateFaceBlockAttnProcessor",
                                  attention_processors.PydiffWanAnimateFaceBlockAttnProcessor, "0.36")):
        monkeypatch.setattr(attention_processors, stock, None)
        with pytest.raises(ImportError, match=f"need diffusers {version} or newer"):
            ours()


@needs_flux2
@pytest.mark.parametrize("backend", BACKENDS)
def test_flux2_transformer(backend, monkeypatch):
    """FLUX.2: the double-stream blocks' joint call and the single-stream blocks' attention (beside their MLP, from
    one projection) with QK RMSNorm and 4-axis RoPE in the kernel; every block's call fused."""
    model = tiny_flux2()
    calls = _masked_calls(monkeypatch)
    _compare(model, lambda m: m(**_flux2_inputs(19)).sample, backend,
             {PydiffFlux2AttnProcessor, PydiffFlux2ParallelSelfAttnProcessor})
    assert len(calls) == len(model.transformer_blocks) + len(model.single_transformer_blocks)


@needs_flux2
def test_flux2_key_masks_and_fallbacks(monkeypatch):
    """FLUX.2's processors with a key mask and a per-query mask (both into the kernel), and fused projections in the
    double-stream block; outputs equal the stock processors'."""
    model = tiny_flux2()
    gen = torch.Generator().manual_seed(20)
    double, single = model.transformer_blocks[0].attn, model.single_transformer_blocks[0].attn
    hidden, context = torch.randn(1, 20, 32, generator=gen), torch.randn(1, 6, 32, generator=gen)
    ids = torch.cat([torch.zeros(6, 4), torch.randn(20, 4, generator=gen).round()])
    rope = model.pos_embed(ids)
    per_query = torch.rand(1, 1, 26, 26, generator=gen) > 0.3
    per_query[..., :2] = True  # (every query sees a key)
    key_mask = torch.randn(1, 2, 1, 26, generator=gen)
    calls = _masked_calls(monkeypatch)
    masks = [None, key_mask, per_query]
    _block_matches_stock(PydiffFlux2AttnProcessor(), double, (hidden, context), rope, masks)
    _block_matches_stock(PydiffFlux2ParallelSelfAttnProcessor(), single, (torch.cat([context, hidden], 1),), rope,
                         masks)
    assert calls == [None, "keys", "rows"] * 2
    fused = copy.deepcopy(double)
    fused.fuse_projections()
    assert fused.fused_projections
    _block_matches_stock(PydiffFlux2AttnProcessor(), fused, (hidden, context), rope, [None], stock=double)


needs_flux2_kv = _needs("Flux2KVAttnProcessor", "FLUX.2 Klein KV", "0.39")


def tiny_flux2_kv():
    """The tiny FLUX.2 with Klein KV's processors, as its pipeline sets them."""
    from diffusers.models.transformers.transformer_flux2 import (
        Flux2KVAttnProcessor,
        Flux2KVParallelSelfAttnProcessor,
    )

    model = tiny_flux2()
    for block in model.transformer_blocks:
        block.attn.set_processor(Flux2KVAttnProcessor())
    for block in model.single_transformer_blocks:
        block.attn.set_processor(Flux2KVParallelSelfAttnProcessor())
    return model


def _flux2_kv_run(move=_same):
    """``run`` for FLUX.2 Klein KV: the first step with a reference image of 12 tokens (extract), a cached step and
    a step without a cache; the inputs through ``move``."""
    gen = torch.Generator().manual_seed(95)
    reference = torch.randn(1, 12, 8, generator=gen)
    reference_ids = _four_axis_ids(3, 4, 0)["img_ids"]
    reference_ids[:, 0] = 10.0  # (the reference image's time coordinate, as the pipeline sets it)
    inputs = _flux2_inputs(96)
    first = move(dict(inputs, hidden_states=torch.cat([reference, inputs["hidden_states"]], 1),
                      img_ids=torch.cat([reference_ids, inputs["img_ids"]])))
    inputs = move(inputs)

    def run(m):
        extracted, cache = m(**first, kv_cache_mode="extract", num_ref_tokens=12, return_dict=False)
        cached = m(**inputs, kv_cache=cache, kv_cache_mode="cached", return_dict=False)[0]
        return extracted, cached, m(**inputs).sample

    return run


@needs_flux2_kv
@pytest.mark.parametrize("backend", BACKENDS)
def test_flux2_klein_kv_cache(backend, monkeypatch):
    """FLUX.2 Klein KV (its pipeline sets the KV processors): the first step (extract: the reference image's 12
    tokens attend to themselves only, their keys and values cached) stays stock; the later steps (cached) read the
    cached keys and values beside the tokens' as a second stream of keys only, in every block; a step without a
    cache is FLUX.2's call. Outputs equal the stock processors'."""
    model, run = tiny_flux2_kv(), _flux2_kv_run()

    def record(args, kwargs):
        joint = kwargs.get("joint")
        return joint[1].shape[1] if joint is not None and joint[0].shape[1] == 0 else "tokens only"

    calls = _spy(monkeypatch, record)
    _compare(model, run, backend, {PydiffFlux2KVAttnProcessor, PydiffFlux2KVParallelSelfAttnProcessor})
    blocks = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    assert calls == [12] * blocks + ["tokens only"] * blocks  # (the extract step: the stock processors)


needs_prx = _needs("PRXAttnProcessor2_0", "PRX", "0.36")
needs_nucleus = _needs("NucleusMoEAttnProcessor2_0", "Nucleus-Image", "0.39")
_TEXT_PADDING = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])  # (the second prompt's last 3 of 7 tokens padding)


def _keys_only_calls(monkeypatch):
    """Records, for every ``pydiff.attention`` call the processors make, the length of its second stream when that
    stream holds keys only (no queries), else "tokens", and whether it carried a mask."""
    def record(args, kwargs):
        joint = kwargs.get("joint")
        keys = joint[1].shape[1] if joint is not None and joint[0].shape[1] == 0 else "tokens"
        return keys, kwargs.get("attn_mask") is not None

    return _spy(monkeypatch, record)


def tiny_prx():
    from diffusers.models.transformers.transformer_prx import PRXTransformer2DModel

    return _perturb(PRXTransformer2DModel(in_channels=4, patch_size=2, context_in_dim=24, hidden_size=32,
                                          mlp_ratio=2.0, num_heads=2, depth=2, axes_dim=[8, 8]), 97)


def _prx_inputs(seed, text_mask=True):
    """PRX inputs: 8 x 6 latents (4 x 3 patches), 7 text tokens, with ``text_mask`` the second prompt's padding."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 8, 6, generator=gen), timestep=torch.tensor([0.3, 0.8]),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen),
                attention_mask=_TEXT_PADDING if text_mask else None)


@needs_prx
@pytest.mark.parametrize("text_mask", [False, True], ids=["no-mask", "text-mask"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_prx_transformer(backend, text_mask, monkeypatch):
    """PRX: the image queries over [text keys; image keys], the text a second stream of keys only (its key norm in
    the prologue, its RoPE rows turning by nothing), the text padding the key mask; outputs the stock processors'."""
    model, inputs = tiny_prx(), _prx_inputs(98, text_mask)
    calls = _keys_only_calls(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffPRXAttnProcessor})
    assert calls == [(7, text_mask)] * 2


def tiny_nucleus_image():
    from diffusers.models.transformers.transformer_nucleusmoe_image import NucleusMoEImageTransformer2DModel

    return _perturb(NucleusMoEImageTransformer2DModel(
        patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=4,
        num_key_value_heads=2, joint_attention_dim=24, axes_dims_rope=(4, 6, 6), moe_enabled=False), 99)


def _nucleus_inputs(seed):
    """Nucleus-Image inputs: 12 packed image tokens (3 x 4), 7 text tokens with the second prompt's padding."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 12, 16, generator=gen), img_shapes=[(1, 3, 4)] * 2,
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen),
                encoder_hidden_states_mask=_TEXT_PADDING.bool(), timestep=torch.tensor([0.3, 0.8]))


@needs_nucleus
@pytest.mark.parametrize("backend", BACKENDS)
def test_nucleus_image_transformer(backend, monkeypatch):
    """Nucleus-Image: the image queries over [image keys; text keys] (grouped-query heads as they are), the text a
    second stream of keys only with its own key norm and RoPE table in the prologue; with diffusers' text K/V cache
    hook (the text's keys and values computed once), the cached ones read as they are. Outputs the stock
    processors'."""
    from diffusers.hooks.text_kv_cache import TextKVCacheConfig, apply_text_kv_cache

    model, inputs = tiny_nucleus_image(), _nucleus_inputs(100)
    calls = _keys_only_calls(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffNucleusMoEAttnProcessor})
    assert calls == [(7, True)] * 2
    stock, ours = model, copy.deepcopy(model)
    set_attention_backend(ours)
    for m in (stock, ours):
        apply_text_kv_cache(m, TextKVCacheConfig())
    calls.clear()
    with torch.no_grad(), pydiff.use_backend(backend):
        for _ in range(2):  # (the first call fills the cache, the second reads it)
            torch.testing.assert_close(ours(**inputs).sample, stock(**inputs).sample, rtol=2e-5, atol=2e-5)
    assert calls == [(7, True)] * 4


needs_ernie_joy = _needs("ErnieImageAttnProcessor", "ERNIE-Image and JoyImage", "0.39")


def tiny_ernie_image():
    from diffusers.models.transformers.transformer_ernie_image import ErnieImageTransformer2DModel

    return _perturb(ErnieImageTransformer2DModel(
        hidden_size=32, num_attention_heads=2, num_layers=2, ffn_hidden_size=64, in_channels=4, out_channels=4,
        patch_size=2, text_in_dim=24, rope_axes_dim=(4, 6, 6)), 101)


def _ernie_inputs(seed):
    """ERNIE-Image inputs: 8 x 6 latents (4 x 3 patches), 7 text tokens of which the second prompt has 4."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 8, 6, generator=gen), timestep=torch.tensor([0.3, 0.8]),
                text_bth=torch.randn(2, 7, 24, generator=gen), text_lens=torch.tensor([7, 4]))


@needs_ernie_joy
@pytest.mark.parametrize("backend", BACKENDS)
def test_ernie_image_transformer(backend, monkeypatch):
    """ERNIE-Image: self-attention over [image; text] with the QK norms and its RoPE (an angle per channel, turned
    with the partner in the other half) in the prologue, the text padding the key mask; outputs the stock
    processors'."""
    calls = _masked_calls(monkeypatch)
    inputs = _ernie_inputs(102)
    _compare(tiny_ernie_image(), lambda m: m(**inputs).sample, backend, {PydiffErnieImageAttnProcessor})
    assert calls == ["keys"] * 2


def tiny_joyimage(plus=False):
    from diffusers.models import transformers

    model = importlib.import_module(f"{transformers.__name__}.transformer_joyimage_edit_plus")\
        .JoyImageEditPlusTransformer3DModel if plus else \
        importlib.import_module(f"{transformers.__name__}.transformer_joyimage").JoyImageEditTransformer3DModel
    return _perturb(model(patch_size=[1, 2, 2], in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=24,
                          num_layers=2, rope_dim_list=[4, 6, 6]), 103)


def _joyimage_inputs(seed, plus=False):
    """JoyImage-Edit inputs: a 1 x 8 x 6 video latent (12 patches), 7 text tokens. Edit-Plus's: patches packed per
    sample (B, N, C, 1, 2, 2) from a shape list (the second sample's 9 of 12 real: padding), the text padding."""
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(timestep=torch.tensor([0.3, 0.8]), encoder_hidden_states=torch.randn(2, 7, 24, generator=gen))
    if not plus:
        return dict(inputs, hidden_states=torch.randn(2, 4, 1, 8, 6, generator=gen))
    return dict(inputs, hidden_states=torch.randn(2, 12, 4, 1, 2, 2, generator=gen),
                shape_list=[[(1, 3, 4)], [(1, 3, 3)]], encoder_hidden_states_mask=_TEXT_PADDING.float())


@needs_ernie_joy
@pytest.mark.parametrize("plus", [False, pytest.param(True, marks=_needs(
    "JoyImageEditPlusAttnProcessor", "JoyImage-Edit-Plus", "0.42"))], ids=["edit", "edit-plus"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_joyimage_transformer(backend, plus, monkeypatch):
    """JoyImage-Edit: joint [image; text] attention of its two streams, each with its QK norms and RoPE table in the
    prologue. Edit-Plus: the RoPE on the image only (a table per sample) and the joined tokens' mask as key mask.
    Outputs the stock processors'."""
    calls = _masked_calls(monkeypatch)
    inputs = _joyimage_inputs(104, plus)
    _compare(tiny_joyimage(plus), lambda m: m(**inputs).sample, backend,
             {PydiffJoyImageEditPlusAttnProcessor if plus else PydiffJoyImageAttnProcessor})
    assert calls == ["keys" if plus else None] * 2


needs_qwen_image21 = _needs("QwenImage21AttnProcessor", "Qwen-Image 2.1", "0.42")


def tiny_qwen_image21():
    from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21Transformer2DModel

    return _perturb(QwenImage21Transformer2DModel(
        patch_size=1, in_channels=8, out_channels=8, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        context_in_dim=24, axes_dims_rope=(4, 6, 6)), 105)


def _qwen_image21_run(move=_same):
    """``run`` for Qwen-Image 2.1: the first step (extract) and a cached one over 5 text tokens (the second
    prompt's last 2 padding) and a 4 x 4 target image; the inputs through ``move``."""
    from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21KVCache

    gen = torch.Generator().manual_seed(106)
    inputs = move(dict(hidden_states=torch.randn(2, 16, 8, generator=gen),
                       encoder_hidden_states=torch.randn(2, 5, 24, generator=gen), timestep=torch.tensor([0.3, 0.8]),
                       img_shapes=[[(1, 4, 4)]] * 2, img_mask=torch.tensor([[False] * 5 + [True] * 4] * 2),
                       encoder_hidden_states_mask=torch.tensor([[1] * 5, [1] * 3 + [0] * 2])))

    def run(m):
        cache = QwenImage21KVCache(len(m.transformer_blocks))
        first = m(**inputs, kv_cache=cache, kv_cache_mode="extract").sample
        return first, m(**inputs, kv_cache=cache, kv_cache_mode="cached").sample

    return run


@needs_qwen_image21
@pytest.mark.parametrize("backend", BACKENDS)
def test_qwen_image21_kv_cache(backend, monkeypatch):
    """Qwen-Image 2.1: the first step (extract: the block-causal prefill over [text; target image], its prefix's
    keys and values cached) in one block-sparse call per layer, its mask per query and key from the segments and
    the padding; the cached steps read the 5 cached prefix keys beside the target's 16 as a second stream of keys
    only, the padding mask (the second prompt's last 2 text tokens) as key mask. Outputs the stock processors'."""
    run = _qwen_image21_run()
    calls = _keys_only_calls(monkeypatch)
    _compare(tiny_qwen_image21(), run, backend, {PydiffQwenImage21AttnProcessor})
    assert calls == [("tokens", True)] * 2 + [(5, True)] * 2  # (the prefill's calls, then the cached step's)


@needs_qwen_image21
@pytest.mark.parametrize("backend", BACKENDS)
def test_qwen_image21_prefill_segments(backend, monkeypatch):
    """Qwen-Image 2.1's prefill over [text; condition image; text; target image] (400 tokens: 4 blocks of 128, the
    blocks above the causal ones masked whole and never read), the second sample's last text tokens padding: one
    block-sparse call equal to the stock processor's call per segment."""
    from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21Attention

    attn = _perturb(QwenImage21Attention(32, 2, 16), 121)
    gen = torch.Generator().manual_seed(122)
    hidden = torch.randn(2, 400, 32, generator=gen)
    segments = [(0, 40, True), (40, 200, False), (200, 230, True)]
    key_valid = torch.ones(2, 400, dtype=torch.bool)
    key_valid[1, 220:230] = False
    calls = _block_densities(monkeypatch)
    ours = copy.deepcopy(attn)
    assert set_attention_backend(ours) == 1
    with torch.no_grad(), pydiff.use_backend(backend):
        torch.testing.assert_close(ours(hidden, segments=segments, key_valid=key_valid),
                                   attn(hidden, segments=segments, key_valid=key_valid), rtol=2e-5, atol=2e-5)
    assert calls == [14 / 16]  # (the first 128 queries, text and condition image, see no key past 199: 2 blocks)


@needs_qwen_image21
@pytest.mark.parametrize("backend", BACKENDS)
def test_qwen_image21_flex_kv_cache(backend, monkeypatch):
    """Qwen-Image 2.1 with its flex processor: the prefill's BlockMask (block-causal, a mask_mod in its partial
    block) into the kernel, eagerly and without padding the tokens to its blocks; the cached steps as the other
    processor's. Outputs the stock flex processors' (eager flex attention evaluates the mask_mod everywhere, which
    create_block_mask's blocks agree with)."""
    from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21FlexAttnProcessor

    from pydiff.integrations.diffusers.attention_processors import PydiffQwenImage21FlexAttnProcessor

    model = tiny_qwen_image21()
    model.set_attn_processor(QwenImage21FlexAttnProcessor())
    calls = _block_densities(monkeypatch)
    _compare(model, _qwen_image21_run(), backend, {PydiffQwenImage21FlexAttnProcessor})
    assert len(calls) == 4 and calls[:2] == [1.0, 1.0] and calls[2:] == [None, None]  # (one block of 128 tokens)


needs_motif_video = _needs("MotifVideoAttnProcessor2_0", "Motif-Video", "0.39")


def tiny_motif_video(cross=False):
    """The tiny Motif-Video; ``cross``: with its text cross-attention in both kinds of block and an image
    condition (its tokens before the text's)."""
    from diffusers.models.transformers.transformer_motif_video import MotifVideoTransformer3DModel

    extra = dict(enable_text_cross_attention_dual=True, enable_text_cross_attention_single=True,
                 image_embed_dim=12) if cross else {}
    return _perturb(MotifVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, patch_size=1, text_embed_dim=24, rope_axes_dim=(4, 6, 6), **extra), 107)


def _motif_video_inputs(seed, cross=False):
    """Motif-Video inputs: 2 frames of 4 x 3 latents (24 tokens), 7 text tokens with the second prompt's padding;
    with ``cross``, 3 image-condition tokens."""
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(hidden_states=torch.randn(2, 4, 2, 4, 3, generator=gen), timestep=torch.tensor([3, 700]),
                  encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), encoder_attention_mask=_TEXT_PADDING)
    return dict(inputs, image_embeds=torch.randn(2, 3, 12, generator=gen)) if cross else inputs


@needs_motif_video
@pytest.mark.parametrize("cross", [False, True], ids=["joint", "text-cross-attention"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_motif_video_transformer(backend, cross, monkeypatch):
    """Motif-Video: [video; text] as a joint call in the dual-stream block and over the joined tokens in the
    single-stream one, the RoPE on the video tokens only, the text padding as key mask; with its text
    cross-attention (the RoPE on the queries alone, the condition image's tokens left out) in each block too.
    Outputs the stock processors'."""
    def record(args, kwargs):
        return args[1].shape[1], kwargs.get("key_rope") is not None

    calls = _spy(monkeypatch, record)
    inputs = _motif_video_inputs(108, cross)
    _compare(tiny_motif_video(cross), lambda m: m(**inputs).sample, backend,
             {PydiffMotifVideoAttnProcessor} | ({PydiffMotifVideoCrossAttnProcessor} if cross else set()))
    # (the dual block's joint call: its video keys, then the text's; the single block's over [video; text]; the
    # cross-attentions' keys: the 7 text tokens)
    text = 10 if cross else 7
    assert calls == ([(24, False), (7, True), (24 + text, False), (7, True)] if cross else
                     [(24, False), (24 + text, False)])


@_needs("SanaWMCrossAttnProcessor", "SANA-WM", "0.42")
@pytest.mark.parametrize("backend", BACKENDS)
def test_sana_wm_cross_attention(backend):
    """SANA-WM's cross-attention (QK RMSNorms over every head's channels): outputs the stock processor's, without a
    mask, with the text padding (B, N_text) and with its bool (B, 1, 1, N_text) form."""
    from diffusers.models.transformers.transformer_sana_wm import MultiHeadCrossAttention

    attn = _perturb(MultiHeadCrossAttention(32, 2, qk_norm=True), 109)
    gen = torch.Generator().manual_seed(110)
    hidden, text = torch.randn(2, 12, 32, generator=gen), torch.randn(2, 7, 32, generator=gen)
    ours = PydiffSanaWMCrossAttnProcessor()
    for mask in (None, _TEXT_PADDING, _TEXT_PADDING.bool()[:, None, None, :]):
        with torch.no_grad(), pydiff.use_backend(backend):
            got = ours(attn, hidden, text, mask)
        torch.testing.assert_close(got, attn.processor(attn, hidden, text, mask), rtol=2e-5, atol=2e-5)
    switched = copy.deepcopy(attn)
    assert set_attention_backend(switched) == 1 and isinstance(switched.processor, PydiffSanaWMCrossAttnProcessor)


def tiny_easyanimate():
    from diffusers.models.transformers.transformer_easyanimate import EasyAnimateTransformer3DModel

    return _perturb(EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2, sample_width=6,
        sample_height=8, num_layers=2, mmdit_layers=1, time_embed_dim=16, text_embed_dim=24), 115)


def _easyanimate_inputs(seed):
    """EasyAnimate inputs: 2 frames of 8 x 6 latents (24 patches), 7 text tokens."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 2, 8, 6, generator=gen), timestep=torch.tensor([3.0, 700.0]),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen))


@pytest.mark.parametrize("backend", BACKENDS)
def test_easyanimate_transformer(backend, monkeypatch):
    """EasyAnimate: [text; video] as a joint call in its MMDiT block and over the joined tokens in the other, the
    RoPE on the video tokens only; outputs the stock processors'."""
    calls = _keys_only_calls(monkeypatch)
    inputs = _easyanimate_inputs(116)
    _compare(tiny_easyanimate(), lambda m: m(**inputs).sample, backend, {PydiffEasyAnimateAttnProcessor})
    assert calls == [("tokens", False)] * 2


needs_wan_animate = _needs("WanAnimateFaceBlockAttnProcessor", "Wan-Animate", "0.36")


@needs_wan_animate
@pytest.mark.parametrize("variant", ["rms-norms", "layer-norm-k", "fused-projections"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_wan_animate_face_block_attention(backend, variant, monkeypatch):
    """Wan-Animate's face-block cross-attention (two heads of 16): 12 video tokens over 3 motion frames of 3 tokens,
    one call over B*T = 6 batch rows, its per-head QK RMSNorms in the prologue (a LayerNorm one as a module), on
    separate and fused projections, with and without the multiplicative mask; outputs the stock processor's."""
    from diffusers.models.transformers.transformer_wan_animate import (
        WanAnimateFaceBlockAttnProcessor,
        WanAnimateFaceBlockCrossAttention,
    )

    attn = WanAnimateFaceBlockCrossAttention(dim=32, heads=2, dim_head=16, cross_attention_dim_head=16,
                                             processor=WanAnimateFaceBlockAttnProcessor())
    if variant == "layer-norm-k":
        attn.norm_k = torch.nn.LayerNorm(16)
    attn = _perturb(attn, 176)
    if variant == "fused-projections":
        if not hasattr(attn, "use_bias"):  # (which fuse_projections reads)
            pytest.skip(f"diffusers {diffusers.__version__}'s face block cannot fuse its projections")
        attn.fuse_projections()
    gen = torch.Generator().manual_seed(177)
    hidden, motion = torch.randn(2, 12, 32, generator=gen), torch.randn(2, 3, 3, 32, generator=gen)
    mask = (torch.rand(12, 1, generator=gen) > 0.3).float()  # (a token mask the stock processor broadcasts)
    calls = _spy(monkeypatch, lambda args, kwargs: (args[0].shape[0], kwargs.get("q_norm_weight") is not None,
                                                    kwargs.get("k_norm_weight") is not None))
    ours = copy.deepcopy(attn)
    assert set_attention_backend(ours) == 1
    with torch.no_grad(), pydiff.use_backend(backend):
        for attention_mask in (None, mask):
            torch.testing.assert_close(ours(hidden, motion, attention_mask), attn(hidden, motion, attention_mask),
                                       rtol=2e-5, atol=2e-5)
    assert calls == [(6, True, variant != "layer-norm-k")] * 2


def tiny_wan_animate():
    """Wan-Animate at a tiny size: two blocks of two heads of 16, a face block after each, a 16-pixel motion
    encoder."""
    from diffusers import WanAnimateTransformer3DModel

    return _perturb(WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=12, latent_channels=4,
        out_channels=4, text_dim=24, freq_dim=16, ffn_dim=32, num_layers=2, image_dim=None, rope_max_seq_len=32,
        motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16, motion_style_dim=16,
        motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=32, face_encoder_num_heads=2,
        inject_face_latents_blocks=1), 178)


@needs_wan_animate
@pytest.mark.parametrize("backend", BACKENDS)
def test_wan_animate_transformer(backend, monkeypatch):
    """The tiny Wan-Animate: 3 latent frames of 2 x 2 patches, 5 face frames (3 motion frames with the leading
    pad): Wan's attention (its copy) and the face blocks' cross-attention (one call over B*T = 6 batch rows) in the
    kernel; outputs the stock processors'."""
    gen = torch.Generator().manual_seed(179)
    inputs = dict(hidden_states=torch.randn(2, 12, 3, 4, 4, generator=gen), timestep=torch.tensor([10, 500]),
                  encoder_hidden_states=torch.randn(2, 7, 24, generator=gen),
                  pose_hidden_states=torch.randn(2, 4, 2, 4, 4, generator=gen),
                  face_pixel_values=torch.randn(2, 3, 5, 16, 16, generator=gen))
    calls = _spy(monkeypatch, lambda args, kwargs: args[0].shape[0])
    _compare(tiny_wan_animate(), lambda m: m(**inputs).sample, backend,
             {PydiffWanAttnProcessor, attention_processors.PydiffWanAnimateFaceBlockAttnProcessor})
    assert calls == [2, 2, 6] * 2  # (each block's self- and cross-attention, then its face block's)


@_needs("WanAnimate2CrossAttnProcessor", "Wan-Animate 2", "0.42")
@pytest.mark.parametrize("backend", BACKENDS)
def test_wan_animate2_cross_attention(backend, monkeypatch):
    """Wan-Animate 2's cross-attention: the text's attention, and with an image context the two summed in one pass
    over q (the negative stream at -1); outputs the stock processor's, and ``set_attention_backend`` sets ours."""
    from diffusers.models.transformers.transformer_wan_animate_2 import (
        WanAnimate2Attention,
        WanAnimate2CrossAttnProcessor,
    )

    attn = _perturb(WanAnimate2Attention(dim=32, heads=2, added_kv_proj_dim=32, is_cross_attention=True,
                                         processor=WanAnimate2CrossAttnProcessor()), 117)
    gen = torch.Generator().manual_seed(118)
    hidden, text, image = (torch.randn(2, n, 32, generator=gen) for n in (12, 7, 5))
    calls = _spy(monkeypatch, lambda args, kwargs: kwargs.get("negative_scale") if "negative" in kwargs and
                 kwargs["negative"] is not None else None)
    ours = copy.deepcopy(attn)
    assert set_attention_backend(ours) == 1
    for context in (None, image):
        with torch.no_grad(), pydiff.use_backend(backend):
            torch.testing.assert_close(
                ours(hidden, encoder_hidden_states=text, encoder_hidden_states_image=context),
                attn(hidden, encoder_hidden_states=text, encoder_hidden_states_image=context), rtol=2e-5, atol=2e-5)
    assert calls == [None, -1.0]


@_needs("WanAnimate2AttnProcessor", "Wan-Animate 2", "0.42")
@pytest.mark.parametrize("backend", BACKENDS)
def test_wan_animate2_transformer(backend, monkeypatch):
    """The tiny Wan-Animate 2 (two heads of 16, two layers): the reference pass (dense self-attention, its keys
    cached unturned), then generation passes over the cached reference: the whole video (5 frames of 5 x 8 patches
    against 4 reference frames), and a segment of 3 smaller frames (4 x 6) packed into the whole video's buffer
    (zero padding inside frames, which the stock BlockMask attends to). Outputs the stock processors' (flex
    attention, eager, evaluating the mask_mod everywhere); each generation pass one block-sparse call per layer,
    the BlockMask's partial blocks made into tiles once."""
    from diffusers.models.transformers.transformer_wan_animate_2 import (
        WanAnimate2KVCache,
        WanAnimate2Transformer3DModel,
    )

    model = _perturb(WanAnimate2Transformer3DModel(
        patch_size=(1, 2, 2), text_len=8, in_dim=8, dim=32, ffn_dim=32, freq_dim=32, text_dim=16, out_dim=4,
        num_heads=2, num_layers=2, use_img_emb=False), 141)
    gen = torch.Generator().manual_seed(142)
    latents = {name: [torch.randn(4, f, h, w, generator=gen) for _ in range(2)]
               for name, (f, h, w) in (("reference", (4, 10, 16)), ("video", (5, 10, 16)), ("segment", (3, 8, 12)))}
    text = [torch.randn(5, 16, generator=gen)]
    t = torch.tensor([500.0])
    reference_grid = torch.tensor([[4, 5, 8]])

    def run(m):
        cache = WanAnimate2KVCache(2)
        outs = m(latents["reference"][:1], t, text, latents["reference"][1:], cache, "extract", seq_len=160,
                 offset_grid_sizes=reference_grid).sample
        for name, tokens in (("video", 200), ("segment", 72)):
            outs += m(latents[name][:1], t, text, latents[name][1:], cache, "cached", seq_len=tokens,
                      reference_grid_sizes=reference_grid, origin_len=16, origin_area=[80, 128]).sample
        return tuple(outs)

    calls = _spy(monkeypatch, lambda args, kwargs: "block_tiles" in kwargs)
    made, tables = [], _made_counter(monkeypatch)
    monkeypatch.setattr(attention_processors, "block_mask_tiles",
                        lambda *args: made.append(args[1:]) or block_mask_tiles(*args))
    _compare(model, run, backend, {attention_processors.PydiffWanAnimate2AttnProcessor,
                                   attention_processors.PydiffWanAnimate2CrossAttnProcessor})
    assert calls == [False] * 4 + [True, False] * 4  # (per layer: self-attention, cross-attention)
    assert made == [(256, 512)]  # (one BlockMask for both passes: (5 + 1) x 40 and 5 x 40 tokens, padded to 128)
    # (the RoPE tables made once per pass for both layers: the reference pass's; the first generation pass's
    # generation and reference grids'; the second's generation grid's, the reference grid's kept: the same sizes)
    generation, reference = (id(slot) for slot in attention_processors._LAST_WAN_TABLES)
    assert tables == [generation, generation, reference, generation], tables


@_needs("AnyFlowAttnProcessor", "AnyFlow", "0.39")
@pytest.mark.parametrize("backend", BACKENDS)
def test_anyflow_transformer(backend, monkeypatch):
    """The tiny AnyFlow (two heads of 24, two layers; 3 frames of 4 x 6 patches, 7 text tokens): self-attention
    with its complex 3-axis RoPE in the prologue, cross-attention to the text; outputs the stock processors'."""
    from diffusers.models.transformers.transformer_anyflow import AnyFlowTransformer3DModel

    model = _perturb(AnyFlowTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32), 148)
    gen = torch.Generator().manual_seed(149)
    latents = torch.randn(1, 3, 4, 8, 12, generator=gen)
    text = torch.randn(1, 7, 16, generator=gen)
    calls = _spy(monkeypatch, lambda args, kwargs: kwargs.get("rope") is not None)
    t, r = torch.full((1, 3), 700.0), torch.full((1, 3), 300.0)  # (per frame)
    _compare(model, lambda m: m(latents, t, r, text).sample, backend,
             {attention_processors.PydiffAnyFlowAttnProcessor, attention_processors.PydiffAnyFlowCrossAttnProcessor})
    assert calls == [True, False] * 2


@_needs("AnyFlowCausalAttnProcessor", "AnyFlow FAR", "0.39")
@pytest.mark.parametrize("backend", BACKENDS)
def test_anyflow_far_transformer(backend, monkeypatch):
    """The tiny AnyFlow FAR (two heads of 24, two layers, 8 x 12 latents: 24 tokens a frame, 6 compressed; at
    most two full chunks): the training rollout over three chunks (its chunk-causal BlockMask), then the
    autoregressive rollout as its pipeline runs it, each chunk's step over the KV cache (the compressed, the full
    and its own keys, padded with zero keys as the stock processor pads them) and the cache prefill after it (a
    BlockMask of its own). Every output equals the stock processors' (flex attention, eagerly); the BlockMask
    calls go through tiles, and the autoregressive ones not."""
    from diffusers.models.transformers.transformer_anyflow_far import AnyFlowFARTransformer3DModel

    model = _perturb(AnyFlowFARTransformer3DModel(
        patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=2, num_attention_heads=2,
        attention_head_dim=24, in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2,
        rope_max_seq_len=32, chunk_partition=(1, 1, 1)), 150)
    gen = torch.Generator().manual_seed(151)
    latents = torch.randn(1, 3, 4, 8, 12, generator=gen)
    text = torch.randn(1, 7, 16, generator=gen)
    partition = [1, 1, 1]

    def times(frames, value):
        return torch.full((1, frames), value)

    def run(m):
        outs = [m(latents, times(3, 700.0), times(3, 300.0), text, chunk_partition=partition).sample]
        cache = {i: {"full_cache": torch.zeros(2, 1, 2, 2 * 24, 24),
                     "compressed_cache": torch.zeros(2, 1, 2, 2 * 6, 24)} for i in range(2)}
        flag = {"num_cached_chunks": 0, "is_cache_step": False}
        for chunk in range(3):
            step = latents[:, chunk:chunk + 1]
            outs.append(m(step, times(1, 500.0), times(1, 200.0), text, chunk_partition=partition[:chunk + 1],
                          kv_cache=cache, kv_cache_flag=copy.deepcopy(flag)).sample)
            if chunk < 2:
                mask = m.build_attention_mask(chunk_partition=partition[:chunk + 1], height=8, width=12, mode="cache")
                m(latents[:, :chunk + 1], times(chunk + 1, 0.0), times(chunk + 1, 0.0), text,
                  chunk_partition=partition[:chunk + 1], attention_mask=mask, kv_cache=cache,
                  kv_cache_flag={**flag, "is_cache_step": True})
                flag["num_cached_chunks"] += 1
        return tuple(outs)

    calls = _spy(monkeypatch, lambda args, kwargs: "block_tiles" in kwargs or "block_mask" in kwargs)
    _compare(model, run, backend, {attention_processors.PydiffAnyFlowCausalAttnProcessor,
                                   attention_processors.PydiffAnyFlowCrossAttnProcessor})
    self_calls = calls[::2]  # (per layer: self-attention, then cross-attention)
    assert self_calls == [True] * 2 + [False] * 2 + [True] * 2 + [False] * 2 + [True] * 2 + [False] * 2
    assert not any(calls[1::2])


@_needs("AudioDiTSelfAttnProcessor", "LongCat-AudioDiT", "0.39")
@pytest.mark.parametrize("backend", BACKENDS)
def test_longcat_audio_dit_attention(backend, monkeypatch):
    """LongCat-AudioDiT's self-attention (QK norms across heads, its RoPE, a token mask on the keys and on the
    outputs) and cross-attention (the audio's and the prompt's own RoPE tables, the prompt mask on the keys, the
    audio mask on the outputs; either side's tables alone: the other side unturned); outputs the stock processors',
    with and without masks."""
    from diffusers.models.transformers.transformer_longcat_audio_dit import (
        AudioDiTAttention,
        AudioDiTCrossAttnProcessor,
        AudioDiTRotaryEmbedding,
    )

    self_attn = _perturb(AudioDiTAttention(64, None, heads=2, dim_head=32, qk_norm=True), 152)
    cross_attn = _perturb(AudioDiTAttention(64, 24, heads=2, dim_head=32, qk_norm=True,
                                            processor=AudioDiTCrossAttnProcessor()), 153)
    gen = torch.Generator().manual_seed(154)
    hidden, prompt = torch.randn(2, 40, 64, generator=gen), torch.randn(2, 9, 24, generator=gen)
    mask, prompt_mask = torch.ones(2, 40, dtype=torch.bool), torch.ones(2, 9, dtype=torch.bool)
    mask[1, 30:], prompt_mask[0, 5:] = False, False
    rotary = AudioDiTRotaryEmbedding(32)
    rope, prompt_rope = rotary(hidden), rotary(prompt)
    calls = _spy(monkeypatch, lambda args, kwargs: (kwargs.get("attn_mask") is not None,
                                                     kwargs.get("key_rope") is not None))
    ours_self, ours_cross = copy.deepcopy(self_attn), copy.deepcopy(cross_attn)
    assert set_attention_backend(ours_self) == 1 and set_attention_backend(ours_cross) == 1
    with torch.no_grad(), pydiff.use_backend(backend):
        for masks in ((mask, prompt_mask), (None, None)):
            torch.testing.assert_close(ours_self(hidden, attention_mask=masks[0], audio_rotary_emb=rope),
                                       self_attn(hidden, attention_mask=masks[0], audio_rotary_emb=rope),
                                       rtol=2e-5, atol=2e-5)
            kwargs = dict(post_attention_mask=masks[0], attention_mask=masks[1], audio_rotary_emb=rope,
                          prompt_rotary_emb=prompt_rope)
            torch.testing.assert_close(ours_cross(hidden, prompt, **kwargs), cross_attn(hidden, prompt, **kwargs),
                                       rtol=2e-5, atol=2e-5)
        for kwargs in (dict(audio_rotary_emb=rope), dict(prompt_rotary_emb=prompt_rope)):  # (one side turns)
            torch.testing.assert_close(ours_cross(hidden, prompt, **kwargs), cross_attn(hidden, prompt, **kwargs),
                                       rtol=2e-5, atol=2e-5)
    assert calls == [(True, False), (True, True), (False, False), (False, True), (False, True), (False, True)]


@_needs("AceStepAttnProcessor2_0", "ACE-Step 1.5", "0.39")
@pytest.mark.parametrize("backend", BACKENDS)
def test_ace_step_attention(backend, monkeypatch):
    """ACE-Step 1.5's attention (four query heads over two key heads of 32): self-attention with its RoPE and QK
    norms under its sliding-window band (an additive mask per query, with key padding) and without a mask, and
    cross-attention under a key mask; outputs the stock processor's."""
    from diffusers.models.transformers.ace_step_transformer import (
        AceStepAttention,
        _ace_step_rotary_freqs,
        _create_4d_mask,
    )

    self_attn = _perturb(AceStepAttention(64, 4, 2, 32, sliding_window=6), 155)
    cross_attn = _perturb(AceStepAttention(64, 4, 2, 32, is_cross_attention=True), 156)
    gen = torch.Generator().manual_seed(157)
    hidden, context = torch.randn(2, 40, 64, generator=gen), torch.randn(2, 9, 64, generator=gen)
    padding = torch.ones(2, 40, dtype=torch.bool)
    padding[1, 33:] = False
    band = _create_4d_mask(40, torch.float32, "cpu", attention_mask=padding, sliding_window=6,
                           is_sliding_window=True, is_causal=False)
    context_mask = torch.ones(2, 9, dtype=torch.bool)
    context_mask[0, 4:] = False
    rope = _ace_step_rotary_freqs(40, 32, 1000000.0, "cpu", torch.float32)
    calls = _spy(monkeypatch, lambda args, kwargs: (kwargs.get("rope") is not None,
                                                     kwargs.get("attn_mask") is not None))
    ours_self, ours_cross = copy.deepcopy(self_attn), copy.deepcopy(cross_attn)
    assert set_attention_backend(ours_self) == 1 and set_attention_backend(ours_cross) == 1
    with torch.no_grad(), pydiff.use_backend(backend):
        for mask in (band, None):
            torch.testing.assert_close(ours_self(hidden, attention_mask=mask, image_rotary_emb=rope),
                                       self_attn(hidden, attention_mask=mask, image_rotary_emb=rope),
                                       rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(ours_cross(hidden, context, attention_mask=context_mask),
                                   cross_attn(hidden, context, attention_mask=context_mask), rtol=2e-5, atol=2e-5)
    assert calls == [(True, True), (True, False), (False, True)]


@_needs("AceStepAttnProcessor2_0", "ACE-Step 1.5", "0.39")
@pytest.mark.parametrize("backend", BACKENDS)
def test_ace_step_sliding_window_skips_blocks(backend, monkeypatch):
    """ACE-Step's sliding-window self-attention over 300 tokens (a band of 2 x 20 + 1): the band's 64 x 64 blocks
    that keep no weight are skipped (most of them), the second sample padded from token 230 on, so the last
    queries' windows hold only padding (rows of finfo.min, which the stock processor attends uniformly over every
    key: their query blocks list every block); outputs the stock processor's, the blocks found once for two
    calls on the same band."""
    from diffusers.models.transformers.ace_step_transformer import AceStepAttention, _create_4d_mask

    attn = _perturb(AceStepAttention(64, 4, 2, 32, sliding_window=20), 158)
    gen = torch.Generator().manual_seed(159)
    hidden = torch.randn(2, 300, 64, generator=gen)
    padding = torch.ones(2, 300, dtype=torch.bool)
    padding[1, 230:] = False
    band = _create_4d_mask(300, torch.float32, "cpu", attention_mask=padding, sliding_window=20,
                           is_sliding_window=True, is_causal=False)
    calls = _spy(monkeypatch, lambda args, kwargs: kwargs.get("block_mask"))
    ours = copy.deepcopy(attn)
    assert set_attention_backend(ours) == 1
    with torch.no_grad(), pydiff.use_backend(backend):
        for _ in range(2):
            torch.testing.assert_close(ours(hidden, attention_mask=band), attn(hidden, attention_mask=band),
                                       rtol=2e-5, atol=2e-5)
    assert len(calls) == 2 and calls[0] is calls[1]  # (made once)
    blocks = calls[0]
    assert blocks.shape == (2, 1, 5, 5) and blocks[0].sum() == 13  # (the band's: 13 of 25 blocks)
    # (the padded sample's query blocks holding a row of padding alone list every block)
    assert blocks[1, 0, 3:].all() and not blocks[0, 0, 3:].all()


@_needs("Cosmos3AttnProcessor", "Cosmos 3", "0.39")
@pytest.mark.parametrize("norms", ["rms", "nemotron-gen-only"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cosmos3_attention(backend, norms, monkeypatch):
    """Cosmos 3's packed attention (four query heads over two key heads of 32): the understanding tokens' causal
    self-attention (``causal``) and the generation tokens' over [understanding; generation] keys (a stream of keys
    only), each pathway's RoPE tables, its QK norms (diffusers' RMSNorm; or Nemotron's, the understanding keys
    normed for the generation pathway alone); outputs the stock processor's."""
    from diffusers.models.transformers.transformer_cosmos3 import Cosmos3PackedMoTAttention

    nemotron = norms != "rms"
    layouts = {}  # (diffusers 0.42's norm layouts; 0.39's module has its RMSNorms alone)
    if "norm_type" in inspect.signature(Cosmos3PackedMoTAttention).parameters:
        layouts = dict(qk_norm_for_text=not nemotron, use_und_k_norm_for_gen=nemotron,
                       norm_type="nemotron_rms_norm" if nemotron else "rms_norm")
    elif nemotron:
        pytest.skip(f"diffusers {diffusers.__version__}'s Cosmos 3 has RMSNorms only")
    attn = _perturb(Cosmos3PackedMoTAttention(64, 32, 4, 2, attention_bias=True, rms_norm_eps=1e-6, **layouts), 158)
    gen = torch.Generator().manual_seed(159)
    und, generation = torch.randn(150, 64, generator=gen), torch.randn(70, 64, generator=gen)
    angles = [torch.rand(n, 16, generator=gen) * torch.arange(n)[:, None] for n in (150, 70)]
    rotary = [f(torch.cat([a, a], -1)) for a in angles for f in (torch.cos, torch.sin)]
    calls = _spy(monkeypatch, lambda args, kwargs: (kwargs.get("causal", False), "joint" in kwargs))
    ours = copy.deepcopy(attn)
    assert set_attention_backend(ours) == 1
    with torch.no_grad(), pydiff.use_backend(backend):
        for a, b in zip(ours(und, generation, rotary), attn(und, generation, rotary)):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    assert calls == [(True, False), (False, True)]


@_needs("MiniMaxMusic3AttnProcessor", "MiniMax Music 3", "0.42")
@pytest.mark.parametrize("backend", BACKENDS)
def test_minimax_music3_attention(backend, monkeypatch):
    """MiniMax Music 3's attention (partial rotary over the first 16 of 32 channels) and its RVQ depth decoder's
    causal attention; outputs the stock processors'."""
    from diffusers.models.transformers.minimax_music3_rvq_depth_decoder import MiniMaxMusic3DepthAttention
    from diffusers.models.transformers.transformer_minimax_music3 import MiniMaxMusic3Attention

    attn = _perturb(MiniMaxMusic3Attention(64, 2, 32), 160)
    depth = _perturb(MiniMaxMusic3DepthAttention(64, 2), 161)
    gen = torch.Generator().manual_seed(162)
    hidden, codes = torch.randn(2, 50, 64, generator=gen), torch.randn(3, 9, 64, generator=gen)
    angles = torch.rand(50, 8, generator=gen) * torch.arange(50)[:, None]
    rotary = (torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin())
    calls = _spy(monkeypatch, lambda args, kwargs: (kwargs.get("rope_dims"), kwargs.get("causal", False)))
    ours, ours_depth = copy.deepcopy(attn), copy.deepcopy(depth)
    assert set_attention_backend(ours) == 1 and set_attention_backend(ours_depth) == 1
    with torch.no_grad(), pydiff.use_backend(backend):
        torch.testing.assert_close(ours(hidden, rotary), attn(hidden, rotary), rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(ours_depth(codes), depth(codes), rtol=2e-5, atol=2e-5)
    assert calls == [(16, False), (None, True)]


@pytest.mark.skipif(attention_processors._stock_class("unets.unet_dreamlite", "DreamLiteAttnProcessor2_0") is None,
                    reason=f"diffusers {diffusers.__version__} predates DreamLite (0.39)")
@pytest.mark.parametrize("backend", BACKENDS)
def test_dreamlite_attention(backend, monkeypatch):
    """DreamLite's attention (diffusers' Attention with two key heads for four query heads and per-head QK
    RMSNorms): self-attention over a feature map and cross-attention under a mask; the kernel reads the key heads as
    they are (the stock processor repeats them). Outputs the stock processor's."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.unets.unet_dreamlite import DreamLiteAttnProcessor2_0

    def module(cross):
        return _perturb(Attention(64, cross_attention_dim=24 if cross else None, heads=4, kv_heads=2, dim_head=16,
                                  qk_norm="rms_norm", processor=DreamLiteAttnProcessor2_0()), 163 + cross)

    self_attn, cross_attn = module(False), module(True)
    gen = torch.Generator().manual_seed(165)
    image, text = torch.randn(2, 64, 5, 7, generator=gen), torch.randn(2, 9, 24, generator=gen)
    mask = torch.ones(2, 9)
    mask[1, 6:] = 0
    mask = (1 - mask) * -10000.0
    calls = _spy(monkeypatch, lambda args, kwargs: (args[1].shape[2], kwargs.get("attn_mask") is not None))
    ours_self, ours_cross = copy.deepcopy(self_attn), copy.deepcopy(cross_attn)
    assert set_attention_backend(ours_self) == 1 and set_attention_backend(ours_cross) == 1
    with torch.no_grad(), pydiff.use_backend(backend):
        torch.testing.assert_close(ours_self(image), self_attn(image), rtol=2e-5, atol=2e-5)
        sequence = image.flatten(2).transpose(1, 2)
        torch.testing.assert_close(ours_cross(sequence, text, attention_mask=mask),
                                   cross_attn(sequence, text, attention_mask=mask), rtol=2e-5, atol=2e-5)
    assert calls == [(2, False), (2, True)]  # (two key heads, read as they are)


@_needs("MiniMaxH3AttnProcessor", "MiniMax-H3", "0.42")
@pytest.mark.parametrize("backend", BACKENDS)
def test_minimax_h3_attention(backend, monkeypatch):
    """MiniMax-H3's attention (two heads of 32): its per-head QK RMSNorms and its partial rotary (the first 24
    channels of each head turning by its 3-axis tables, halves paired) in one call; outputs the stock processor's,
    with and without the rotary."""
    from diffusers.models.transformers.transformer_minimax_h3 import MiniMaxH3Attention, MiniMaxH3RotaryPosEmbed

    attn = _perturb(MiniMaxH3Attention(hidden_size=64, heads=2, dim_head=32), 143)
    gen = torch.Generator().manual_seed(144)
    hidden = torch.randn(2, 45, 64, generator=gen)
    positions = torch.stack(torch.meshgrid(torch.arange(5), torch.arange(3), torch.arange(3), indexing="ij"), -1)
    rotary = MiniMaxH3RotaryPosEmbed(rope_freq_dim=4)(positions.flatten(0, 2))
    assert rotary[0].shape == (45, 24)
    calls = _spy(monkeypatch, lambda args, kwargs: (kwargs.get("rope_dims"), kwargs.get("q_norm_weight") is not None))
    ours = copy.deepcopy(attn)
    assert set_attention_backend(ours) == 1
    for tables in (rotary, None):
        with torch.no_grad(), pydiff.use_backend(backend):
            torch.testing.assert_close(ours(hidden, tables), attn(hidden, tables), rtol=2e-5, atol=2e-5)
    assert calls == [(24, True), (None, True)]


@_needs("StableAudio3SelfAttnProcessor", "Stable Audio 3", "0.42")
@pytest.mark.parametrize("differential", [True, False], ids=["differential", "plain"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stable_audio3_attention(backend, differential, monkeypatch):
    """Stable Audio 3's self-attention (partial rotary over the first half of each head's channels, QK RMSNorms)
    and cross-attention (a context mask, a sample with one valid token among them), differential (the negative
    stream with queries of its own) and plain; outputs the stock processors'."""
    from diffusers.models.transformers.transformer_stable_audio3 import (
        StableAudio3CrossAttention,
        StableAudio3RotaryEmbedding,
        StableAudio3SelfAttention,
    )

    self_attn = _perturb(StableAudio3SelfAttention(64, dim_heads=32, use_differential=differential), 145)
    cross_attn = _perturb(StableAudio3CrossAttention(64, 24, dim_heads=32, use_differential=differential), 146)
    gen = torch.Generator().manual_seed(147)
    hidden, context = torch.randn(2, 50, 64, generator=gen), torch.randn(2, 9, 24, generator=gen)
    context_mask = torch.ones(2, 9, dtype=torch.bool)
    context_mask[1, 1:] = False
    rope = StableAudio3RotaryEmbedding(16)(60, "cpu")  # (longer than the sequence: its last rows are taken)
    calls = _spy(monkeypatch, lambda args, kwargs: (kwargs.get("rope_dims"), "negative" in kwargs))
    ours_self, ours_cross = copy.deepcopy(self_attn), copy.deepcopy(cross_attn)
    assert set_attention_backend(ours_self) == 1 and set_attention_backend(ours_cross) == 1
    with torch.no_grad(), pydiff.use_backend(backend):
        torch.testing.assert_close(ours_self(hidden, rope), self_attn(hidden, rope), rtol=2e-5, atol=2e-5)
        for mask in (context_mask, None):
            torch.testing.assert_close(ours_cross(hidden, context, mask), cross_attn(hidden, context, mask),
                                       rtol=2e-5, atol=2e-5)
    # (differential: one call each, the context mask on both streams' keys)
    expected = [(16, True), (None, True), (None, True)] if differential else [(16, False), (None, False), (None, False)]
    assert calls == expected


def tiny_stable_audio_dit():
    """Stable Audio Open's DiT at a tiny size: two query heads of 32 over one key head in its cross-attention."""
    from diffusers import StableAudioDiTModel

    return _perturb(StableAudioDiTModel(
        sample_size=16, in_channels=4, num_layers=2, attention_head_dim=32, num_attention_heads=2,
        num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=32, time_proj_dim=16,
        global_states_input_dim=24, cross_attention_input_dim=24), 171)


def _stable_audio_inputs(seed, masks: bool):
    """20 latent frames (21 tokens with the global one), 7 text tokens, the pipeline's partial rotary (D/2 = 16
    channels, half-split); with ``masks``, the frames' and the text's padding as bool token masks."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    gen = torch.Generator().manual_seed(seed)
    inputs = dict(hidden_states=torch.randn(2, 4, 20, generator=gen), timestep=torch.tensor([0.3, 0.7]),
                  encoder_hidden_states=torch.randn(2, 7, 24, generator=gen),
                  global_hidden_states=torch.randn(2, 1, 24, generator=gen),
                  rotary_embedding=get_1d_rotary_pos_embed(16, 21, use_real=True, repeat_interleave_real=False))
    if masks:
        frames, text = torch.ones(2, 20, dtype=torch.bool), torch.ones(2, 7, dtype=torch.bool)
        frames[1, 13:] = text[1, 3:] = False
        inputs.update(attention_mask=frames, encoder_attention_mask=text)
    return inputs


@pytest.mark.parametrize("masks", [False, True], ids=["no-mask", "token-masks"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stable_audio_dit_transformer(backend, masks, monkeypatch):
    """The tiny Stable Audio Open DiT: self-attention with the partial rotary (16 of 32 channels) on q and k, the
    cross-attention's one key head read as it is (not repeated) under no RoPE, the token masks in the kernel;
    outputs the stock processors'."""
    calls = _spy(monkeypatch, lambda args, kwargs: (kwargs.get("rope_dims"), args[1].shape[2],
                                                    kwargs.get("attn_mask") is not None))
    model, inputs = tiny_stable_audio_dit(), _stable_audio_inputs(172, masks)
    _compare(model, lambda m: m(**inputs).sample, backend, {attention_processors.PydiffStableAudioAttnProcessor})
    assert calls == [(16, 2, masks), (None, 1, masks)] * len(model.transformer_blocks)


@pytest.mark.parametrize("qk_norm", [None, "rms_norm", "layer_norm"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stable_audio_attention(backend, qk_norm, monkeypatch):
    """``StableAudioAttnProcessor2_0`` on modules beyond the DiT's: grouped-query self-attention on a 4-D input
    with its residual connection and output rescale, the partial rotary on q and k and a float mask per query;
    cross-attention with the rotary on the queries alone (the keys' tables turn nothing) and a bool key mask; QK
    norms per head (RMSNorm in the prologue, LayerNorm as modules); outputs the stock processor's."""
    from diffusers.models.attention_processor import Attention, StableAudioAttnProcessor2_0
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    common = dict(query_dim=64, heads=4, kv_heads=2, dim_head=16, qk_norm=qk_norm, eps=1e-5, bias=True,
                  processor=StableAudioAttnProcessor2_0())
    self_attn = _perturb(Attention(**common, residual_connection=True, rescale_output_factor=2.0), 173)
    cross_attn = _perturb(Attention(**common, cross_attention_dim=24), 174)
    gen = torch.Generator().manual_seed(175)
    image, context = torch.randn(2, 64, 3, 5, generator=gen), torch.randn(2, 9, 24, generator=gen)
    tables = get_1d_rotary_pos_embed(8, 15, use_real=True, repeat_interleave_real=False)
    float_mask = torch.randn(2, 15, 15, generator=gen)
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, 4:] = False
    calls = _spy(monkeypatch, lambda args, kwargs: (kwargs.get("rope_dims"), kwargs.get("key_rope") is not None,
                                                    kwargs.get("q_norm_weight") is not None))
    ours_self, ours_cross = copy.deepcopy(self_attn), copy.deepcopy(cross_attn)
    assert set_attention_backend(ours_self) == 1 and set_attention_backend(ours_cross) == 1
    hidden = image.flatten(2).transpose(1, 2)
    with torch.no_grad(), pydiff.use_backend(backend):
        torch.testing.assert_close(ours_self(image, attention_mask=float_mask, rotary_emb=tables),
                                   self_attn(image, attention_mask=float_mask, rotary_emb=tables),
                                   rtol=2e-5, atol=2e-5)
        for mask, rope in ((key_mask, tables), (None, None)):
            torch.testing.assert_close(ours_cross(hidden, context, attention_mask=mask, rotary_emb=rope),
                                       cross_attn(hidden, context, attention_mask=mask, rotary_emb=rope),
                                       rtol=2e-5, atol=2e-5)
    fused = qk_norm == "rms_norm"
    assert calls == [(8, False, fused), (8, True, fused), (None, False, fused)]


needs_helios = _needs("HeliosAttnProcessor", "Helios", "0.39")


def tiny_helios():
    """The tiny Helios: two heads of 16, two layers, its history keys amplified per head."""
    from diffusers.models.transformers.transformer_helios import HeliosTransformer3DModel

    return _perturb(HeliosTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=24, freq_dim=32, ffn_dim=48, num_layers=2, rope_dim=(4, 6, 6), is_amplify_history=True), 123)


def _helios_inputs(seed):
    """Helios inputs: 2 frames of 8 x 8 latents (32 patches) after 2 short-history frames (32 more), 7 text tokens."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 2, 8, 8, generator=gen), timestep=torch.tensor([300.0, 700.0]),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen),
                indices_hidden_states=torch.tensor([[2, 3], [2, 3]]),
                indices_latents_history_short=torch.tensor([[0, 1], [0, 1]]),
                latents_history_short=torch.randn(2, 4, 2, 8, 8, generator=gen))


@needs_helios
@pytest.mark.parametrize("backend", BACKENDS)
def test_helios_transformer(backend, monkeypatch):
    """Helios: self-attention over [history; current] tokens with its RoPE table read in place and the history keys
    amplified (per head, a learned scale away from 1 here), cross-attention to the text; outputs the stock
    processors'."""
    model = tiny_helios()
    for module in model.modules():
        if isinstance(getattr(module, "history_key_scale", None), torch.nn.Parameter):
            module.history_key_scale.data.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(124))
    calls = _spy(monkeypatch, lambda args, kwargs: (args[0].shape[1], kwargs.get("rope") is not None))
    inputs = _helios_inputs(125)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffHeliosAttnProcessor})
    assert calls == [(64, True), (32, False)] * 2


def tiny_omnigen():
    """The tiny OmniGen: two heads of 16, two layers, its Phi-3 RoPE at a scale of 1."""
    from diffusers.models.transformers.transformer_omnigen import OmniGenTransformer2DModel

    return _perturb(OmniGenTransformer2DModel(
        in_channels=4, patch_size=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=48, num_layers=2, vocab_size=100, pad_token_id=0, max_position_embeddings=1024,
        original_max_position_embeddings=512, rope_scaling={"short_factor": [1.0] * 8, "long_factor": [1.0] * 8},
        pos_embed_max_size=16, time_step_dim=32), 119)


def _omnigen_inputs(seed):
    """OmniGen inputs: 9 condition tokens (an input image's 4 patches among them in the first sample), the time token,
    an 8 x 8 latent (16 patches); its mask causal over the condition and the time token, bidirectional over the
    image, the second sample's first two condition tokens padding (each still sees itself)."""
    gen = torch.Generator().manual_seed(seed)
    condition = 9
    n = condition + 1 + 16
    mask = torch.ones(2, n, n)
    mask[:, :condition + 1, :condition + 1] = torch.tril(torch.ones(condition + 1, condition + 1))
    mask[:, :condition + 1, condition + 1:] = 0
    mask[1, :, :2] = 0
    mask[1, :2, :2] = torch.eye(2)
    return dict(hidden_states=torch.randn(2, 4, 8, 8, generator=gen), timestep=torch.tensor([0.3, 0.7]),
                input_ids=torch.randint(1, 100, (2, condition), generator=gen),
                input_img_latents=[torch.randn(1, 4, 4, 4, generator=gen)], input_image_sizes={0: [(2, 6)]},
                attention_mask=mask, position_ids=torch.arange(n)[None].expand(2, n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_omnigen_transformer(backend, monkeypatch):
    """OmniGen: its half-split RoPE in the prologue and its additive mask (causal condition, bidirectional image,
    padding) the kernel's mask per query, in every layer; outputs the stock processors'."""
    calls = _masked_calls(monkeypatch)
    inputs = _omnigen_inputs(120)
    _compare(tiny_omnigen(), lambda m: m(**inputs).sample, backend, {PydiffOmniGenAttnProcessor})
    assert calls == ["rows"] * 2


def tiny_hunyuan_dit():
    from diffusers import HunyuanDiT2DModel

    return _perturb(HunyuanDiT2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, patch_size=2, sample_size=8, hidden_size=32,
        num_layers=2, cross_attention_dim=24, cross_attention_dim_t5=32, pooled_projection_dim=16, text_len=7,
        text_len_t5=5), 111)


def _allegro_inputs(seed):
    """Allegro inputs: 2 frames of 8 x 8 latents (2 x 16 patches), 7 text tokens with padding, its 3-D RoPE as its
    pipeline builds it (the axes' tables and each token's (t, h, w) positions)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

    gen = torch.Generator().manual_seed(seed)
    *freqs, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(24, ((0, 0), (4, 4)), (4, 4), 2, (2.2, 2.0, 2.0))
    positions = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long()).T.reshape(3, 1, -1)
    return dict(hidden_states=torch.randn(2, 4, 2, 8, 8, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, 16, generator=gen), timestep=torch.tensor([3.0, 700.0]),
                encoder_attention_mask=torch.tensor([[1] * 7, [1] * 3 + [0] * 4]),
                image_rotary_emb=(tuple(freqs), tuple(positions)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_allegro_transformer(backend, monkeypatch):
    """The tiny Allegro (two heads of 24, two layers): self-attention with its 3-D RoPE in the prologue (the t, h and
    w thirds of each head turned by halves of their own: ``rope_sections=3``), cross-attention under its text
    padding mask (no RoPE); outputs the stock processors'."""
    from diffusers import AllegroTransformer3DModel

    model = _perturb(AllegroTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4, num_layers=2,
        cross_attention_dim=48, sample_height=8, sample_width=8, sample_frames=2, caption_channels=16), 170)
    calls = _spy(monkeypatch, lambda args, kwargs: (kwargs.get("rope_sections"), kwargs.get("attn_mask") is not None))
    made = _made_counter(monkeypatch)
    inputs = _allegro_inputs(171)
    _compare(model, lambda m: m(**inputs).sample, backend, {attention_processors.PydiffAllegroAttnProcessor})
    assert calls == [(3, False), (1, True)] * 2
    assert made == [id(attention_processors._LAST_ALLEGRO_TABLES)]  # (the tables gathered once for both layers)


def _made_counter(monkeypatch) -> list:
    """The slots (their ids) of the ``_made_once`` calls that made something (not those that found it made), in
    order."""
    made, once = [], attention_processors._made_once

    def counted(slot, key, tensor, make):
        return once(slot, key, tensor, lambda: made.append(id(slot)) or make())
    monkeypatch.setattr(attention_processors, "_made_once", counted)
    return made


def _hunyuan_dit_inputs(seed):
    """HunyuanDiT inputs: 8 x 8 latents (4 x 4 patches), 7 CLIP and 5 T5 text tokens with padding, its 2-D RoPE."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 8, 8, generator=gen), timestep=torch.tensor([3.0, 700.0]),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), text_embedding_mask=_TEXT_PADDING,
                encoder_hidden_states_t5=torch.randn(2, 5, 32, generator=gen),
                text_embedding_mask_t5=torch.tensor([[1] * 5, [1] * 2 + [0] * 3]),
                image_meta_size=torch.randn(2, 6, generator=gen), style=torch.tensor([0, 0]),
                image_rotary_emb=get_2d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4), output_type="pt"))


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused-projections"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_hunyuan_dit_transformer(backend, fused, monkeypatch):
    """HunyuanDiT: self-attention with its RoPE on q and k in the prologue, cross-attention with the RoPE on the
    queries alone (the keys' tables turn nothing), LayerNorm QK norms as modules; after ``fuse_qkv_projections()``
    (``FusedHunyuanAttnProcessor2_0``) the same, q, k and v strided views of the one projection (k and v of
    ``to_kv`` in cross-attention); outputs the stock processors'."""
    from diffusers.models.attention_processor import FusedHunyuanAttnProcessor2_0

    def record(args, kwargs):
        key_rope = kwargs.get("key_rope")
        return kwargs.get("rope") is not None, None if key_rope is None else bool((key_rope[1] == 0).all()), \
            args[2].is_contiguous()  # (v: the QK norms run as modules, so q and k are new tensors)

    calls = _spy(monkeypatch, record)
    model, inputs = tiny_hunyuan_dit(), _hunyuan_dit_inputs(112)
    if fused:
        model.fuse_qkv_projections()
        assert _processor_types(model) == {FusedHunyuanAttnProcessor2_0}
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffHunyuanDiTAttnProcessor})
    assert calls == [(True, None, not fused), (True, True, not fused)] * len(model.blocks)


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused-projections"])
@pytest.mark.parametrize("cfg", [False, True], ids=["pag", "pag-cfg"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_hunyuan_dit_with_pag_processors(backend, cfg, fused, monkeypatch):
    """Perturbed-attention guidance on the tiny HunyuanDiT's self-attention (as its PAG pipeline sets it: with CFG,
    [unconditional, conditional, perturbed] samples; without, [original, perturbed]): the unperturbed samples in
    the kernel with their RoPE, the perturbed ones' identity attention, on separate and fused projections; outputs
    the stock processors'."""
    from diffusers.models.attention_processor import PAGCFGHunyuanAttnProcessor2_0, PAGHunyuanAttnProcessor2_0

    model = tiny_hunyuan_dit()
    if fused:
        model.fuse_qkv_projections()
    stock_pag = PAGCFGHunyuanAttnProcessor2_0 if cfg else PAGHunyuanAttnProcessor2_0
    for block in model.blocks:
        block.attn1.set_processor(stock_pag())
    inputs = _hunyuan_dit_inputs(170)
    if cfg:  # (three samples: the second twice)
        inputs = {name: value[[0, 1, 1]] if isinstance(value, torch.Tensor) and value.shape[0] == 2 and
                  name != "image_rotary_emb" else value for name, value in inputs.items()}
    batch = 3 if cfg else 2
    calls = _spy(monkeypatch, lambda args, kwargs: args[0].shape[0])
    ours_pag = attention_processors.PydiffPAGCFGHunyuanAttnProcessor if cfg else \
        attention_processors.PydiffPAGHunyuanAttnProcessor
    _compare(model, lambda m: m(**inputs).sample, backend, {ours_pag, PydiffHunyuanDiTAttnProcessor})
    assert calls == [batch - 1, batch] * len(model.blocks)  # (self-attention over the unperturbed samples)


def tiny_hunyuan_video():
    from diffusers import HunyuanVideoTransformer3DModel

    return _perturb(HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=2,
        num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=False, text_embed_dim=24,
        pooled_projection_dim=8, rope_axes_dim=(4, 6, 6)), 21)


def _hunyuan_inputs(seed):
    """HunyuanVideo inputs: 2 frames of 4 x 5 latents, 7 text tokens, the second prompt padded after 3."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 3:] = 0
    return dict(hidden_states=torch.randn(2, 4, 2, 4, 5, generator=gen), timestep=torch.tensor([3, 500]),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), encoder_attention_mask=mask,
                pooled_projections=torch.randn(2, 8, generator=gen))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hunyuan_video_transformer(backend, monkeypatch):
    """HunyuanVideo: [video; text] attention, joint in the dual-stream blocks and over the joined tokens in the
    single-stream ones, RoPE on the video tokens only, the text padding as the key mask: every block's call fused
    and masked, and the token refiner's per-query mask into the kernel too."""
    model = tiny_hunyuan_video()
    inputs = _hunyuan_inputs(22)
    calls = _masked_calls(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffHunyuanVideoAttnProcessor})
    refiner = len(model.context_embedder.token_refiner.refiner_blocks)
    assert calls == ["rows"] * refiner + ["keys"] * (len(model.transformer_blocks) +
                                                     len(model.single_transformer_blocks))


needs_hunyuan_video15 = _needs("HunyuanVideo15AttnProcessor2_0", "HunyuanVideo 1.5", "0.36")


def tiny_hunyuan_video15():
    from diffusers import HunyuanVideo15Transformer3DModel

    return _perturb(HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_refiner_layers=1, text_embed_dim=24, text_embed_2_dim=20, image_embed_dim=12, rope_axes_dim=(4, 6, 6)), 44)


def _hunyuan_video15_inputs(seed):
    """HunyuanVideo 1.5 inputs: 3 frames of 4 x 6 latents, 7 + 5 text tokens (each prompt padded in one of its two
    encoders) and, text-to-video, image embeddings of zeros, whose 3 tokens the model marks as padding."""
    gen = torch.Generator().manual_seed(seed)
    mask, mask_2 = torch.ones(2, 7, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    mask[1, 4:] = 0
    mask_2[0, 3:] = 0
    return dict(hidden_states=torch.randn(2, 4, 3, 4, 6, generator=gen), timestep=torch.tensor([3.0, 700.0]),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), encoder_attention_mask=mask,
                encoder_hidden_states_2=torch.randn(2, 5, 20, generator=gen), encoder_attention_mask_2=mask_2,
                image_embeds=torch.zeros(2, 3, 12))


@needs_hunyuan_video15
@pytest.mark.parametrize("backend", BACKENDS)
def test_hunyuan_video15_transformer(backend, monkeypatch):
    """HunyuanVideo 1.5: [video; text] as a joint call, the QK RMSNorms in the prologue, the RoPE on the video
    tokens; the stock processor's outer-product mask (B, 1, N, N) read as the tokens' key mask with the padding's
    query rows zeroed (SDPA gives a query that sees no key zeros). The token refiner keeps ``PydiffAttnProcessor``.
    Outputs the stock processors'."""
    model, inputs = tiny_hunyuan_video15(), _hunyuan_video15_inputs(45)
    calls = _joined_masks(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffHunyuanVideo15AttnProcessor, PydiffAttnProcessor})
    # (the refiner's self-attention over the 7 text tokens, its mask per query; then each block's 72 + 15 tokens)
    assert calls == [(None, ((2, 1, 7, 7), torch.bool))] + [((87, 16), ((2, 1, 1, 87), torch.bool))] * 2
    # one block's attention alone: a text mask, and without text a mask that reaches into the video tokens
    attn, gen = model.transformer_blocks[0].attn, torch.Generator().manual_seed(46)
    hidden, context = torch.randn(2, 10, 32, generator=gen), torch.randn(2, 6, 32, generator=gen)
    angles = torch.rand(10, 8, generator=gen).repeat_interleave(2, -1) * 6
    masks = torch.rand(2, 6, generator=gen) > 0.4
    with pydiff.use_backend(backend):
        _block_matches_stock(PydiffHunyuanVideo15AttnProcessor(), attn, (hidden, context), (angles.cos(), angles.sin()),
                             [masks])
        _block_matches_stock(PydiffHunyuanVideo15AttnProcessor(), attn, (hidden,), (angles.cos(), angles.sin()),
                             [masks[:, :4]])


def tiny_sana(qk_norm):
    from diffusers import SanaTransformer2DModel

    return _perturb(SanaTransformer2DModel(**_SANA_CONFIG, patch_size=1, qk_norm=qk_norm), 49)


_SANA_CONFIG = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                    num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
                    caption_channels=24, sample_size=8)


def _sana_inputs(seed):
    """Sana inputs: 8 x 6 latents, 7 caption tokens, the second prompt padded after 4."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    return dict(hidden_states=torch.randn(2, 4, 8, 6, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), timestep=torch.tensor([3, 700]),
                encoder_attention_mask=mask)


@pytest.mark.parametrize("qk_norm", [None, "rms_norm_across_heads"], ids=["sana", "sana-1.5-qk-norm"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sana_cross_attention(backend, qk_norm, monkeypatch):
    """Sana's cross-attention with the caption padding (diffusers' additive (B, 1, N_k) mask) as the kernel's key
    mask, Sana 1.5's across-heads QK norms as modules; its linear self-attention keeps the stock processor. Outputs
    the stock processors'."""
    from diffusers.models.attention_processor import SanaLinearAttnProcessor2_0

    model, inputs = tiny_sana(qk_norm), _sana_inputs(50)
    calls = _masked_calls(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffSanaAttnProcessor, SanaLinearAttnProcessor2_0})
    assert calls == ["keys"] * 2


def tiny_hidream(partial_rope: bool):
    """HiDream-I1 from a small config (one block of each kind, 2 experts): its RoPE turns the whole head dim, or
    (``partial_rope``) the first half of it only."""
    from diffusers import HiDreamImageTransformer2DModel

    return _perturb(HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, caption_channels=[24, 20], text_emb_dim=12, num_routed_experts=2,
        num_activated_experts=1, axes_dims_rope=(4, 2, 2) if partial_rope else (8, 4, 4), max_resolution=(16, 16),
        llama_layers=[0, 1]), 51)


def _hidream_inputs(seed):
    """HiDream inputs: 8 x 6 latents (non-square: the model pads the image tokens and zeroes the padding's keys), 7
    T5 tokens and 5 Llama tokens from each of 2 layers."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 8, 6, generator=gen), timesteps=torch.tensor([3, 700]),
                encoder_hidden_states_t5=torch.randn(2, 7, 24, generator=gen),
                encoder_hidden_states_llama3=torch.randn(2, 2, 5, 20, generator=gen),
                pooled_embeds=torch.randn(2, 12, generator=gen))


@pytest.mark.parametrize("partial_rope", [False, True], ids=["rope", "half-dim-rope"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_hidream_transformer(backend, partial_rope, monkeypatch):
    """HiDream-I1: [image; text] as a joint call in the dual-stream block, the single-stream block over its joined
    tokens, the rotation-matrix RoPE read in place as the prologue's tables of one angle per pair (identity pairs
    after the half it turns), the padding's keys zeroed as in the stock processor. Outputs the stock processors'."""
    model, inputs = tiny_hidream(partial_rope), _hidream_inputs(52)
    calls = _joined_masks(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffHiDreamAttnProcessor})
    # (64 image tokens, the 12 of the image padded to the model's largest, + 7 T5 + 2 x 5 Llama tokens: one table
    # per sample of 8 pairs, in both blocks)
    assert calls == [((2, 81, 1, 8), None)] * 2


def tiny_qwen_image():
    from diffusers import QwenImageTransformer2DModel

    return _perturb(QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6)), 16)


def _qwen_inputs(seed, padded=True):
    """Qwen-Image inputs: 4 x 5 latent patches, 7 text tokens, the second prompt padded after 3 tokens."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 3:] = 0
    return dict(hidden_states=torch.randn(2, 20, 16, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, 32, generator=gen),
                encoder_hidden_states_mask=mask if padded else None, timestep=torch.tensor([0.3, 0.8]),
                img_shapes=[(1, 4, 5)] * 2)


@pytest.mark.parametrize("padded", [True, False], ids=["text-padding", "no-mask"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_qwen_image_transformer(backend, padded, monkeypatch):
    """Qwen-Image's joint attention: per-stream QK RMSNorms, complex RoPE over [text; image], the text padding
    (diffusers 0.39+ masks it) as the kernel's key mask; every block's call fused."""
    if not attention_processors._QWEN_MASKS_TEXT:
        pytest.skip(f"diffusers {diffusers.__version__}: its Qwen-Image processor predates the text mask (0.39)")
    model = tiny_qwen_image()
    inputs = _qwen_inputs(17, padded)
    calls = _masked_calls(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffQwenImageAttnProcessor})
    assert calls == ["keys" if padded else None] * len(model.transformer_blocks)


def _pixart_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(3, 4, 8, 8, generator=gen),
                encoder_hidden_states=torch.randn(3, 9, 24, generator=gen), timestep=torch.tensor([3, 500, 999]),
                encoder_attention_mask=torch.tensor([[1] * 9, [1, 1, 1, 0, 0, 0, 0, 0, 0], [0] * 9]))


def tiny_pixart():
    from diffusers import PixArtTransformer2DModel

    return _perturb(PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, norm_num_groups=8, sample_size=8, patch_size=2, caption_channels=24,
        use_additional_conditions=False), 12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pixart_transformer_with_text_padding(backend, monkeypatch):
    """PixArt's T5 text padding (the pipeline's encoder_attention_mask): every cross-attention call is masked; a
    prompt whose every token is padding attends to all of them with -10000 each, as in PyTorch."""
    model = tiny_pixart()
    inputs = _pixart_inputs(13)
    calls = _masked_calls(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffAttnProcessor})
    assert calls.count("keys") == calls.count(None) == _cross_attentions(model)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_masks_of_every_form(backend, monkeypatch):
    """``AttnProcessor2_0``'s masks on one module: (B, 1, N_k) float and bool (used in place), (B*H, 1, N_k) (one row
    per head, as ``prepare_attention_mask`` makes them) go into the kernel as key masks, per-query masks
    (B, N_q, N_k) and (B, 1, N_q, N_k) bool (the token refiner's) one row per query. Outputs equal the stock
    processor's."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    gen = torch.Generator().manual_seed(14)
    attn = _perturb(Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8), 15)
    hidden, context = torch.randn(2, 10, 16, generator=gen), torch.randn(2, 6, 12, generator=gen)
    keep = torch.rand(2, 1, 6, generator=gen) > 0.4
    rows = torch.rand(2, 1, 10, 6, generator=gen) > 0.4
    rows[..., 0] = True  # (every query sees a key: the stock processor's SDPA gives NaN for a row that sees none)
    masks = [(1.0 - keep.float()) * -10000.0, keep, torch.randn(4, 1, 6, generator=gen),
             torch.randn(2, 10, 6, generator=gen), rows]
    calls = _masked_calls(monkeypatch)
    with torch.no_grad(), pydiff.use_backend(backend):
        for mask in masks:
            stock = AttnProcessor2_0()(attn, hidden, context, attention_mask=mask)
            ours = PydiffAttnProcessor()(attn, hidden, context, attention_mask=mask)
            torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
    assert calls == ["keys"] * 3 + ["rows"] * 2


def tiny_sd3(qk_norm, dual_attention_layers=(0,)):
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=24, out_channels=4,
        pos_embed_max_size=8, dual_attention_layers=dual_attention_layers, qk_norm=qk_norm)
    return _perturb(model, 3)


@pytest.mark.parametrize("qk_norm,backend", [
    ("rms_norm", "torch"), pytest.param("rms_norm", "triton", marks=needs_interpreter),
    (None, "torch"), pytest.param(None, "triton", marks=needs_interpreter),
    # LayerNorm QK norms are applied as modules before the fused call: the same kernel as qk_norm=None
    ("layer_norm", "torch"),
])
def test_sd3_transformer(qk_norm, backend):
    model = tiny_sd3(qk_norm)
    gen = torch.Generator().manual_seed(4)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    context = torch.randn(2, 9, 32, generator=gen)
    pooled = torch.randn(2, 24, generator=gen)
    t = torch.tensor([0.3, 0.8])
    _compare(model, lambda m: m(latents, context, pooled, t).sample, backend, {PydiffJointAttnProcessor})


@pytest.mark.parametrize("cfg", [False, True], ids=["pag", "pag-cfg"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sd3_with_pag_processors(backend, cfg, monkeypatch):
    """Perturbed-attention guidance on the tiny SD3's joint attention (as its PAG pipeline sets it: with CFG,
    [unconditional, conditional, perturbed] samples; without, [original, perturbed]): the unperturbed samples' joint
    call, and the perturbed ones' with each image token attending to itself and the text (a mask per query over
    the joined sequence); outputs the stock processors'."""
    from diffusers.models.attention_processor import PAGCFGJointAttnProcessor2_0, PAGJointAttnProcessor2_0

    model = tiny_sd3(None, dual_attention_layers=())
    stock_pag = PAGCFGJointAttnProcessor2_0 if cfg else PAGJointAttnProcessor2_0
    model.set_attn_processor(stock_pag())
    batch = 3 if cfg else 2
    gen = torch.Generator().manual_seed(171)
    latents, context = torch.randn(batch, 4, 8, 8, generator=gen), torch.randn(batch, 9, 32, generator=gen)
    pooled, t = torch.randn(batch, 24, generator=gen), torch.linspace(0.3, 0.8, batch)
    calls = _spy(monkeypatch, lambda args, kwargs: (args[0].shape[0], kwargs.get("attn_mask") is not None))
    ours_pag = attention_processors.PydiffPAGCFGJointAttnProcessor if cfg else \
        attention_processors.PydiffPAGJointAttnProcessor
    _compare(model, lambda m: m(latents, context, pooled, t).sample, backend, {ours_pag})
    assert calls == [(batch - 1, False), (1, True)] * len(model.transformer_blocks)


def tiny_sd3_with_ip_adapter():
    """The tiny SD3.5-style transformer (RMS QK norms, a dual-attention block) with an IP-Adapter as
    ``load_ip_adapter`` sets it up (random weights): the time-aware image projection (8 tokens) and
    ``SD3IPAdapterJointAttnProcessor2_0`` on every attention module, the dual block's image self-attention too."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    model = tiny_sd3("rms_norm")
    head_dim, width = model.config.attention_head_dim, model.inner_dim
    model.set_attn_processor({name: SD3IPAdapterJointAttnProcessor2_0(width, width, head_dim, timesteps_emb_dim=48,
                                                                      scale=0.7)
                              for name in model.attn_processors})
    model.image_proj = IPAdapterTimeImageProjection(embed_dim=12, output_dim=width, hidden_dim=48, depth=1,
                                                    dim_head=16, heads=3, num_queries=8, timestep_in_dim=16)
    return _perturb(model, 82)


def _sd3_ip_inputs(seed):
    """9 text tokens, an image embedding of 5 tokens (the transformer pops it from the dict it is given: call
    with a copy, ``_run_popping``)."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 8, 8, generator=gen),
                encoder_hidden_states=torch.randn(2, 9, 32, generator=gen),
                pooled_projections=torch.randn(2, 24, generator=gen), timestep=torch.tensor([0.3, 0.8]),
                joint_attention_kwargs={"ip_adapter_image_embeds": torch.randn(2, 5, 12, generator=gen)})


def _flux_ip_inputs(seed):
    """``_flux_inputs`` with an image embedding for each of two IP-Adapters, the second's of two images."""
    gen = torch.Generator().manual_seed(seed + 1)
    embeds = [torch.randn(1, 1, 12, generator=gen), torch.randn(1, 2, 12, generator=gen)]
    return dict(_flux_inputs(seed), joint_attention_kwargs={"ip_adapter_image_embeds": embeds})


def _run_popping(inputs):
    """``run`` for ``_compare``: the model on ``inputs`` with a new ``joint_attention_kwargs`` dict each call (the
    IP-Adapter transformers pop the image embeddings from it)."""
    return lambda m: m(**dict(inputs, joint_attention_kwargs=dict(inputs["joint_attention_kwargs"]))).sample


@pytest.mark.parametrize("backend", BACKENDS)
def test_sd3_with_ip_adapter(backend, monkeypatch):
    """SD3's IP-Adapter: the joint call, then the image queries over [image keys; image-prompt keys] with the
    processor's own QK norms, the prompt's keys a second stream of keys only (no queries); outputs the stock
    processors'. Ours keep the stock processors' weights; a scale of 0 (``set_ip_adapter_scale``) skips the
    prompt's attention, as there."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0

    model, run = tiny_sd3_with_ip_adapter(), _run_popping(_sd3_ip_inputs(83))
    calls = _spy(monkeypatch, lambda args, kwargs: kwargs["joint"][0].shape[1] if "joint" in kwargs else None)
    _compare(model, run, backend, {PydiffSD3IPAdapterAttnProcessor})
    # (each module a joint call with the 9 text tokens, but the dual block's image-only attn2, and the image
    # prompt's call with no queries in stream 2)
    modules = sum(isinstance(p, SD3IPAdapterJointAttnProcessor2_0) for p in model.attn_processors.values())
    assert calls.count(0) == modules == 3 and calls.count(9) == modules - 1 and len(calls) == 2 * modules
    ours = copy.deepcopy(model)
    set_attention_backend(ours)
    assert ours.state_dict().keys() == model.state_dict().keys()
    for m in (model, ours):
        for processor in m.attn_processors.values():
            if isinstance(processor, SD3IPAdapterJointAttnProcessor2_0):
                processor.scale = 0.0
    calls.clear()
    with torch.no_grad(), pydiff.use_backend(backend):
        torch.testing.assert_close(run(ours), run(model), rtol=2e-5, atol=2e-5)
    assert 0 not in calls


def tiny_flux_with_ip_adapters():
    """The tiny Flux transformer with two IP-Adapters as ``load_ip_adapter`` sets them up (random weights): an
    image projection each (4 and 2 tokens per image) and ``FluxIPAdapterAttnProcessor`` on the double-stream
    blocks."""
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

    model = tiny_flux()
    width = 20
    model.set_attn_processor({
        name: FluxIPAdapterAttnProcessor(model.inner_dim, width, num_tokens=(4, 2), scale=[0.6, 0.3])
        if name.startswith("transformer_blocks") else processor for name, processor in model.attn_processors.items()})
    model.encoder_hid_proj = MultiIPAdapterImageProjection([
        ImageProjection(cross_attention_dim=width, image_embed_dim=12, num_image_text_embeds=tokens)
        for tokens in (4, 2)])
    return _perturb(model, 84)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flux_with_ip_adapters(backend, monkeypatch):
    """Flux's IP-Adapter (two, the second with two images): the joint call, then each prompt's attention of the
    QK-normed, unrotated image queries, scaled and summed; outputs the stock processors'. Calls it does not take
    (no image prompt) go to the stock processor."""
    model, run = tiny_flux_with_ip_adapters(), _run_popping(_flux_ip_inputs(85))
    calls = _spy(monkeypatch, lambda args, kwargs: (args[1].shape[1], "rope" in kwargs and kwargs["rope"] is not None,
                                                    kwargs.get("q_norm_weight") is not None))
    _compare(model, run, backend, {PydiffFluxIPAdapterAttnProcessor, PydiffFluxAttnProcessor})
    # (the double-stream block: the joint call [6 text; 20 image] with RoPE, then one per prompt over its 4 and
    # 2 x 2 tokens, q normed and not rotated; the single-stream block: its joined 26 tokens)
    assert calls == [(6, True, True), (4, False, True), (4, False, True), (26, True, True)]
    attn = copy.deepcopy(model)
    set_attention_backend(attn)
    attn = attn.transformer_blocks[0].attn
    stock_calls = []
    monkeypatch.setattr(attn.processor, "stock", lambda *args: stock_calls.append(args[-2]))
    attn.processor(attn, torch.randn(1, 20, 32), torch.randn(1, 6, 32))
    assert stock_calls == [None]


def tiny_flux():
    from diffusers import FluxTransformer2DModel

    return _perturb(FluxTransformer2DModel(**_FLUX_CONFIG), 5)


_FLUX_CONFIG = dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=16,
                    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24, guidance_embeds=False,
                    axes_dims_rope=(4, 6, 6))


def _flux_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(5.0), indexing="ij"),
                          -1).reshape(-1, 3)
    txt_ids = torch.zeros(6, 3)
    return dict(hidden_states=torch.randn(1, 20, 8, generator=gen),
                encoder_hidden_states=torch.randn(1, 6, 32, generator=gen),
                pooled_projections=torch.randn(1, 24, generator=gen), timestep=torch.tensor([0.7]),
                img_ids=img_ids, txt_ids=txt_ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flux_transformer(backend):
    model = tiny_flux()
    inputs = _flux_inputs(6)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffFluxAttnProcessor})


def test_flux_fused_projections_and_attention_mask_match_stock(monkeypatch):
    model = tiny_flux()
    block = model.transformer_blocks[0]
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(1, 20, 32, generator=gen)
    context = torch.randn(1, 6, 32, generator=gen)
    rope = model.pos_embed(torch.cat([torch.zeros(6, 3), torch.randn(20, 3, generator=gen).round()], 0))
    mask = torch.ones(1, 1, 26, 26, dtype=torch.bool)
    mask[..., 3:6] = False
    # a per-query mask (Chroma's) and key masks, bool or float, into the kernel
    key_masks = [mask[:, :, :1], torch.randn(1, 2, 1, 26, generator=gen)]
    calls = _masked_calls(monkeypatch)
    _block_matches_stock(PydiffFluxAttnProcessor(), block.attn, (hidden, context), rope, [None, mask, *key_masks])
    assert calls == [None, "rows", "keys", "keys"]
    fused = copy.deepcopy(block.attn)
    fused.fuse_projections()
    assert fused.fused_projections
    _block_matches_stock(PydiffFluxAttnProcessor(), fused, (hidden, context), rope, [None], stock=block.attn)


def tiny_chroma():
    from diffusers import ChromaTransformer2DModel

    return _perturb(ChromaTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6), approximator_num_channels=8, approximator_hidden_dim=32,
        approximator_layers=1), 23)


def _chroma_inputs(seed):
    """Chroma inputs: Flux's 4 x 5 image and 6 text tokens for two prompts, the second padded after 3 tokens, and
    the token mask [text; image] as ChromaPipeline builds it."""
    gen = torch.Generator().manual_seed(seed)
    inputs = _flux_inputs(seed)
    inputs.pop("pooled_projections")
    inputs.update(hidden_states=torch.randn(2, 20, 8, generator=gen), timestep=torch.tensor([0.7, 0.2]),
                  encoder_hidden_states=torch.randn(2, 6, 32, generator=gen))
    text = torch.ones(2, 6, dtype=torch.bool)
    text[1, 3:] = False
    inputs["attention_mask"] = torch.cat([text, torch.ones(2, 20, dtype=torch.bool)], dim=1)
    return inputs


@pytest.mark.parametrize("backend", BACKENDS)
def test_chroma_transformer(backend, monkeypatch):
    """Chroma: Flux's blocks under the outer product of its token mask ([text; image], the second prompt's text
    padded after 3 tokens; ChromaPipeline's layout), a mask per query: every block's call fused and masked, the
    padded tokens' queries (which see no key) zeros as in the stock processors."""
    model = tiny_chroma()
    inputs = _chroma_inputs(24)
    calls = _masked_calls(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffFluxAttnProcessor})
    assert calls == ["rows"] * (len(model.transformer_blocks) + len(model.single_transformer_blocks))


def tiny_wan(image_to_video: bool):
    """Wan 2.1 from a small config: text-to-video, or image-to-video (its cross-attention's added image keys)."""
    from diffusers import WanTransformer3DModel

    return _perturb(WanTransformer3DModel(**_WAN_CONFIG, image_dim=24 if image_to_video else None,
                                          added_kv_proj_dim=24 if image_to_video else None), 26)


_WAN_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                   text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)


def _wan_inputs(seed, image_to_video: bool):
    """Wan inputs: 3 frames of 8 x 6 latents; image-to-video has the text encoder's 512 tokens (the stock processor
    splits the image context off before them) and 5 image-encoder tokens."""
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(hidden_states=torch.randn(2, 4, 3, 8, 6, generator=gen), timestep=torch.tensor([3, 700]),
                  encoder_hidden_states=torch.randn(2, 512 if image_to_video else 9, 32, generator=gen))
    if image_to_video:
        inputs["encoder_hidden_states_image"] = torch.randn(2, 5, 24, generator=gen)
    return inputs


@pytest.mark.parametrize("image_to_video", [False, True], ids=["t2v", "i2v"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_wan_transformer(backend, image_to_video, monkeypatch):
    """Wan: self-attention with its RoPE in the kernel's prologue (its across-heads QK norms as modules), and
    cross-attention; image-to-video sums the text's and the image context's attentions in one call (the negative
    stream at scale -1). Every call fused, the outputs the stock processors'."""
    model = tiny_wan(image_to_video)
    inputs = _wan_inputs(27, image_to_video)
    calls = []

    def spy(*args, **kwargs):
        calls.append((kwargs["rope"] is not None, kwargs["negative"] is not None, kwargs["negative_scale"]))
        return pydiff.attention(*args, **kwargs)

    monkeypatch.setattr(attention_processors, "attention", spy)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffWanAttnProcessor})
    assert calls == [(True, False, -1.0), (False, image_to_video, -1.0)] * len(model.blocks)


def test_wan_fused_projections_masks_and_fallbacks(monkeypatch):
    """Wan with fused projections (``fuse_qkv_projections``: q, k, v views of one matmul) equals the unfused stock
    model; on one self-attention module, masks per key and per query go into the kernel, and RoPE tables the kernel
    does not read (not (1, N, 1, D)) go to the stock processor; outputs equal the stock processor's."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    model, inputs = tiny_wan(True), _wan_inputs(28, True)
    fused = copy.deepcopy(model)
    fused.fuse_qkv_projections()
    assert set_attention_backend(fused) == 2 * len(model.blocks)
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs).sample, model(**inputs).sample, rtol=1e-5, atol=1e-5)
    attn, gen = model.blocks[0].attn1, torch.Generator().manual_seed(29)
    hidden = torch.randn(2, 12, 24, generator=gen)
    # (Wan's tables: one angle per pair of channels, repeated for both, (1, N, 1, D))
    cos, sin = (torch.rand(1, 12, 1, 6, generator=gen).repeat_interleave(2, -1) for _ in range(2))
    rows = torch.rand(2, 1, 12, 12, generator=gen) > 0.3
    rows[..., 0] = True
    calls = _masked_calls(monkeypatch)
    with torch.no_grad():
        for mask, rope in ((None, (cos, sin)), (torch.randn(2, 1, 1, 12, generator=gen), (cos, sin)),
                           (rows, (cos, sin)), (None, (cos[0], sin[0]))):
            got = PydiffWanAttnProcessor()(attn, hidden, None, mask, rope)
            want = WanAttnProcessor()(attn, hidden, None, mask, rope)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert calls == [None, "keys", "rows"]  # (the 3-D tables went to the stock processor)


def tiny_cogvideox():
    from diffusers import CogVideoXTransformer3DModel

    return _perturb(CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=24, num_layers=2, sample_width=8, sample_height=6, sample_frames=9, patch_size=2,
        max_text_seq_length=7, use_rotary_positional_embeddings=True), 31)


def _cogvideox_inputs(seed):
    """CogVideoX inputs: 3 latent frames of 6 x 8 (3 x 4 patches each), 7 text tokens, and the 3-D RoPE tables its
    pipeline builds (``get_3d_rotary_pos_embed``)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    gen = torch.Generator().manual_seed(seed)
    tables = get_3d_rotary_pos_embed(16, ((0, 0), (3, 4)), (3, 4), 3, device="cpu")
    return dict(hidden_states=torch.randn(2, 3, 4, 6, 8, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), timestep=torch.tensor([3, 700]),
                image_rotary_emb=tables)


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused-projections"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cogvideox_transformer(backend, fused):
    """CogVideoX: [text; video] attention as a joint call of the two streams (no concatenation of the hidden
    states, no split of the output), its per-head LayerNorms as modules, the RoPE on the video tokens only in the
    kernel's prologue; also on fused projections (``FusedCogVideoXAttnProcessor2_0``). Outputs the stock ones."""
    model = tiny_cogvideox()
    if fused:
        model.fuse_qkv_projections()
    inputs = _cogvideox_inputs(32)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffCogVideoXAttnProcessor})


def tiny_ltx_video():
    from diffusers import LTXVideoTransformer3DModel

    return _perturb(LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        num_layers=2, caption_channels=24), 33)


def _ltx_video_inputs(seed):
    """LTX-Video inputs: 3 frames of 4 x 5 latent tokens, 7 text tokens, the second prompt padded after 4 (the
    transformer makes the mask additive); its RoPE tables (B, N, 32) carry 2 identity columns (32 % 6)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    return dict(hidden_states=torch.randn(2, 60, 8, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), timestep=torch.tensor([3, 700]),
                encoder_attention_mask=mask, num_frames=3, height=4, width=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ltx_video_transformer(backend, monkeypatch):
    """LTX-Video: self-attention with its RoPE tables, one per batch row over every head's channels, read as
    per-head tables by the kernel's prologue (its across-heads QK norms as modules), and cross-attention with the
    text padding as the key mask. Every call fused, the outputs the stock processors'."""
    model = tiny_ltx_video()
    inputs = _ltx_video_inputs(34)
    calls = []

    def spy(*args, **kwargs):
        rope, mask = kwargs["rope"], kwargs["attn_mask"]
        calls.append((None if rope is None else tuple(rope[0].shape), mask is not None))
        return pydiff.attention(*args, **kwargs)

    monkeypatch.setattr(attention_processors, "attention", spy)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffLTXVideoAttnProcessor})
    assert calls == [((2, 60, 2, 16), False), (None, True)] * len(model.transformer_blocks)


def _joined_masks(monkeypatch, heads=False):
    """Records, for every ``pydiff.attention`` call the processors make: its RoPE tables' shape (None: none), and
    its mask's shape and dtype (None: none); with ``heads``, then its query and key head counts."""
    def record(args, kwargs):
        rope, mask = kwargs.get("rope"), kwargs.get("attn_mask")
        entry = (None if rope is None else tuple(rope[0].shape),
                 None if mask is None else (tuple(mask.shape), mask.dtype))
        return entry + (args[0].shape[2], args[1].shape[2]) if heads else entry

    return _spy(monkeypatch, record)


needs_z_image = _needs("ZSingleStreamAttnProcessor", "Z-Image", "0.36")


def tiny_z_image():
    from diffusers import ZImageTransformer2DModel

    return _perturb(ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=64, n_layers=2, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, cap_feat_dim=24, axes_dims=[8, 12, 12], axes_lens=[128, 32, 32]), 35)


def _z_image_inputs(seed):
    """Z-Image inputs: two images of 16 x 10 and 6 x 6 latents (40 and 9 patches) with 37 and 4 caption tokens; the
    model pads each sample's tokens to a multiple of 32, so the samples' lengths differ (the key mask) and the RoPE
    tables are per sample."""
    gen = torch.Generator().manual_seed(seed)
    return ([torch.randn(4, 1, 16, 10, generator=gen), torch.randn(4, 1, 6, 6, generator=gen)],
            torch.tensor([0.3, 0.7]), [torch.randn(37, 24, generator=gen), torch.randn(4, 24, generator=gen)])


def _z_image_run(inputs):
    """Runs a Z-Image model: its output, a list of per-sample tensors, as one flat tensor."""
    return lambda m: torch.cat([x.flatten() for x in m(*inputs).sample])


@needs_z_image
@pytest.mark.parametrize("backend", BACKENDS)
def test_z_image_transformer(backend, monkeypatch):
    """Z-Image: the QK RMSNorms and the complex RoPE (one table per sample, its parts read in place as
    (B, N, 1, D/2)) in the kernel's prologue, each sample's token padding as the key mask; outputs the stock
    processors'."""
    model, inputs = tiny_z_image(), _z_image_inputs(36)
    calls = _joined_masks(monkeypatch)
    _compare(model, _z_image_run(inputs), backend, {PydiffZImageAttnProcessor})
    # (the caption and image refiners over 64 and 128 padded tokens, then the 2 main blocks over the 128 joined;
    # the tables: the complex table's parts, one angle per pair of the 32 channels)
    assert calls == [((2, 64, 1, 16), ((2, 1, 1, 64), torch.bool))] * 2 + \
        [((2, 128, 1, 16), ((2, 1, 1, 128), torch.bool))] * 2


@needs_z_image
@pytest.mark.parametrize("backend", BACKENDS)
def test_z_image_controlnet(backend):
    """The Z-Image ControlNet (its control blocks' processor a copy of Z-Image's, its refiners the transformer's):
    every processor becomes ours, and the control hints are the stock processors'."""
    controlnets = pytest.importorskip("diffusers.models.controlnets.controlnet_z_image")
    if getattr(controlnets, "ZSingleStreamAttnProcessor", None) is None:
        pytest.skip(f"diffusers {diffusers.__version__} has no Z-Image ControlNet")
    transformer, (latents, t, captions) = tiny_z_image(), _z_image_inputs(37)
    controlnet = _perturb(controlnets.ZImageControlNetModel(
        control_layers_places=[0, 1], control_refiner_layers_places=[0], control_in_dim=4, all_patch_size=(2,),
        all_f_patch_size=(1,), dim=64, n_refiner_layers=1, n_heads=2, n_kv_heads=2), 38)
    controlnet = controlnets.ZImageControlNetModel.from_transformer(controlnet, transformer)
    control = [torch.randn(x.shape, generator=torch.Generator().manual_seed(39)) for x in latents]
    assert _processor_types(controlnet) == {controlnets.ZSingleStreamAttnProcessor,
                                            attention_processors.ZSingleStreamAttnProcessor}
    _compare(controlnet, lambda m: tuple(m(latents, t, captions, control).values()), backend,
             {PydiffZImageAttnProcessor})


def tiny_lumina2():
    from diffusers import Lumina2Transformer2DModel

    return _perturb(Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=64, num_layers=2, num_refiner_layers=1,
        num_attention_heads=4, num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(64, 32, 32),
        cap_feat_dim=24), 37)


def _lumina2_inputs(seed):
    """Lumina 2 inputs: 8 x 6 latents (12 patches), 7 caption tokens, the second prompt padded after 4."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    return (torch.randn(2, 4, 8, 6, generator=gen), torch.tensor([0.3, 0.7]), torch.randn(2, 7, 24, generator=gen),
            mask)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lumina2_transformer(backend, monkeypatch):
    """Lumina 2: grouped-query attention (4 query heads, 2 key/value heads) read without repeating k and v, the QK
    RMSNorms and complex RoPE in the prologue, the caption padding as the key mask; the proportional-attention
    scale on one module. Outputs the stock processors'."""
    model, inputs = tiny_lumina2(), _lumina2_inputs(38)
    calls = _joined_masks(monkeypatch)
    _compare(model, lambda m: m(*inputs).sample, backend, {PydiffLumina2AttnProcessor})
    # (the caption refiner (masked), the image refiner (no padding), then the 2 blocks over the joined 19 tokens)
    assert calls == [((2, 7, 1, 8), ((2, 1, 1, 7), torch.bool)), ((2, 12, 1, 8), None)] + \
        [((2, 19, 1, 8), ((2, 1, 1, 19), torch.bool))] * 2
    attn, gen = model.layers[0].attn, torch.Generator().manual_seed(39)
    hidden = torch.randn(2, 19, 64, generator=gen)
    freqs = torch.polar(torch.ones(2, 19, 8), torch.rand(2, 19, 8, generator=gen) * 6)
    mask = torch.rand(2, 19, generator=gen) > 0.3
    mask[:, 0] = True
    from diffusers.models.transformers.transformer_lumina2 import Lumina2AttnProcessor2_0

    with torch.no_grad(), pydiff.use_backend(backend):
        for base in (None, 16):
            got = PydiffLumina2AttnProcessor()(attn, hidden, hidden, mask.long(), freqs, base)
            want = Lumina2AttnProcessor2_0()(attn, hidden, hidden, mask.long(), freqs, base)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def tiny_cogview4():
    from diffusers import CogView4Transformer2DModel

    return _perturb(CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        text_embed_dim=24, time_embed_dim=8, condition_dim=4, pos_embed_max_size=16, sample_size=8,
        rope_axes_dim=(8, 8)), 40)


def _cogview4_inputs(seed, text_mask=False):
    """CogView4 inputs: 8 x 6 latents (12 patches), 7 text tokens; with ``text_mask``, the second prompt's last 3
    tokens marked as padding ((B, N_text), as the stock processor takes it)."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([[64.0, 48.0], [64.0, 48.0]])
    inputs = dict(hidden_states=torch.randn(2, 4, 8, 6, generator=gen),
                  encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), timestep=torch.tensor([3, 700]),
                  original_size=size, target_size=size, crop_coords=torch.zeros(2, 2))
    if text_mask:
        inputs["attention_mask"] = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    return inputs


needs_glm_image = _needs("GlmImageAttnProcessor", "GLM-Image", "0.37")


def tiny_glm_image():
    from diffusers.models.transformers.transformer_glm_image import GlmImageTransformer2DModel

    return _perturb(GlmImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        text_embed_dim=24, time_embed_dim=8, condition_dim=4, prior_vq_quantizer_codebook_size=32), 41)


def _glm_image_inputs(seed, batch=2, height=8, text_mask=False):
    """GLM-Image inputs: height x 6 latents (height / 2 x 3 patches), 7 text tokens, prior tokens (some dropped);
    with ``text_mask``, the last sample's last 3 text tokens marked as padding ((B, N_text))."""
    gen = torch.Generator().manual_seed(seed)
    patches = height // 2 * 3
    inputs = dict(hidden_states=torch.randn(batch, 4, height, 6, generator=gen),
                  encoder_hidden_states=torch.randn(batch, 7, 24, generator=gen),
                  prior_token_id=torch.randint(0, 32, (batch, patches), generator=gen),
                  prior_token_drop=torch.rand(batch, patches, generator=gen) < 0.3,
                  timestep=torch.tensor([3, 700][:batch]), target_size=torch.tensor([[64.0, 48.0]] * batch),
                  crop_coords=torch.zeros(batch, 2))
    if text_mask:
        inputs["attention_mask"] = torch.tensor([[1] * 7] * (batch - 1) + [[1] * 4 + [0] * 3])
    return inputs


@needs_glm_image
@pytest.mark.parametrize("text_mask", [False, True], ids=["no-mask", "text-mask"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_glm_image_transformer(backend, text_mask, monkeypatch):
    """GLM-Image, text to image: CogView4's joint call (its text mask read per query, as CogView4's)."""
    inputs = _glm_image_inputs(90, text_mask=text_mask)
    calls = _masked_calls(monkeypatch)
    _compare(tiny_glm_image(), lambda m: m(**inputs).sample, backend, {PydiffGlmImageAttnProcessor})
    assert calls == ["rows" if text_mask else None] * 2


def _glm_cache_run(samples: int, move=_same):
    """``run`` for GLM-Image's image editing: a condition image of 2 x 3 patches per sample (``samples`` of them)
    written to the KV cache, then a step of the batch reading it; the inputs through ``move``."""
    from diffusers.models.transformers.transformer_glm_image import GlmImageKVCache

    def run(m):
        caches = GlmImageKVCache(len(m.transformer_blocks))
        caches.set_mode("write")
        for sample in range(samples):
            m(**move(_glm_image_inputs(91 + sample, batch=1, height=4)), kv_caches=caches)
            caches.next_sample()
        caches.set_mode("read")
        return m(**move(_glm_image_inputs(93)), kv_caches=caches).sample

    return run


@needs_glm_image
@pytest.mark.parametrize("samples", [1, 2], ids=["shared-cache", "per-sample-caches"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_glm_image_kv_cache(backend, samples, monkeypatch):
    """GLM-Image, image editing: the condition images' keys and values cached in write mode (by the stock
    processor), then read beside each step's: ours a second stream of keys only, the shared cache an expanded view
    (not copied), one cache per sample joined by the cache; the same outputs as the stock processors'."""
    run = _glm_cache_run(samples)

    def record(args, kwargs):
        k_cached = kwargs["joint"][1] if "joint" in kwargs else None
        return None if k_cached is None else (*k_cached.shape[:2], k_cached.stride(0) == 0)

    calls = _spy(monkeypatch, record)
    _compare(tiny_glm_image(), run, backend, {PydiffGlmImageAttnProcessor})
    # (the read step's calls: 13 cached keys (7 text, 6 image) for each of the 2 samples, the shared cache's a view)
    assert calls == [(2, 13, samples == 1)] * 2


@pytest.mark.parametrize("text_mask", [False, True], ids=["no-mask", "text-mask"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cogview4_transformer(backend, text_mask, monkeypatch):
    """CogView4: [text; image] as a joint call (no concatenation, no split), its LayerNorms as modules, the
    half-split RoPE on the image tokens only in the prologue; its text mask as the stock processor builds it (a
    float mask per query of the joined tokens) read by the kernel. Outputs the stock processors'."""
    model, inputs = tiny_cogview4(), _cogview4_inputs(41, text_mask)
    calls = _joined_masks(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffCogView4AttnProcessor})
    mask = ((2, 1, 19, 19), torch.float16) if text_mask else None
    assert calls == [((19, 16), mask)] * 2


needs_flux3 = _needs("Flux3AttnProcessor", "FLUX.3", "0.42")


def tiny_flux3():
    from diffusers.models.transformers.transformer_flux3 import Flux3Transformer2DModel

    return _perturb(Flux3Transformer2DModel(
        in_channels=8, cond_in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=24, timestep_channels=32, axes_dims_rope=(4, 4, 4, 4)), 50)


def _flux3_inputs(seed):
    """FLUX.3 inputs: 4 x 3 image tokens and 5 text tokens, 4-axis positions."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 12, 8, generator=gen),
                encoder_hidden_states=torch.randn(2, 5, 24, generator=gen), timestep=torch.tensor([0.3, 0.7]),
                **_four_axis_ids(4, 3, 5))


@needs_flux3
@pytest.mark.parametrize("backend", BACKENDS)
def test_flux3_transformer(backend, monkeypatch):
    """FLUX.3: each mode's self-attention (text, image) and the joined [text; image] tokens', the QK RMSNorms and the
    interleaved RoPE in the prologue; outputs the stock processors'. Fused projections and masks (key and per
    query) on one module too."""
    model, inputs = tiny_flux3(), _flux3_inputs(57)
    calls = _joined_masks(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffFlux3AttnProcessor})
    assert calls == [((5, 16), None), ((12, 16), None), ((17, 16), None)]
    attn, gen = model.single_transformer_blocks[0].attn, torch.Generator().manual_seed(58)
    hidden = torch.randn(2, 17, 32, generator=gen)
    rope = model.pos_embed(torch.randn(17, 4, generator=gen).round())
    per_query = torch.rand(2, 1, 17, 17, generator=gen) > 0.3
    per_query[..., 0] = True
    masks = [None, torch.randn(2, 1, 1, 17, generator=gen), per_query]
    with pydiff.use_backend(backend):
        _block_matches_stock(PydiffFlux3AttnProcessor(), attn, (hidden,), rope, masks)
        fused = copy.deepcopy(attn)
        fused.fuse_projections()
        assert fused.fused_projections
        _block_matches_stock(PydiffFlux3AttnProcessor(), fused, (hidden,), rope, [None], stock=attn)


needs_krea2 = _needs("Krea2AttnProcessor", "Krea 2", "0.39")


def tiny_krea2():
    from diffusers.models.transformers.transformer_krea2 import Krea2Transformer2DModel

    return _perturb(Krea2Transformer2DModel(
        in_channels=8, num_layers=2, attention_head_dim=16, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, timestep_embed_dim=32, text_hidden_dim=24, num_text_layers=2, text_num_attention_heads=2,
        text_num_key_value_heads=2, text_intermediate_size=32, num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
        axes_dims_rope=(4, 6, 6)), 51)


def _krea2_inputs(seed):
    """Krea 2 inputs: 4 x 3 image tokens, 7 text tokens (two text-encoder layers), the second prompt padded after 4;
    positions (t, h, w) of the joined [text; image] tokens."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    positions = torch.zeros(19, 3, dtype=torch.long)
    positions[7:, 1], positions[7:, 2] = torch.arange(4).repeat_interleave(3), torch.arange(3).repeat(4)
    return dict(hidden_states=torch.randn(2, 12, 8, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, 2, 24, generator=gen), timestep=torch.tensor([0.3, 0.7]),
                position_ids=positions, encoder_attention_mask=mask)


@needs_krea2
@pytest.mark.parametrize("backend", BACKENDS)
def test_krea2_transformer(backend, monkeypatch):
    """Krea 2: grouped-query heads (4 query, 2 key/value) read without repeating k and v, its zero-centred QK
    RMSNorms (1 + weight) and the RoPE in the prologue, the text padding as the key mask, its sigmoid gate after;
    outputs the stock processors'."""
    model, inputs = tiny_krea2(), _krea2_inputs(59)
    calls = _joined_masks(monkeypatch, heads=True)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffKrea2AttnProcessor})
    text_mask, joined_mask = ((2, 1, 1, 7), torch.bool), ((2, 1, 1, 19), torch.bool)
    # (the text fusion's blocks (2 heads, no RoPE): across each token's 2 encoder layers, then across the tokens;
    # then the 2 blocks over the joined tokens)
    assert calls == [(None, None, 2, 2), (None, text_mask, 2, 2)] + [((19, 16), joined_mask, 4, 2)] * 2
    norm = model.transformer_blocks[0].attn.norm_q
    assert attention_processors._rms_norm_params(norm, 16, CPU) is not None
    assert attention_processors._rms_norm_params(norm, 8, CPU) is None


needs_ideogram4 = _needs("Ideogram4AttnProcessor", "Ideogram 4", "0.39")


def tiny_ideogram4():
    from diffusers.models.transformers.transformer_ideogram4 import Ideogram4Transformer2DModel

    return _perturb(Ideogram4Transformer2DModel(
        in_channels=8, num_layers=2, attention_head_dim=16, num_attention_heads=2, intermediate_size=48, adaln_dim=16,
        llm_features_dim=24, rope_theta=10000, mrope_section=(4, 2, 2)), 52)


def _ideogram4_inputs(seed):
    """Ideogram 4 inputs: packed sequences (the first row two samples of 10 and 9 tokens, the second one of 19), each
    sample's first 3 tokens text."""
    from diffusers.models.transformers import transformer_ideogram4 as ideogram4

    gen = torch.Generator().manual_seed(seed)
    indicator = torch.full((2, 19), ideogram4.OUTPUT_IMAGE_INDICATOR)
    indicator[:, :3] = indicator[0, 10:13] = ideogram4.LLM_TOKEN_INDICATOR
    return dict(hidden_states=torch.randn(2, 19, 8, generator=gen), timestep=torch.tensor([0.3, 0.7]),
                encoder_hidden_states=torch.randn(2, 19, 24, generator=gen),
                position_ids=torch.randint(0, 8, (2, 19, 3), generator=gen),
                segment_ids=torch.tensor([[0] * 10 + [1] * 9, [0] * 19]), indicator=indicator)


@needs_ideogram4
@pytest.mark.parametrize("backend", BACKENDS)
def test_ideogram4_transformer(backend, monkeypatch):
    """Ideogram 4: packed samples' block-diagonal mask read per query, its QK RMSNorms and multi-axis RoPE
    (half-split tables per batch row) in the prologue; outputs the stock processors'."""
    model, inputs = tiny_ideogram4(), _ideogram4_inputs(60)
    calls = _joined_masks(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffIdeogram4AttnProcessor})
    assert calls == [((2, 19, 1, 16), ((2, 1, 19, 19), torch.bool))] * 2


needs_bria_fibo2 = _needs("BriaFibo2AttnProcessor", "Bria FIBO 2", "0.42")


def tiny_bria_fibo2():
    from diffusers.models.transformers.transformer_bria_fibo2 import BriaFibo2Transformer2DModel

    return _perturb(BriaFibo2Transformer2DModel(
        in_channels=4, patch_size=2, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, cap_feat_dim=24,
        injection_layer_ids=(1,), perceiver_num_layers=1, min_num_gist_tokens=4, max_num_gist_tokens=8, gist_step=4,
        gist_min_text_len=4, gist_max_text_len=12, axes_dims=(4, 6, 6), axes_lens=(64, 32, 32)), 53)


def _bria_fibo2_inputs(seed):
    """Bria FIBO 2 inputs: 8 x 6 latents (12 patches), 12 text tokens (two encoder bundles), the second prompt padded
    after 3 (so it gets fewer gist tokens: the gist padding, a key mask)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 3:] = False
    return dict(hidden_states=torch.randn(2, 4, 8, 6, generator=gen), timestep=torch.tensor([0.3, 0.7]),
                encoder_hidden_states=torch.randn(2, 2, 12, 24, generator=gen), encoder_attention_mask=mask)


@needs_bria_fibo2
@pytest.mark.parametrize("backend", BACKENDS)
def test_bria_fibo2_transformer(backend, monkeypatch):
    """Bria FIBO 2: self-attention with its QK RMSNorms and complex RoPE (its parts read in place) in the prologue,
    the prompts' gist padding as the key mask, and cross-attention to the text with its padding; outputs the stock
    processors'."""
    model, inputs = tiny_bria_fibo2(), _bria_fibo2_inputs(61)
    calls = _joined_masks(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffBriaFibo2AttnProcessor})
    masks = {mask for _, mask in calls}
    assert ((2, 1, 1, 12), torch.bool) in masks and any(m is not None and m[0][-1] > 12 for m in masks)
    assert any(rope is not None and len(rope) == 4 and rope[2] == 1 for rope, _ in calls)


def tiny_cosmos(image_context: bool):
    from diffusers.models.transformers.transformer_cosmos import CosmosTransformer3DModel

    return _perturb(CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, text_embed_dim=24,
        adaln_lora_dim=8, max_size=(4, 16, 16), patch_size=(1, 2, 2), extra_pos_embed_type=None,
        concat_padding_mask=False, **(dict(img_context_dim_in=20, img_context_num_tokens=5, img_context_dim_out=24)
                                      if image_context else {})), 54)


def _cosmos_inputs(seed, image_context: bool):
    """Cosmos inputs: 3 frames of 8 x 6 latents (36 patches), 7 text tokens, the second prompt padded after 4 (with an
    image context of 5 tokens: no mask, as the Predict 2.5 pipeline passes none)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    text = torch.randn(2, 7, 24, generator=gen)
    return dict(hidden_states=torch.randn(2, 4, 3, 8, 6, generator=gen), timestep=torch.tensor([0.3, 0.7]),
                encoder_hidden_states=(text, torch.randn(2, 5, 20, generator=gen)) if image_context else text,
                attention_mask=None if image_context else mask, fps=24)


@pytest.mark.parametrize("image_context", [False, True], ids=["predict2", "predict2.5-image-context"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cosmos_transformer(backend, image_context, monkeypatch):
    """Cosmos Predict 2 (and 2.5 with an image context, diffusers 0.37+): self-attention with the QK RMSNorms and
    the half-split RoPE in the prologue, cross-attention to the text with its padding as the key mask (2.5: the
    image context's attention, queries of its own, summed); outputs the stock processors'."""
    if image_context and attention_processors.CosmosAttnProcessor2_5 is None:
        pytest.skip(f"diffusers {diffusers.__version__} predates Cosmos 2.5's processor (0.37)")
    model, inputs = tiny_cosmos(image_context), _cosmos_inputs(62, image_context)
    calls = _joined_masks(monkeypatch)
    expect = {PydiffCosmosAttnProcessor} | ({PydiffCosmos25AttnProcessor} if image_context else set())
    _compare(model, lambda m: m(**inputs).sample, backend, expect)
    cross = [(None, None), (None, None)] if image_context else [(None, ((2, 1, 1, 7), torch.bool))]
    assert calls == ([((36, 12), None)] + cross) * 2
    if image_context:  # (the 2.5 processor's masks, a pair (text, image), which the pipeline leaves out)
        from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_5

        attn, gen = model.transformer_blocks[0].attn2, torch.Generator().manual_seed(63)
        hidden, text, image = (torch.randn(2, n, 24, generator=gen) for n in (36, 7, 5))
        masks = (torch.rand(2, 1, 1, 7, generator=gen) > 0.3, torch.randn(2, 1, 1, 5, generator=gen))
        masks[0][..., 0] = True
        with torch.no_grad(), pydiff.use_backend(backend):
            got = PydiffCosmos25AttnProcessor()(attn, hidden, (text, image), masks)
            want = CosmosAttnProcessor2_5()(attn, hidden, (text, image), masks)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


needs_kandinsky5 = _needs("Kandinsky5AttnProcessor", "Kandinsky 5", "0.36")


def tiny_kandinsky5():
    from diffusers.models.transformers.transformer_kandinsky import Kandinsky5Transformer3DModel

    return _perturb(Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=24, in_text_dim2=16, time_dim=32, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=48, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6)), 70)


def _kandinsky5_inputs(seed):
    """Kandinsky 5 inputs: 3 frames of 8 x 6 latents (36 patches, channels last), 7 text tokens."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 3, 8, 6, 4, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), timestep=torch.tensor([300.0, 700.0]),
                pooled_projections=torch.randn(2, 16, generator=gen),
                visual_rope_pos=(torch.arange(3), torch.arange(4), torch.arange(3)), text_rope_pos=torch.arange(7))


needs_kandinsky6 = _needs("Kandinsky6AttnProcessor", "Kandinsky 6", "0.42")


def tiny_kandinsky6():
    """The tiny Kandinsky 6 with its audio branch and RoPE in cross-attention (``ca_rope``)."""
    from diffusers.models.transformers.transformer_kandinsky6 import Kandinsky6Transformer3DModel

    return _perturb(Kandinsky6Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=24, in_text_dim2=16, time_dim=32, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=48, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6), in_audio_dim=4,
        out_audio_dim=4, model_dim_a=32, time_dim_a=32, ff_dim_a=48, axes_dims_a=(16,), visual_cond=False,
        ca_rope=True), 113)


def _kandinsky6_inputs(seed):
    """Kandinsky 6 inputs: 3 frames of 8 x 6 latents (36 patches, channels last), 5 audio latents, 7 text tokens
    (the second prompt's last 3 padding)."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 3, 8, 6, 4, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen),
                pooled_projections=torch.randn(2, 16, generator=gen), timestep=torch.tensor([300.0, 700.0]),
                audio_hidden_states=torch.randn(2, 5, 4, generator=gen), encoder_attention_mask=_TEXT_PADDING.bool())


@needs_kandinsky6
@pytest.mark.parametrize("backend", BACKENDS)
def test_kandinsky6_transformer(backend, monkeypatch):
    """Kandinsky 6: text, video and audio self-attention (one table), their text cross-attention (the padding as
    key mask) and the video-audio cross-attention both ways, whose queries and keys turn by tables of their own
    (``key_rope``); video and audio outputs the stock processors'."""
    def record(args, kwargs):
        return kwargs.get("rope") is not None, kwargs.get("key_rope") is not None, kwargs.get("attn_mask") is not None

    calls = _spy(monkeypatch, record)
    inputs = _kandinsky6_inputs(114)
    _compare(tiny_kandinsky6(), _video_and_audio(inputs), backend, {PydiffKandinsky6AttnProcessor})
    # (the two text branches; per visual block: video self, video-text, audio self, audio-text, video-audio both ways)
    assert calls == [(True, False, True)] * 2 + [(True, False, False), (False, False, True), (True, False, False),
                                                 (False, False, True), (True, True, False), (True, True, False)] * 2


def _kandinsky5_in_model_dtype(monkeypatch):
    """Kandinsky 5's stock processor rounds the rotated q and k to bfloat16 in any model dtype: made float32 here (its
    module's ``torch.bfloat16``, used there only), then its ``type_as`` rounds them to the model's dtype as ours
    does, so the outputs compare in float32."""
    from diffusers.models.transformers import transformer_kandinsky

    class Torch:
        bfloat16 = torch.float32

        def __getattr__(self, name):
            return getattr(torch, name)

    monkeypatch.setattr(transformer_kandinsky, "torch", Torch())


@needs_kandinsky5
@pytest.mark.parametrize("backend", BACKENDS)
def test_kandinsky5_transformer(backend, monkeypatch):
    """Kandinsky 5: the text and video self-attention with the QK RMSNorms (float32's eps) and the rotation-matrix
    RoPE (1-D for the text, 3-D for the video; the matrices' entries read in place) in the prologue, the
    cross-attention to the text; outputs the stock processors' (without their bfloat16 rounding of q and k: within
    bfloat16's error of them with it)."""
    model, inputs = tiny_kandinsky5(), _kandinsky5_inputs(71)
    with torch.no_grad():
        rounded = model(**inputs).sample
    _kandinsky5_in_model_dtype(monkeypatch)
    calls = _joined_masks(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffKandinsky5AttnProcessor})
    assert calls == [((1, 7, 1, 8), None)] + [((2, 36, 1, 8), None), (None, None)] * 2
    with torch.no_grad(), pydiff.use_backend(backend):
        switched = copy.deepcopy(model)
        set_attention_backend(switched)
        ours = switched(**inputs).sample
    assert ((ours - rounded).norm() / rounded.norm()).item() < 1e-3


def _flex_as_compiled(monkeypatch, module):
    """``module``'s flex attention calls as compiled flex attention computes them, over the BlockMask's blocks only
    (eagerly flex attention attends to every key): SDPA under the blocks spelled out per query and key, for the
    stock side of a comparison."""
    def dispatch(query, key, value, attn_mask=None, **kwargs):
        if attn_mask is not None:
            attn_mask = _block_keep(attn_mask.to_dense().bool(), attn_mask.BLOCK_SIZE, query.shape[1], key.shape[1])
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (query, key, value)), attn_mask=attn_mask)
        return out.transpose(1, 2)

    monkeypatch.setattr(module, "dispatch_attention_fn", dispatch)


def _block_densities(monkeypatch):
    """For every ``pydiff.attention`` call the processors make, the share of blocks its block mask attends (None
    without one)."""
    def record(args, kwargs):
        mask = kwargs.get("block_mask")
        return None if mask is None else mask.to_dense().float().mean().item()

    return _spy(monkeypatch, record)


@needs_kandinsky5
@pytest.mark.parametrize("backend", BACKENDS)
def test_kandinsky5_nabla(backend, monkeypatch):
    """Kandinsky 5's NABLA sparse attention (``sparse_params``: 8 x 8-patch blocks of 64 tokens, a sliding-tile prior
    of each block itself) block-sparse in the kernel, the blocks NABLA leaves out never read; outputs the stock
    processors' as compiled flex attention computes them."""
    from diffusers.models.transformers import transformer_kandinsky

    _kandinsky5_in_model_dtype(monkeypatch)
    _flex_as_compiled(monkeypatch, transformer_kandinsky)
    calls = _block_densities(monkeypatch)
    gen = torch.Generator().manual_seed(73)
    inputs = dict(_kandinsky5_inputs(72), hidden_states=torch.randn(2, 2, 32, 32, 4, generator=gen),
                  visual_rope_pos=(torch.arange(2), torch.arange(16), torch.arange(16)),
                  sparse_params=dict(sta_mask=torch.eye(8, dtype=torch.bool)[None, None], to_fractal=True, P=0.5))
    _compare(tiny_kandinsky5(), lambda m: m(**inputs).sample, backend, {PydiffKandinsky5AttnProcessor})
    sparse = [density for density in calls if density is not None]
    assert len(sparse) == 2 and all(0 < density < 1 for density in sparse)


needs_kandinsky6_sr = _needs("Kandinsky6SRAttnProcessor", "Kandinsky 6 SR", "0.42")


def tiny_kandinsky6_sr():
    """The tiny Kandinsky 6 SR: two heads of 16, NABLA keeping the blocks of half the attention mass, a sliding-tile
    prior of each block's spatial neighbours."""
    from diffusers.models.transformers.transformer_kandinsky6_sr import Kandinsky6SRTransformer3DModel

    return _perturb(Kandinsky6SRTransformer3DModel(
        in_visual_dim=4, out_visual_dim=4, time_dim=32, model_dim=32, ff_dim=48, num_visual_blocks=2,
        axes_dims=(4, 6, 6), nabla_threshold=0.5, nabla_window=(1, 3, 1)), 117)


def _kandinsky6_sr_inputs(seed):
    """2 frames of 16 x 16 latent tiles (the noisy latent, the anchor and its mask: 9 channels): 512 tokens in 8
    blocks."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 2, 16, 16, 9, generator=gen), timestep=torch.tensor([300.0, 700.0]))


@needs_kandinsky6_sr
@pytest.mark.parametrize("backend", BACKENDS)
def test_kandinsky6_sr_transformer(backend, monkeypatch):
    """Kandinsky 6 SR: NABLA's block-sparse self-attention in the kernel (64-token blocks; those its mask leaves out
    never read), with no torch.compile; outputs the stock model's as compiled flex attention computes them."""
    from diffusers.models.transformers import transformer_kandinsky6_sr

    _flex_as_compiled(monkeypatch, transformer_kandinsky6_sr)
    calls = _block_densities(monkeypatch)
    inputs = _kandinsky6_sr_inputs(118)
    _compare(tiny_kandinsky6_sr(), lambda m: m(**inputs).sample, backend, {PydiffKandinsky6SRAttnProcessor})
    assert len(calls) == 2 and all(0 < density < 1 for density in calls)


def tiny_mochi():
    from diffusers import MochiTransformer3DModel

    return _perturb(MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2, pooled_projection_dim=16,
        in_channels=4, text_embed_dim=24, time_embed_dim=8, max_sequence_length=16), 72)


def _mochi_inputs(seed, mask=((1,) * 7, (1, 1, 1, 1, 0, 0, 0))):
    """Mochi inputs: 3 frames of 8 x 6 latents (36 patches), 7 text tokens, the given text mask (T5's: padding last)."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 3, 8, 6, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), timestep=torch.tensor([300, 700]),
                encoder_attention_mask=torch.tensor(mask))


@pytest.mark.parametrize("mask", [((1,) * 7, (1, 1, 1, 1, 0, 0, 0)), ((1, 0, 1, 1, 1, 1, 1), (0, 1, 1, 0, 0, 1, 0))],
                         ids=["padding-last", "gaps"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mochi_transformer(backend, mask, monkeypatch):
    """Mochi: [video; text] as one joint call over the batch (the stock processor loops over the samples), the QK
    RMSNorms (Mochi's own class) and the per-head RoPE of one angle per pair on the video tokens in the prologue,
    the text padding as the key mask, the text outputs where the stock processor puts them (the valid tokens'
    first, also where the padding is not last); outputs the stock processors'."""
    model, inputs = tiny_mochi(), _mochi_inputs(73, mask)
    calls = _joined_masks(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffMochiAttnProcessor})
    assert calls == [((1, 43, 2, 8), ((2, 1, 1, 43), torch.bool))] * 2
    from diffusers.models.normalization import MochiRMSNorm

    assert isinstance(model.transformer_blocks[0].attn1.norm_q, MochiRMSNorm)
    assert attention_processors._rms_norm_params(model.transformer_blocks[0].attn1.norm_q, 16, CPU) is not None


def tiny_auraflow():
    from diffusers import AuraFlowTransformer2DModel

    return _perturb(AuraFlowTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=32,
        out_channels=4, pos_embed_max_size=64), 74)


def _auraflow_inputs(seed):
    """AuraFlow inputs: 8 x 6 latents (12 patches), 7 text tokens."""
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 8, 6, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=gen), timestep=torch.tensor([0.3, 0.7]))


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused-projections"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_auraflow_transformer(backend, fused, monkeypatch):
    """AuraFlow: the joint blocks' [text; image] attention as one joint call (its float32 LayerNorms on q and k as
    modules first), the single-stream blocks' self-attention, the module's scale; also on fused projections;
    outputs the stock processors'."""
    model, inputs = tiny_auraflow(), _auraflow_inputs(75)
    if fused:
        model.fuse_qkv_projections()
    calls = _joined_masks(monkeypatch)
    _compare(model, lambda m: m(**inputs).sample, backend, {PydiffAuraFlowAttnProcessor})
    assert calls == [(None, None)] * 2  # (the joint block's call, then the single block's)


#: models whose processors are diffusers' copies of others' (``attention_processors._copies``)
_COPY_MODELS = [("transformer_chronoedit", "ChronoEditTransformer3DModel", "WanAttnProcessor"),
                ("transformer_skyreels_v2", "SkyReelsV2Transformer3DModel", "SkyReelsV2AttnProcessor"),
                ("transformer_bria", "BriaTransformer2DModel", "BriaAttnProcessor"),
                ("transformer_longcat_image", "LongCatImageTransformer2DModel", "LongCatImageAttnProcessor"),
                ("transformer_ovis_image", "OvisImageTransformer2DModel", "OvisImageAttnProcessor"),
                ("transformer_bria_fibo", "BriaFiboTransformer2DModel", "BriaFiboAttnProcessor"),
                ("transformer_hunyuanimage", "HunyuanImageTransformer2DModel", "HunyuanImageAttnProcessor"),
                ("transformer_sana_video", "SanaVideoTransformer3DModel", "SanaAttnProcessor2_0")]


def _copy_family(stock_name: str):
    """The pydiff processor a copied stock processor gets, and the tiny config and inputs of its original's model
    (Wan's, Flux's or Sana's, the last over 3 frames; Bria FIBO's adds its text encoder's layers, HunyuanImage's
    takes images)."""
    if stock_name in ("WanAttnProcessor", "SkyReelsV2AttnProcessor"):
        return PydiffWanAttnProcessor, _WAN_CONFIG, _wan_inputs(43, False)
    gen = torch.Generator().manual_seed(44)
    if stock_name == "SanaAttnProcessor2_0":
        inputs = _sana_inputs(43)
        inputs["hidden_states"] = torch.randn(2, 4, 3, 8, 6, generator=gen)
        return PydiffSanaAttnProcessor, dict(_SANA_CONFIG, patch_size=(1, 2, 2)), inputs
    if stock_name == "HunyuanImageAttnProcessor":
        inputs = _hunyuan_inputs(43)
        inputs.update(hidden_states=torch.randn(2, 4, 4, 5, generator=gen), timestep=inputs["timestep"].float())
        config = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                      num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=24,
                      rope_axes_dim=(8, 8))
        return PydiffHunyuanVideoAttnProcessor, config, inputs
    inputs = _flux_inputs(43)
    inputs["text_encoder_layers"] = [torch.randn(1, 6, 32, generator=gen) for _ in range(2)]
    return PydiffFluxAttnProcessor, dict(_FLUX_CONFIG, out_channels=8, text_encoder_dim=32), inputs


def _accepted(function, arguments: dict) -> dict:
    """The entries of ``arguments`` that ``function`` takes by name."""
    import inspect

    return {name: value for name, value in arguments.items() if name in inspect.signature(function).parameters}


@pytest.mark.parametrize("module,model_name,stock_name", _COPY_MODELS, ids=[m[1] for m in _COPY_MODELS])
@pytest.mark.parametrize("backend", BACKENDS)
def test_models_with_copied_processors(backend, module, model_name, stock_name):
    """ChronoEdit and SkyReels-V2 (Wan's processor, copied), Bria, Bria FIBO, LongCat-Image and Ovis-Image (Flux's),
    HunyuanImage 2.1 (HunyuanVideo's), Sana-Video (Sana's cross-attention) from tiny configs: every copied processor
    becomes the original's pydiff processor, falling back to the model's own stock class, and the outputs are the
    stock processors'."""
    models = pytest.importorskip(f"diffusers.models.transformers.{module}")
    model_type, stock_type = getattr(models, model_name), getattr(models, stock_name, None)
    if stock_type is None:  # (SkyReels-V2's before diffusers 0.36: another processor, not a copy of Wan's)
        pytest.skip(f"diffusers {diffusers.__version__}'s {model_name} has no {stock_name}")
    ours, config, inputs = _copy_family(stock_name)
    model = _perturb(model_type(**_accepted(model_type.__init__, config)), 42)
    inputs = _accepted(model_type.forward, inputs)
    assert stock_type in _processor_types(model)
    _compare(model, lambda m: m(**inputs).sample, backend, {ours})
    switched = copy.deepcopy(model)
    set_attention_backend(switched)
    fused = [m.processor for m in switched.modules() if isinstance(getattr(m, "processor", None), ours)]
    # (each falls back to the stock class it replaced: Bria FIBO's single-stream blocks hold Bria's copy)
    stocks = {type(processor.stock) for processor in fused}
    assert fused and stock_type in stocks and stocks <= _processor_types(model)


def _module_copy_inputs(stock_name: str, gen: torch.Generator):
    """An attention module's constructor arguments and forward inputs for a copy of Wan's or LTX-2's processor:
    self-attention over 15 tokens, 2 heads of 12 channels, with the RoPE tables the original's model makes."""
    hidden = torch.randn(2, 15, 24, generator=gen)
    angles = torch.rand(15, 6, generator=gen) * 6
    if stock_name == "WanAttnProcessor":  # ((1, N, 1, D) tables, each angle for both channels of its pair)
        tables = [t.repeat_interleave(2, -1)[None, :, None] for t in (angles.cos(), angles.sin())]
        return dict(dim=24, heads=2, dim_head=12), dict(hidden_states=hidden, rotary_emb=tables)
    tables = [t.repeat_interleave(2, -1).repeat(2, 1, 2) for t in (angles.cos(), angles.sin())]  # ((B, N, H*D))
    inputs = dict(hidden_states=hidden, query_rotary_emb=tables)
    if "Perturbed" in stock_name:  # (spatio-temporal guidance: the second sample perturbed)
        inputs["perturbation_mask"] = torch.tensor([1.0, 0.0])[:, None, None]
    return dict(query_dim=24, heads=2, kv_heads=2, dim_head=12), inputs


@pytest.mark.parametrize("module,attention_name,stock_name,ours", [
    ("transformer_wan_animate", "WanAttention", "WanAttnProcessor", PydiffWanAttnProcessor),
    ("transformer_sana_wm_refiner", "SanaWMLTX2Attention", "SanaWMLTX2AudioVideoAttnProcessor",
     PydiffLTX2AttnProcessor),
    ("transformer_sana_wm_refiner", "SanaWMLTX2Attention", "SanaWMLTX2PerturbedAttnProcessor",
     attention_processors.PydiffLTX2PerturbedAttnProcessor)], ids=["wan-animate", "sana-wm-refiner", "sana-wm-stg"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_modules_with_copied_processors(backend, module, attention_name, stock_name, ours):
    """Wan-Animate's attention (Wan's processor, copied) and the SANA-WM refiner's (LTX-2's two), on their attention
    modules with RoPE: the copy becomes the original's pydiff processor and the outputs are the stock one's."""
    models = pytest.importorskip(f"diffusers.models.transformers.{module}")
    if getattr(models, stock_name, None) is None:
        pytest.skip(f"diffusers {diffusers.__version__}'s {module} has no {stock_name}")
    arguments, inputs = _module_copy_inputs(stock_name, torch.Generator().manual_seed(64))
    stock = getattr(models, stock_name)
    attn = _perturb(getattr(models, attention_name)(**arguments, processor=stock()), 65)
    _compare(attn, lambda m: m(**inputs), backend, {ours})


def test_context_parallelism_keeps_stock_processors():
    """diffusers' context parallelism sets ``_parallel_config`` on every processor that has one and expects it to
    attend across ranks. A model already under it keeps its stock processors; ours refuse one set later with a clear
    error (each rank's attention would otherwise be silently local)."""
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    config = object()  # (what diffusers sets: any ParallelConfig; the processors only test it against None)
    model = tiny_flux()
    for module in model.modules():
        if hasattr(module, "set_processor"):
            module.processor._parallel_config = config
    assert set_attention_backend(model) == 0 and _processor_types(model) == {FluxAttnProcessor}
    model = tiny_flux()
    assert set_attention_backend(model) > 0
    processor = model.transformer_blocks[0].attn.processor
    processor._parallel_config = None  # (diffusers' default: allowed)
    with pytest.raises(NotImplementedError, match="context parallelism"):
        processor._parallel_config = config
    assert processor._parallel_config is None


needs_ltx2 = _needs("LTX2AudioVideoAttnProcessor", "LTX-2", "0.37")


def tiny_ltx2(rope_type: str, gated: bool, perturbed: bool = False):
    from diffusers.models.transformers.transformer_ltx2 import LTX2VideoTransformer3DModel

    # (the gates, use_prompt_embeddings and perturbed_attn: diffusers 0.38+; 0.37's LTX-2 has none)
    return _perturb(LTX2VideoTransformer3DModel(**_accepted(LTX2VideoTransformer3DModel.__init__, dict(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        audio_in_channels=6, audio_out_channels=6, audio_num_attention_heads=2, audio_attention_head_dim=8,
        audio_cross_attention_dim=16, num_layers=2, caption_channels=24, rope_type=rope_type, gated_attn=gated,
        audio_gated_attn=gated, use_prompt_embeddings=False, perturbed_attn=perturbed))), 47)


def _ltx2_inputs(seed):
    """LTX-2 inputs: 3 video frames of 4 x 5 latent tokens, 9 audio tokens, 7 text tokens for each (the second
    prompt padded after 4): the prompt embeddings as the attention takes them (diffusers 0.38+, whose tiny model
    leaves them unprojected), or as the caption projections take them (0.37)."""
    from diffusers.models.transformers.transformer_ltx2 import LTX2VideoTransformer3DModel

    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    widths = (32, 16) if _accepted(LTX2VideoTransformer3DModel.__init__, {"use_prompt_embeddings": 0}) else (24, 24)
    return dict(hidden_states=torch.randn(2, 60, 8, generator=gen),
                audio_hidden_states=torch.randn(2, 9, 6, generator=gen),
                encoder_hidden_states=torch.randn(2, 7, widths[0], generator=gen),
                audio_encoder_hidden_states=torch.randn(2, 7, widths[1], generator=gen),
                timestep=torch.tensor([3.0, 700.0]), encoder_attention_mask=mask, audio_encoder_attention_mask=mask,
                num_frames=3, height=4, width=5, audio_num_frames=9)


def _video_and_audio(inputs):
    """``run`` for the models with a video and an audio output (LTX-2, Kandinsky 6)."""
    return lambda m: (lambda out: (out.sample, out.audio_sample))(m(**inputs))


@needs_ltx2
@pytest.mark.parametrize("rope_type,gated", [("interleaved", False), ("split", True)],
                         ids=["interleaved", "split-gated"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ltx2_transformer(backend, rope_type, gated, monkeypatch):
    """LTX-2: video and audio self-attention with their RoPE tables (interleaved (B, N, H*D), or split
    (B, H, N, D/2): one angle per pair, read in place) in the kernel's prologue, text cross-attention with the
    padding as the key mask, the audio-video cross-attention both ways with the keys turned by tables of their own
    (``key_rope``), the per-head gates after. Video and audio outputs the stock processors'."""
    model, inputs = tiny_ltx2(rope_type, gated), _ltx2_inputs(48)

    def record(args, kwargs):
        tables = [kwargs.get(name) for name in ("rope", "key_rope", "attn_mask")]
        return tuple(None if t is None else tuple((t[0] if isinstance(t, tuple) else t).shape) for t in tables)

    calls = _spy(monkeypatch, record)
    _compare(model, _video_and_audio(inputs), backend, {PydiffLTX2AttnProcessor})
    # (per-head tables: interleaved (B, N, H*D) read as (B, N, H, D); split ones, one angle per pair, (B, N, H, D/2);
    # the audio-video pair's narrower: video 60 tokens, audio 9)
    video, audio, cross = (16, 8, 8) if rope_type == "interleaved" else (8, 4, 4)
    assert calls == [((2, 60, 2, video), None, None), ((2, 9, 2, audio), None, None), (None, None, (2, 1, 1, 7)),
                     (None, None, (2, 1, 1, 7)), ((2, 60, 2, cross), (2, 9, 2, cross), None),
                     ((2, 9, 2, cross), (2, 60, 2, cross), None)] * len(model.transformer_blocks)


needs_ltx2_perturbed = _needs("LTX2PerturbedAttnProcessor", "LTX-2's perturbed attention", "0.38")


@needs_ltx2_perturbed
@pytest.mark.parametrize("perturbation", [None, (1.0, 0.0), (0.0, 0.0)], ids=["no-stg", "stg-one", "stg-all"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ltx2_perturbed_attention(backend, perturbation, monkeypatch):
    """LTX-2 built with perturbed attention (spatio-temporal guidance): LTX-2's calls, each sample's output blended
    with its values by the perturbation mask in the guided block (the second sample's perturbed: values only), and a
    call where every sample is perturbed left to the stock processor (no attention to run); outputs the stock
    processors'."""
    model, inputs = tiny_ltx2("split", True, perturbed=True), _ltx2_inputs(76)
    if perturbation is not None:
        inputs.update(spatio_temporal_guidance_blocks=[1], perturbation_mask=torch.tensor(perturbation))
    calls = _masked_calls(monkeypatch)
    _compare(model, _video_and_audio(inputs), backend, {attention_processors.PydiffLTX2PerturbedAttnProcessor})
    # (per block: video and audio self-attention, their text cross-attention, the audio-video pair; where every
    # sample is perturbed, the guided block's perturbed attentions stay stock)
    assert len(calls) == 6 * 2 - (2 if perturbation == (0.0, 0.0) else 0)


needs_ltx2_decoder = _needs("LTX2VideoVaeNeighborhoodAttnProcessor", "LTX-2's diffusion decoder", "0.42")


@needs_ltx2_decoder
@pytest.mark.parametrize("backend", BACKENDS)
def test_ltx2_diffusion_decoder(backend, monkeypatch):
    """LTX-2's diffusion decoder (VAE) from a tiny config: every neighborhood attention (five stages, windows of 3 x
    3 x 3 and, in the denoising stage, 3 x 5 x 5 over grids of 5 x 3 x 3 to 5 x 12 x 12) becomes pydiff's
    block-sparse neighborhood attention (its QK norms and 3-D RoPE in the prologue; no BlockMask built), and the
    decoded video is the stock processors' (flex attention over the decoder's BlockMasks)."""
    from diffusers.models.autoencoders.ltx2_diffusion_decoder import LTX2VideoDiffusionDecoderModel

    model = _perturb(LTX2VideoDiffusionDecoderModel(
        out_channels=3, latent_channels=8, patch_size=4, decoder_head_dim=16,
        decoder_stage_channels=(64, 32, 32, 32, 16), decoder_stage_depths=(1, 1, 1, 1, 2),
        decoder_stage_kernels=((3, 3, 3),) * 4, decoder_upsample_channel_reductions=(2, 1, 1, 2),
        decoder_upsample_strides=((1, 2, 2), (1, 1, 1), (1, 1, 1), (2, 2, 2)), decoder_stage5_kernel=(3, 5, 5),
        decoder_t_emb_dim=32, temporal_compression_ratio=2), 81)
    latents = torch.randn(1, 8, 3, 3, 3, generator=torch.Generator().manual_seed(82))
    with warnings.catch_warnings():  # (the stock processors' flex attention runs unfused on CPU, and says so)
        warnings.simplefilter("ignore", UserWarning)
        _compare(model, lambda m: m(latents, generator=torch.Generator().manual_seed(83)).sample, backend,
                 {attention_processors.PydiffLTX2VaeNeighborhoodAttnProcessor})
    if backend == "torch":  # (with our processors the decoder builds no BlockMask: its stock build is N^2)
        from torch.nn.attention import flex_attention

        ours = copy.deepcopy(model)
        set_attention_backend(ours)
        monkeypatch.setattr(flex_attention, "create_block_mask", lambda *args, **kwargs: pytest.fail("built"))
        with torch.no_grad(), pydiff.use_backend(backend):
            assert torch.isfinite(ours(latents, generator=torch.Generator().manual_seed(83)).sample).all()


@needs_ltx2_decoder
def test_ltx2_decoder_natten_processor_replaced():
    """A module on NATTEN's processor (``LTX2VideoVaeNeighborhoodNattenProcessor``, which fetches its kernel from the
    Hub: here one made without that) gets ours too; its output is the flex processor's (the same windows)."""
    from diffusers.models.autoencoders import ltx2_diffusion_decoder as decoder

    module = _perturb(decoder.LTX2VideoVaeNeighborhoodAttention(64, (3, 5, 5), head_dim=32), 84)
    x = torch.randn(2, 4, 6, 7, 64, generator=torch.Generator().manual_seed(85))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        stock = module(x)
        module.set_processor(object.__new__(decoder.LTX2VideoVaeNeighborhoodNattenProcessor))
        assert set_attention_backend(module) == 1
        assert isinstance(module.processor, attention_processors.PydiffLTX2VaeNeighborhoodAttnProcessor)
        torch.testing.assert_close(module(x), stock)


def _block_matches_stock(ours, attn, args, rope, masks, stock=None):
    """``ours(attn, *args, ...)`` against the stock module ``stock`` (default ``attn``) for each attention mask in
    ``masks`` (None: no mask): every output equal."""
    stock = attn if stock is None else stock
    with torch.no_grad():
        for mask in masks:
            kwargs = {} if mask is None else {"attention_mask": mask}
            got, want = ours(attn, *args, image_rotary_emb=rope, **kwargs), stock(*args, image_rotary_emb=rope,
                                                                                   **kwargs)
            got, want = (x if isinstance(x, tuple) else (x,) for x in (got, want))
            assert len(got) == len(want)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_set_attention_backend_on_a_pipeline_and_bad_input():
    class Pipe:  # what set_attention_backend uses of a DiffusionPipeline
        def __init__(self, **components):
            self.components = components

    unet, flux = tiny_unet(), tiny_flux()
    pipe = Pipe(unet=unet, transformer=flux, scheduler=object(), tokenizer=None)
    expected = sum(1 for m in list(unet.modules()) + list(flux.modules()) if hasattr(m, "set_processor"))
    assert set_attention_backend(pipe) == expected
    assert _processor_types(unet) == {PydiffAttnProcessor}
    assert _processor_types(flux) == {PydiffFluxAttnProcessor}
    assert set_attention_backend(pipe) == 0  # already switched
    with pytest.raises(TypeError, match="pipeline"):
        set_attention_backend(object())


def _wide_head_sd3():
    from diffusers import SD3Transformer2DModel

    return _perturb(SD3Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=260, num_attention_heads=1,
        joint_attention_dim=32, caption_projection_dim=260, pooled_projection_dim=24, out_channels=4,
        pos_embed_max_size=4), 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_dims_past_the_kernel_stay_stock(backend):
    """Head dims over 256 (every Stable Diffusion VAE's mid-block attention has 512) keep their stock processor:
    ``set_attention_backend`` leaves them, so a pipeline's VAE decodes as before, and a pydiff processor set on
    such a module by hand passes its calls to the stock one. The same outputs as the stock processors, no error."""
    gen = torch.Generator().manual_seed(8)
    image = torch.randn(1, 3, 8, 8, generator=gen)
    sd3_inputs = dict(hidden_states=torch.randn(1, 4, 4, 4, generator=gen),
                      encoder_hidden_states=torch.randn(1, 5, 32, generator=gen),
                      pooled_projections=torch.randn(1, 24, generator=gen), timestep=torch.tensor([3]))
    # a Stable Diffusion VAE's mid-block attention in small: one head over 264 channels (SD's has 512)
    for model, run, ours in ((tiny_vae(264, 8, 4), lambda m: m(image, sample_posterior=False).sample,
                              PydiffAttnProcessor),
                             (_wide_head_sd3(), lambda m: m(**sd3_inputs).sample, PydiffJointAttnProcessor)):
        with torch.no_grad():
            stock = run(model)
            kept = copy.deepcopy(model)
            assert set_attention_backend(kept) == 0
            assert ours not in _processor_types(kept)
            by_hand = copy.deepcopy(model)
            by_hand.set_attn_processor(ours())
            assert _processor_types(by_hand) == {ours}
            with pydiff.use_backend(backend):
                for switched in (kept, by_hand):
                    torch.testing.assert_close(run(switched), stock, rtol=0, atol=0)


def tiny_svd():
    from diffusers import UNetSpatioTemporalConditionModel

    return _perturb(UNetSpatioTemporalConditionModel(
        sample_size=4, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, cross_attention_dim=16, transformer_layers_per_block=1,
        num_attention_heads=(2, 4), num_frames=3), 1)


def _svd_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    # (batch, frames, channels, height, width), a timestep, the image embedding, the added time ids
    return (torch.randn(2, 3, 8, 4, 4, generator=gen), torch.tensor([10.0]), torch.randn(2, 1, 16, generator=gen),
            torch.randn(2, 3, generator=gen))


@pytest.mark.parametrize("backend", BACKENDS)
def test_svd_spatio_temporal_unet(backend):
    """Stable Video Diffusion's UNet: spatial attention per frame, and temporal attention over the frames of each
    latent pixel (a batch of videos x pixels: past 65535 (batch, head) pairs at SVD's own size, which the kernel's
    grid takes; ``test_grid_axes_take_large_batches``)."""
    inputs = _svd_inputs(0)
    _compare(tiny_svd(), lambda m: m(*inputs).sample, backend, {PydiffAttnProcessor})


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_fullgraph_models(backend):
    """``torch.compile(model, fullgraph=True)``, as diffusers' docs compile a pipeline's transformer, traces our
    processors without a graph break (the op through torch.library, the stock path's checks as Python), with the
    eager outputs (on the Triton backend, the first six models)."""
    unet, sd3, flux, pixart, qwen = tiny_unet(), tiny_sd3("rms_norm"), tiny_flux(), tiny_pixart(), tiny_qwen_image()
    gen = torch.Generator().manual_seed(4)
    unet_inputs = (torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 500]),
                   torch.randn(2, 7, 24, generator=gen))
    sd3_inputs = dict(hidden_states=torch.randn(1, 4, 8, 8, generator=gen),
                      encoder_hidden_states=torch.randn(1, 5, 32, generator=gen),
                      pooled_projections=torch.randn(1, 24, generator=gen), timestep=torch.tensor([3]))
    flux_inputs, pixart_inputs, qwen_inputs = _flux_inputs(6), _pixart_inputs(9), _qwen_inputs(11)
    hunyuan_inputs, chroma_inputs, wan_inputs = _hunyuan_inputs(14), _chroma_inputs(15), _wan_inputs(16, True)
    cogvideox_inputs, ltx_inputs = _cogvideox_inputs(17), _ltx_video_inputs(18)
    lumina2_inputs, cogview4_inputs = _lumina2_inputs(19), _cogview4_inputs(20, text_mask=True)
    sana_inputs, hidream_inputs = _sana_inputs(23), _hidream_inputs(24)
    models = [(unet, lambda m: m(*unet_inputs).sample), (sd3, lambda m: m(**sd3_inputs).sample),
              (flux, lambda m: m(**flux_inputs).sample), (pixart, lambda m: m(**pixart_inputs).sample),
              (tiny_hunyuan_video(), lambda m: m(**hunyuan_inputs).sample),
              (tiny_chroma(), lambda m: m(**chroma_inputs).sample),
              (tiny_wan(True), lambda m: m(**wan_inputs).sample),
              (tiny_cogvideox(), lambda m: m(**cogvideox_inputs).sample),
              (tiny_ltx_video(), lambda m: m(**ltx_inputs).sample),
              (tiny_cogview4(), lambda m: m(**cogview4_inputs).sample),
              (tiny_lumina2(), lambda m: m(*lumina2_inputs).sample),
              (tiny_sana("rms_norm_across_heads"), lambda m: m(**sana_inputs).sample),
              (tiny_hidream(True), lambda m: m(**hidream_inputs).sample)]
    if attention_processors._QWEN_MASKS_TEXT:  # (replaced from diffusers 0.39)
        models.append((qwen, lambda m: m(**qwen_inputs).sample))
    if attention_processors.ZSingleStreamAttnProcessor is not None:  # (diffusers 0.36+)
        hunyuan15_inputs = _hunyuan_video15_inputs(22)
        models += [(tiny_z_image(), _z_image_run(_z_image_inputs(21))),
                   (tiny_hunyuan_video15(), lambda m: m(**hunyuan15_inputs).sample)]
    if attention_processors.LTX2AudioVideoAttnProcessor is not None:  # (diffusers 0.37+)
        models.append((tiny_ltx2("split", True), _video_and_audio(_ltx2_inputs(24))))
    if attention_processors.Flux2AttnProcessor is not None:  # (diffusers 0.36+)
        flux2_inputs = _flux2_inputs(12)
        models.append((tiny_flux2(), lambda m: m(**flux2_inputs).sample))
    hunyuan_dit_inputs, easyanimate_inputs = _hunyuan_dit_inputs(41), _easyanimate_inputs(43)
    models += [(tiny_hunyuan_dit(), lambda m: m(**hunyuan_dit_inputs).sample),
               (tiny_easyanimate(), lambda m: m(**easyanimate_inputs).sample)]
    cosmos_inputs, mochi_inputs, ip_inputs = _cosmos_inputs(25, False), _mochi_inputs(26), _ip_adapter_inputs(27)
    auraflow_inputs = _auraflow_inputs(28)
    models += [(tiny_cosmos(False), lambda m: m(**cosmos_inputs).sample),
               (tiny_mochi(), lambda m: m(**mochi_inputs).sample),
               (tiny_unet_with_ip_adapters(), lambda m: m(**ip_inputs).sample),
               (tiny_auraflow(), lambda m: m(**auraflow_inputs).sample),
               (tiny_sd3_with_ip_adapter(), _run_popping(_sd3_ip_inputs(32))),
               (tiny_flux_with_ip_adapters(), _run_popping(_flux_ip_inputs(33)))]
    if attention_processors.CosmosAttnProcessor2_5 is not None:  # (diffusers 0.37+)
        cosmos25_inputs = _cosmos_inputs(26, True)
        models.append((tiny_cosmos(True), lambda m: m(**cosmos25_inputs).sample))
    if attention_processors.Kandinsky5AttnProcessor is not None:  # (diffusers 0.36+)
        kandinsky5_inputs = _kandinsky5_inputs(31)
        models.append((tiny_kandinsky5(), lambda m: m(**kandinsky5_inputs).sample))
    if attention_processors.GlmImageAttnProcessor is not None:  # (diffusers 0.37+)
        glm_inputs = _glm_image_inputs(34, text_mask=True)
        models.append((tiny_glm_image(), lambda m: m(**glm_inputs).sample))
    if attention_processors.PRXAttnProcessor2_0 is not None:  # (diffusers 0.36+)
        prx_inputs = _prx_inputs(35)
        models.append((tiny_prx(), lambda m: m(**prx_inputs).sample))
    if attention_processors.NucleusMoEAttnProcessor2_0 is not None:  # (diffusers 0.39+)
        nucleus_inputs, ernie_inputs = _nucleus_inputs(36), _ernie_inputs(37)
        joy_inputs, joy_plus_inputs = _joyimage_inputs(38), _joyimage_inputs(39, plus=True)
        models += [(tiny_nucleus_image(), lambda m: m(**nucleus_inputs).sample),
                   (tiny_ernie_image(), lambda m: m(**ernie_inputs).sample),
                   (tiny_joyimage(), lambda m: m(**joy_inputs).sample)]
        if attention_processors.JoyImageEditPlusAttnProcessor is not None:  # (diffusers 0.42+)
            models.append((tiny_joyimage(plus=True), lambda m: m(**joy_plus_inputs).sample))
        motif_inputs = _motif_video_inputs(40)
        models.append((tiny_motif_video(), lambda m: m(**motif_inputs).sample))
    if attention_processors.Krea2AttnProcessor is not None:  # (diffusers 0.39+)
        krea2_inputs, ideogram4_inputs = _krea2_inputs(27), _ideogram4_inputs(28)
        models += [(tiny_krea2(), lambda m: m(**krea2_inputs).sample),
                   (tiny_ideogram4(), lambda m: m(**ideogram4_inputs).sample)]
    if attention_processors.Kandinsky6AttnProcessor is not None:  # (diffusers 0.42+)
        kandinsky6_inputs, kandinsky6_sr_inputs = _kandinsky6_inputs(42), _kandinsky6_sr_inputs(44)
        models += [(tiny_kandinsky6(), lambda m: m(**kandinsky6_inputs).sample),
                   (tiny_kandinsky6_sr(), lambda m: m(**kandinsky6_sr_inputs).sample)]  # (NABLA's block mask)
    if attention_processors.Flux3AttnProcessor is not None:  # (diffusers 0.42+)
        flux3_inputs, fibo2_inputs = _flux3_inputs(29), _bria_fibo2_inputs(30)
        models += [(tiny_flux3(), lambda m: m(**flux3_inputs).sample),
                   (tiny_bria_fibo2(), lambda m: m(**fibo2_inputs).sample)]
    if backend == "triton":
        # (the graph a model traces does not depend on the backend, which the op picks when it runs: every model
        # compiles on the torch backend; through the interpreted kernel, slow on a CPU, the first six: plain,
        # joint with QK norms and RoPE, a key mask, a mask per query)
        models = models[:6]
    for model, run in models:
        torch._dynamo.reset()
        assert set_attention_backend(model) > 0
        with torch.no_grad(), pydiff.use_backend(backend):
            eager = run(model)
            compiled = run(_compiled(model))
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


#: models whose own forward is data-dependent (each sample's token count, or Bria FIBO 2's gist count, read from its
#: mask: a graph break), with
#: the blocks a user compiles instead (regional compilation, as diffusers' ``compile_repeated_blocks``); HiDream's
#: blocks route tokens to experts data-dependently too, so there its attention modules
_REGIONAL = {"Lumina2Transformer2DModel": "Lumina2TransformerBlock",
             "ZImageTransformer2DModel": "ZImageTransformerBlock",
             "HunyuanVideo15Transformer3DModel": "HunyuanVideo15TransformerBlock",
             "HiDreamImageTransformer2DModel": "HiDreamAttention",
             "BriaFibo2Transformer2DModel": "BriaFibo2TransformerBlock"}


def _compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model, fullgraph=True)``, or for the models in ``_REGIONAL`` a copy with each of its
    repeated blocks compiled in place with ``fullgraph=True`` (the processors run inside those blocks)."""
    block = _REGIONAL.get(type(model).__name__)
    if block is None:
        return torch.compile(model, fullgraph=True, backend="aot_eager")
    model = copy.deepcopy(model)
    for module in model.modules():
        if type(module).__name__ == block:
            module.compile(fullgraph=True, backend="aot_eager")
    return model


def _moved(x, device, dtype):
    """Inputs on ``device``, their floating-point tensors in ``dtype`` (tuples, lists and dicts of them too)."""
    if isinstance(x, dict):
        return {name: _moved(t, device, dtype) for name, t in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_moved(t, device, dtype) for t in x)
    if not isinstance(x, torch.Tensor):  # (Qwen-Image's img_shapes: sizes)
        return x
    return x.to(device, dtype) if x.is_floating_point() else x.to(device)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_models_against_float64(cuda_device, dtype, monkeypatch):
    """On a GPU, the compiled kernel behind our processors, in a model that runs in half precision: its output's
    error against the same model in float64 (stock processors) is within 2x the stock processors' own error in
    that precision, plus 1e-3. A UNet (its projections also fused: q, k and v strided views of one matmul; and with
    two IP-Adapters), SD3 and Flux and FLUX.2 transformers, SVD's spatio-temporal UNet, PixArt, Qwen-Image and
    HunyuanVideo with their text-padding masks (the kernel's key mask), Chroma with its per-query mask, Wan's
    image-to-video model, CogVideoX, LTX-Video, Lumina 2 (grouped-query), CogView4 with its text mask, Sana 1.5,
    HiDream, Z-Image, HunyuanVideo 1.5 and LTX-2 (both RoPE layouts; with spatio-temporal guidance), Cosmos
    Predict 2 and 2.5, Mochi (its text padding), AuraFlow, Kandinsky 5, Krea 2 (grouped-query), Ideogram 4
    (packed samples' mask per query), FLUX.3, Bria FIBO 2, GLM-Image (its text mask), PRX and Nucleus-Image (the
    text a second stream of keys only), ERNIE-Image, JoyImage-Edit (and Edit-Plus), Motif-Video, HunyuanDiT (keys
    not turned in cross-attention), Kandinsky 6 (keys turned by tables of their own), EasyAnimate, OmniGen (its mask per
    query), Helios (its history), and SD3 and Flux with IP-Adapters (SD3's image prompt a stream of keys only).
    At the untuned default tiles: tuning each of their dozens of small signatures would take minutes."""
    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "0")
    gen = torch.Generator().manual_seed(6)
    unet_inputs = (torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 500]),
                   torch.randn(2, 7, 24, generator=gen))
    sd3_inputs = (torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 9, 32, generator=gen),
                  torch.randn(2, 24, generator=gen), torch.tensor([0.3, 0.8]))
    fused_unet = tiny_unet()
    fused_unet.fuse_qkv_projections()
    models = [(tiny_unet(), unet_inputs), (fused_unet, unet_inputs), (tiny_sd3("rms_norm"), sd3_inputs),
              (tiny_flux(), _flux_inputs(7)), (tiny_svd(), _svd_inputs(8)), (tiny_pixart(), _pixart_inputs(10)),
              (tiny_hunyuan_video(), _hunyuan_inputs(15)), (tiny_chroma(), _chroma_inputs(16)),
              (tiny_wan(True), _wan_inputs(17, True)), (tiny_cogvideox(), _cogvideox_inputs(18)),
              (tiny_ltx_video(), _ltx_video_inputs(19)), (tiny_lumina2(), _lumina2_inputs(20)),
              (tiny_cogview4(), _cogview4_inputs(21, text_mask=True)),
              (tiny_sana("rms_norm_across_heads"), _sana_inputs(24)), (tiny_hidream(False), _hidream_inputs(25))]
    if attention_processors._QWEN_MASKS_TEXT:
        models.append((tiny_qwen_image(), _qwen_inputs(12)))
    if attention_processors.ZSingleStreamAttnProcessor is not None:  # (diffusers 0.36+)
        models += [(tiny_z_image(), _z_image_inputs(22)), (tiny_hunyuan_video15(), _hunyuan_video15_inputs(23))]
    if attention_processors.LTX2AudioVideoAttnProcessor is not None:  # (diffusers 0.37+)
        models += [(tiny_ltx2("interleaved", False), _ltx2_inputs(25)), (tiny_ltx2("split", True), _ltx2_inputs(26))]
    if attention_processors.LTX2PerturbedAttnProcessor is not None:  # (diffusers 0.38+)
        stg = dict(_ltx2_inputs(37), spatio_temporal_guidance_blocks=[1], perturbation_mask=torch.tensor([1.0, 0.0]))
        models.append((tiny_ltx2("split", True, perturbed=True), stg))
    if attention_processors.Flux2AttnProcessor is not None:
        models.append((tiny_flux2(), _flux2_inputs(13)))
    models += [(tiny_cosmos(False), _cosmos_inputs(27, False)), (tiny_mochi(), _mochi_inputs(34)),
               (tiny_unet_with_ip_adapters(), _ip_adapter_inputs(35)), (tiny_auraflow(), _auraflow_inputs(36)),
               (tiny_sd3_with_ip_adapter(), _sd3_ip_inputs(38)), (tiny_flux_with_ip_adapters(), _flux_ip_inputs(39)),
               (tiny_hunyuan_dit(), _hunyuan_dit_inputs(47)), (tiny_easyanimate(), _easyanimate_inputs(49)),
               (tiny_omnigen(), _omnigen_inputs(50))]
    if attention_processors.CosmosAttnProcessor2_5 is not None:  # (diffusers 0.37+)
        models.append((tiny_cosmos(True), _cosmos_inputs(28, True)))
    if attention_processors.GlmImageAttnProcessor is not None:  # (diffusers 0.37+)
        models.append((tiny_glm_image(), _glm_image_inputs(40, text_mask=True)))
    if attention_processors.PRXAttnProcessor2_0 is not None:  # (diffusers 0.36+)
        models.append((tiny_prx(), _prx_inputs(41)))
    if attention_processors.NucleusMoEAttnProcessor2_0 is not None:  # (diffusers 0.39+)
        models += [(tiny_nucleus_image(), _nucleus_inputs(42)), (tiny_ernie_image(), _ernie_inputs(43)),
                   (tiny_joyimage(), _joyimage_inputs(44)), (tiny_motif_video(), _motif_video_inputs(46))]
        if attention_processors.JoyImageEditPlusAttnProcessor is not None:  # (diffusers 0.42+)
            models.append((tiny_joyimage(plus=True), _joyimage_inputs(45, True)))
    if attention_processors.Kandinsky5AttnProcessor is not None:  # (diffusers 0.36+)
        _kandinsky5_in_model_dtype(monkeypatch)  # (its float64 reference would round q and k to bfloat16)
        models.append((tiny_kandinsky5(), _kandinsky5_inputs(33)))
    if attention_processors.Krea2AttnProcessor is not None:  # (diffusers 0.39+)
        models += [(tiny_krea2(), _krea2_inputs(29)), (tiny_ideogram4(), _ideogram4_inputs(30))]
    if attention_processors.Flux3AttnProcessor is not None:  # (diffusers 0.42+)
        models += [(tiny_flux3(), _flux3_inputs(31)), (tiny_bria_fibo2(), _bria_fibo2_inputs(32))]
    if attention_processors.Kandinsky6AttnProcessor is not None:  # (diffusers 0.42+)
        models.append((tiny_kandinsky6(), _kandinsky6_inputs(48)))
    if attention_processors.HeliosAttnProcessor is not None:  # (diffusers 0.39+)
        models.append((tiny_helios(), _helios_inputs(51)))
    for model, inputs in models:
        def run(m, precision):
            args = _moved(inputs, cuda_device, precision)
            out = m(**args) if isinstance(args, dict) else m(*args)
            # (Z-Image's sample: a list of per-sample tensors; LTX-2's output: video and audio)
            parts = out.sample if isinstance(out.sample, list) else [out.sample]
            parts += [out.audio_sample] if getattr(out, "audio_sample", None) is not None else []
            return torch.cat([x.flatten() for x in parts]).double()

        with torch.no_grad():
            ref = run(copy.deepcopy(model).to(cuda_device, torch.float64), torch.float64)
            stock = run(copy.deepcopy(model).to(cuda_device, dtype), dtype)
            ours_model = copy.deepcopy(model).to(cuda_device, dtype)
            assert set_attention_backend(ours_model) > 0
            with pydiff.use_backend("triton"):
                ours = run(ours_model, dtype)
        err_ours, err_stock = ((x - ref).norm().item() / ref.norm().item() for x in (ours, stock))
        # (SDPA's memory-efficient kernel has given NaN for query rows that see no key, pytorch#110213: Chroma's
        # padded text tokens; then a fixed bound, ours as finite as the float64 reference)
        bound = 2 * err_stock + 1e-3 if math.isfinite(err_stock) else 1e-2
        assert err_ours <= bound, f"{type(model).__name__}: {err_ours:.3g} vs stock {err_stock:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_kv_caches_against_float64(cuda_device, dtype, monkeypatch):
    """On a GPU, the KV-cache steps whose cached keys are the kernel's second stream of keys only (GLM-Image's
    condition images, shared and per sample; FLUX.2 Klein KV's reference image; Qwen-Image 2.1's prefix), in half
    precision: every output's error against float64 (stock processors) within 2x the stock processors' own, plus
    1e-3. At the untuned default tiles."""
    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "0")
    flows = []
    if attention_processors.GlmImageAttnProcessor is not None:  # (diffusers 0.37+)
        flows += [(tiny_glm_image, functools.partial(_glm_cache_run, samples)) for samples in (1, 2)]
    if attention_processors.Flux2KVAttnProcessor is not None:  # (diffusers 0.39+)
        flows.append((tiny_flux2_kv, _flux2_kv_run))
    if attention_processors.QwenImage21AttnProcessor is not None:  # (diffusers 0.42+)
        flows.append((tiny_qwen_image21, _qwen_image21_run))
    for build, flow in flows:
        model = build()

        def output(m, precision):
            out = flow(lambda x: _moved(x, cuda_device, precision))(m.to(cuda_device, precision))
            return torch.cat([x.flatten() for x in (out if isinstance(out, tuple) else (out,))]).double()

        with torch.no_grad():
            ref, stock = (output(copy.deepcopy(model), precision) for precision in (torch.float64, dtype))
            ours_model = copy.deepcopy(model)
            assert set_attention_backend(ours_model) > 0
            with pydiff.use_backend("triton"):
                ours = output(ours_model, dtype)
        err_ours, err_stock = ((x - ref).norm().item() / ref.norm().item() for x in (ours, stock))
        assert err_ours <= 2 * err_stock + 1e-3, f"{flow}: {err_ours:.3g} vs stock {err_stock:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_projections(backend):
    """After ``fuse_qkv_projections()`` (diffusers' fused processors, one matmul for q, k and v), our processors
    read the fused projections: the same outputs as diffusers' fused processors, a masked call included. SD3.5-style
    QK norms keep ``FusedJointAttnProcessor2_0``, which skips them."""
    from diffusers.models.attention_processor import FusedJointAttnProcessor2_0

    gen = torch.Generator().manual_seed(5)
    sample, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([3, 900])
    context = torch.randn(2, 7, 24, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]])
    image = torch.randn(1, 3, 16, 16, generator=gen)
    latents, pooled = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 24, generator=gen)
    sd3_context = torch.randn(2, 9, 32, generator=gen)
    for model, run, ours in (
            (tiny_unet(), lambda m: m(sample, t, encoder_hidden_states=context).sample, PydiffAttnProcessor),
            (tiny_unet(), lambda m: m(sample, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample,
             PydiffAttnProcessor),
            (tiny_vae(), lambda m: m(image, sample_posterior=False).sample, PydiffAttnProcessor),
            # (no dual attention: diffusers' fused joint processor fails on its self-attention, which has no text)
            (tiny_sd3(None, ()), lambda m: m(latents, sd3_context, pooled, t.float() / 1000).sample,
             PydiffJointAttnProcessor)):
        model.fuse_qkv_projections()
        _compare(model, run, backend, {ours})
    normed = tiny_sd3("rms_norm", ())
    normed.fuse_qkv_projections()
    assert set_attention_backend(normed) == 0 and _processor_types(normed) == {FusedJointAttnProcessor2_0}


def test_processor_benchmark_runs_on_cpu(tmp_path):
    """``benchmarks/bench_processors.py`` on tiny configs (ours = the torch backend): every model this diffusers has
    is timed with its processors switched, its output the stock processors'; a model it lacks is reported."""
    bench = pytest.importorskip("benchmarks.bench_processors")
    rows = bench.run(quick=True, device="cpu")
    figures = {r["name"]: r for r in rows if "speedup" in r}
    missing = {r["name"] for r in rows if "error" in r or "unavailable" in r}
    # (Z-Image's and PRX's models from diffusers 0.36, Qwen-Image's processor replaced and Krea 2's model from 0.39,
    # FLUX.3's from 0.42)
    present = {"Z-Image": attention_processors.ZSingleStreamAttnProcessor is not None,
               "Qwen-Image": attention_processors._QWEN_MASKS_TEXT,
               "Krea 2": attention_processors.Krea2AttnProcessor is not None,
               "FLUX.3": attention_processors.Flux3AttnProcessor is not None,
               "PRX": attention_processors.PRXAttnProcessor2_0 is not None}
    assert missing == {m.name for m in bench.MODELS for name, there in present.items()
                       if m.name.startswith(name) and not there}
    assert set(figures) | missing == {m.name for m in bench.MODELS}
    for name, r in figures.items():
        assert r["max_diff"] < 1e-5 and r["modules_switched"] > 0 and r["speedup"] > 0, (name, r)
    assert "stock processors" in bench.section(rows)
    pngs = bench.plots(rows, tmp_path)
    assert [p.name for p in pngs] == ["processors_speedup.png"] and pngs[0].stat().st_size > 1000
