"""Negative prompts for one-step models: SNOOPI's Negative-Away Steer Attention (NASA; Nguyen et al. 2024, "SNOOPI:
Supercharged One-step Diffusion Distillation with Proper Guidance").

A one-step generator has no classifier-free guidance pass to put a negative prompt in. NASA steers it inside the
cross-attention instead: each cross-attention layer subtracts the attention over the negative prompt's tokens from
the attention over the prompt's,

    out = to_out( A(q, k+, v+) - scale A(q, k-, v-) ),

k- and v- the layer's own key and value projections of the negative prompt's embeddings. ``pydiff.attention``'s
negative stream computes both in one pass over q.

    from pydiff.integrations.diffusers import set_negative_away_attention
    negative, _ = pipe.encode_prompt("blurry, low quality", device, 1, False)   # (1, T, C)
    set_negative_away_attention(pipe, negative, scale=0.5)
    image = pipe(prompt, num_inference_steps=1, guidance_scale=0.0).images[0]
    set_negative_away_attention(pipe, None)                                      # the processors it replaced
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from pydiff.attention import MAX_HEAD_DIM, attention

from .attention_processors import PydiffAttnProcessor, _fused_projections, _head_dim, _roots


class PydiffNegativeAwayAttnProcessor(PydiffAttnProcessor):
    """A UNet cross-attention's ``AttnProcessor2_0`` (or pydiff's) with NASA: its prompt's attention minus ``scale``
    times the negative prompt's (module docstring), the negative prompt's embeddings ``negative_embeds`` (1 or B, T,
    cross_attention_dim). ``previous``: the processor it replaced, restored by ``set_negative_away_attention(...,
    None)`` and used for calls without a context. Calls with an attention mask raise: the negative prompt has none to
    go with it."""

    def __init__(self, negative_embeds: torch.Tensor, scale: float, previous):
        super().__init__()
        self.negative_embeds, self.scale, self.previous = negative_embeds, float(scale), previous

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is None:
            return self.previous(attn, hidden_states, None, attention_mask, temb, *args, **kwargs)
        if attention_mask is not None:
            raise NotImplementedError("negative-away attention takes no attention mask (the negative prompt has no "
                                      "padding mask of its own): call the model without encoder_attention_mask")
        batch, negative = hidden_states.shape[0], self.negative_embeds
        if negative.shape[0] not in (1, batch):
            raise ValueError(f"negative_embeds has {negative.shape[0]} rows; the call has {batch} (give 1 or {batch})")
        negative = negative.to(encoder_hidden_states.device, encoder_hidden_states.dtype)
        if attn.norm_cross:
            negative = attn.norm_encoder_hidden_states(negative)
        return self._forward(attn, hidden_states, encoder_hidden_states, None, temb, extra=negative)

    def _attend(self, attn, q, k, v, mask, head_dim, extra) -> torch.Tensor:
        if _fused_projections(attn):
            k_neg, v_neg = attn.to_kv(extra).chunk(2, dim=-1)
        else:
            k_neg, v_neg = attn.to_k(extra), attn.to_v(extra)
        k_neg, v_neg = (x.unflatten(-1, (-1, head_dim)).expand(q.shape[0], -1, -1, -1) for x in (k_neg, v_neg))
        return attention(q, k, v, layout="bnhd", negative=(k_neg, v_neg), negative_scale=self.scale)


def _steerable(module: torch.nn.Module) -> bool:
    processor = getattr(module, "processor", None)
    return (isinstance(module, Attention) and module.is_cross_attention
            and type(processor) in (AttnProcessor2_0, PydiffAttnProcessor, PydiffNegativeAwayAttnProcessor))


def set_negative_away_attention(model_or_pipe, negative_embeds: Optional[torch.Tensor], scale: float = 0.5) -> int:
    """NASA (module docstring) on every cross-attention of a diffusers model or pipeline (``Attention`` modules with
    ``AttnProcessor2_0`` or pydiff's processor: a UNet's text cross-attention), steering away from the negative prompt
    whose text-encoder embeddings are ``negative_embeds`` (1 or B, T, cross_attention_dim), by ``scale`` (finite;
    0 changes nothing). Setting it again replaces the prompt and scale; ``negative_embeds=None`` restores the
    processors it replaced. Returns the number of modules set (or restored).

    Raises ValueError before changing anything when the embeddings' width is not a module's context width, when no
    cross-attention can take it, or when one has QK norms or a head dim over the kernel's 256.
    """
    roots = _roots(model_or_pipe)
    modules = [m for root in roots for m in root.modules() if _steerable(m)]
    if negative_embeds is None:
        steered = [m for m in modules if isinstance(m.processor, PydiffNegativeAwayAttnProcessor)]
        for module in steered:
            module.set_processor(module.processor.previous)
        return len(steered)
    if not isinstance(negative_embeds, torch.Tensor) or negative_embeds.dim() != 3 or \
            not negative_embeds.is_floating_point() or 0 in negative_embeds.shape:
        shape = tuple(negative_embeds.shape) if isinstance(negative_embeds, torch.Tensor) else \
            type(negative_embeds).__name__
        raise ValueError(f"negative_embeds must be a floating-point tensor (1 or B, T, cross_attention_dim), got "
                         f"{shape}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if not modules:
        raise ValueError("no cross-attention to steer: set_negative_away_attention takes Attention modules with "
                         "an encoder context and AttnProcessor2_0 or pydiff's processor (a UNet's text "
                         "cross-attention)")
    for module in modules:
        width = module.to_kv.in_features if _fused_projections(module) else module.to_k.in_features
        if negative_embeds.shape[-1] != width:
            raise ValueError(f"negative_embeds has width {negative_embeds.shape[-1]}; the cross-attention takes "
                             f"contexts of width {width}")
        if module.norm_q is not None or module.norm_k is not None or _head_dim(module) > MAX_HEAD_DIM:
            raise ValueError(f"negative-away attention takes cross-attention without QK norms and with head dims up "
                             f"to {MAX_HEAD_DIM}; a module has norms {type(module.norm_q).__name__} / "
                             f"{type(module.norm_k).__name__} and head dim {_head_dim(module)}")
    for module in modules:
        previous = module.processor
        if isinstance(previous, PydiffNegativeAwayAttnProcessor):
            previous = previous.previous
        module.set_processor(PydiffNegativeAwayAttnProcessor(negative_embeds, scale, previous))
    return len(modules)


__all__ = ["PydiffNegativeAwayAttnProcessor", "set_negative_away_attention"]
