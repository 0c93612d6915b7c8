"""SNOOPI's negative-away steer attention on a tiny UNet: the model's output equals a reference processor's (two SDPA
calls per cross-attention, subtracted, in float64), scale 0 and removal give the stock output back, and bad input is
refused by name before anything changes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import pydiff

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402
from test_attention_diffusers import BACKENDS, _processor_types, tiny_unet  # noqa: E402

from pydiff.integrations.diffusers import (  # noqa: E402
    PydiffAttnProcessor,
    PydiffNegativeAwayAttnProcessor,
    set_attention_backend,
    set_negative_away_attention,
)


class ReferenceNASA:
    """NASA as the paper writes it, on the module's own layers: to_out(A(q, k+, v+) - scale A(q, k-, v-)), each A
    one SDPA call over (B, H, N, D) copies; self-attention as the stock processor."""

    def __init__(self, negative, scale):
        self.negative, self.scale = negative, scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None:
            return AttnProcessor2_0()(attn, hidden_states, None, attention_mask, temb)
        batch = hidden_states.shape[0]
        negative = self.negative.to(hidden_states.dtype).expand(batch, -1, -1)

        def heads(x):
            return x.view(batch, -1, attn.heads, attn.inner_dim // attn.heads).transpose(1, 2)

        q = heads(attn.to_q(hidden_states))
        out = F.scaled_dot_product_attention(q, heads(attn.to_k(encoder_hidden_states)),
                                             heads(attn.to_v(encoder_hidden_states)))
        out = out - self.scale * F.scaled_dot_product_attention(q, heads(attn.to_k(negative)),
                                                                heads(attn.to_v(negative)))
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(batch, -1, attn.inner_dim)))
        return out / attn.rescale_output_factor


def _inputs(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 500]), torch.randn(2, 7, 24, generator=gen),
            torch.randn(2, 5, 24, generator=gen))


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows", [1, 2])
def test_matches_the_reference(backend, rows):
    """Negative prompts of one row (shared) and of one per sample, scale 0.7: the UNet's output within 2e-5 of the
    float64 reference's, and more than 1% from the unsteered output (the steering is really there)."""
    model = tiny_unet()
    sample, t, context, negative = _inputs()
    negative = negative[:rows]
    with torch.no_grad():
        plain = model(sample, t, encoder_hidden_states=context).sample
        reference = copy.deepcopy(model).double()
        for module in reference.modules():
            if getattr(module, "is_cross_attention", False):
                module.set_processor(ReferenceNASA(negative.double(), 0.7))
        expected = reference(sample.double(), t, encoder_hidden_states=context.double()).sample
        crosses = sum(getattr(m, "is_cross_attention", False) for m in model.modules())
        assert crosses == 4 and set_negative_away_attention(model, negative, scale=0.7) == crosses
        assert PydiffNegativeAwayAttnProcessor in _processor_types(model)
        with pydiff.use_backend(backend):
            ours = model(sample, t, encoder_hidden_states=context).sample
    assert _rel(ours, expected) < 2e-5
    assert _rel(plain, expected) > 1e-2


def test_scale_zero_and_removal_give_the_stock_output():
    model = tiny_unet()
    sample, t, context, negative = _inputs(3)
    before = [type(m.processor) for m in model.modules() if hasattr(m, "processor")]
    with torch.no_grad():
        stock = model(sample, t, encoder_hidden_states=context).sample
        set_negative_away_attention(model, negative, scale=0.0)
        assert _rel(model(sample, t, encoder_hidden_states=context).sample, stock) < 2e-6
        set_negative_away_attention(model, negative[:1], scale=2.0)  # set again: replaced, not stacked
        steered = model(sample, t, encoder_hidden_states=context).sample
        assert _rel(steered, stock) > 1e-2
        assert set_negative_away_attention(model, None) == 4
        assert [type(m.processor) for m in model.modules() if hasattr(m, "processor")] == before
        assert _rel(model(sample, t, encoder_hidden_states=context).sample, stock) == 0.0


def test_on_top_of_pydiff_processors():
    """After set_attention_backend: the self-attention stays pydiff's, and removal gives pydiff's processor back."""
    model = tiny_unet()
    sample, t, context, negative = _inputs(4)
    set_attention_backend(model)
    with torch.no_grad():
        fused = model(sample, t, encoder_hidden_states=context).sample
        set_negative_away_attention(model, negative, 0.3)
        assert {PydiffAttnProcessor, PydiffNegativeAwayAttnProcessor} <= _processor_types(model)
        assert _rel(model(sample, t, encoder_hidden_states=context).sample, fused) > 1e-3
        set_negative_away_attention(model, None)
        assert _processor_types(model) == {PydiffAttnProcessor}
        assert _rel(model(sample, t, encoder_hidden_states=context).sample, fused) == 0.0


def test_bad_input():
    model = tiny_unet()
    sample, t, context, negative = _inputs(5)
    before = [type(m.processor) for m in model.modules() if hasattr(m, "processor")]
    for embeds, scale, match in [(negative[..., :16], 0.5, "width 16; the cross-attention takes contexts of width 24"),
                                 (negative[0], 0.5, "negative_embeds must be a floating-point tensor"),
                                 (negative.long(), 0.5, "negative_embeds must be a floating-point tensor"),
                                 (negative[:, :0], 0.5, "negative_embeds must be a floating-point tensor"),
                                 (negative, float("nan"), "scale must be a finite number"),
                                 (negative, True, "scale must be a finite number")]:
        with pytest.raises(ValueError, match=match):
            set_negative_away_attention(model, embeds, scale)
    assert [type(m.processor) for m in model.modules() if hasattr(m, "processor")] == before  # nothing changed
    with pytest.raises(ValueError, match="no cross-attention to steer"):
        set_negative_away_attention(torch.nn.Linear(2, 2), negative)
    set_negative_away_attention(model, torch.randn(3, 5, 24))
    with pytest.raises(ValueError, match="negative_embeds has 3 rows; the call has 2"):
        model(sample, t, encoder_hidden_states=context)
    set_negative_away_attention(model, negative)
    with pytest.raises(NotImplementedError, match="takes no attention mask"):
        model(sample, t, encoder_hidden_states=context, encoder_attention_mask=torch.ones(2, 7))


@pytest.mark.gpu
def test_gpu_matches_the_reference(cuda_device):
    """On CUDA (the Triton kernel, float32 with TF32 matmuls): within 2e-3 of the float64 CPU reference."""
    model = tiny_unet()
    sample, t, context, negative = _inputs(6)
    with torch.no_grad():
        reference = copy.deepcopy(model).double()
        for module in reference.modules():
            if getattr(module, "is_cross_attention", False):
                module.set_processor(ReferenceNASA(negative.double(), 0.7))
        expected = reference(sample.double(), t, encoder_hidden_states=context.double()).sample
        model = model.to(cuda_device)
        set_negative_away_attention(model, negative.to(cuda_device), scale=0.7)
        ours = model(sample.to(cuda_device), t.to(cuda_device), encoder_hidden_states=context.to(cuda_device)).sample
    assert _rel(ours.cpu(), expected) < 2e-3
