"""diffusers attention processors that run ``pydiff.attention``: one fused pass where diffusers runs several ops.

    from pydiff.integrations.diffusers import set_attention_backend
    set_attention_backend(pipe)   # or a model: UNet2DConditionModel, SD3Transformer2DModel, FluxTransformer2DModel,
                                  # HunyuanDiT2DModel, EasyAnimateTransformer3DModel, AllegroTransformer3DModel,
                                  # Flux2Transformer2DModel, QwenImageTransformer2DModel, PixArtTransformer2DModel,
                                  # ChromaTransformer2DModel, HunyuanVideoTransformer3DModel, WanTransformer3DModel,
                                  # CogVideoXTransformer3DModel, LTXVideoTransformer3DModel, ZImageTransformer2DModel,
                                  # Lumina2Transformer2DModel, CogView4Transformer2DModel, GlmImageTransformer2DModel,
                                  # HunyuanVideo15Transformer3DModel, LTX2VideoTransformer3DModel,
                                  # HiDreamImageTransformer2DModel, Flux3Transformer2DModel,
                                  # Krea2Transformer2DModel, Ideogram4Transformer2DModel,
                                  # BriaFibo2Transformer2DModel, CosmosTransformer3DModel,
                                  # Kandinsky5Transformer3DModel, MochiTransformer3DModel, PRXTransformer2DModel,
                                  # NucleusMoEImageTransformer2DModel, ErnieImageTransformer2DModel,
                                  # JoyImageEditTransformer3DModel, JoyImageEditPlusTransformer3DModel,
                                  # QwenImage21Transformer2DModel, MotifVideoTransformer3DModel,
                                  # AuraFlowTransformer2DModel, StableAudioDiTModel, ...

* ``PydiffAttnProcessor`` replaces ``AttnProcessor2_0`` (UNet/VAE self- and cross-attention): q, k, v are read as
  (B, N, H, D) views of the projections (no transpose copies) and the output is already (B, N, H*D).
* ``PydiffIPAdapterAttnProcessor`` replaces ``IPAdapterAttnProcessor2_0`` (a UNet's cross-attention with
  IP-Adapter image prompts): the text's and the first image prompt's attentions summed in one pass over q, on the
  stock processor's own weights (built from it: call ``set_attention_backend`` after ``load_ip_adapter``).
* ``PydiffCustomDiffusionAttnProcessor`` replaces ``CustomDiffusionAttnProcessor2_0`` (Custom Diffusion's
  fine-tuned key and value projections, and query and output ones), built from it the same way, on its weights.
* ``PydiffSD3IPAdapterAttnProcessor`` and ``PydiffFluxIPAdapterAttnProcessor`` replace SD3's and Flux's
  IP-Adapter processors (``SD3IPAdapterJointAttnProcessor2_0``, ``FluxIPAdapterAttnProcessor``), built from them
  the same way: the joint call as below, then the image prompt's attention (SD3's over [image keys; image-prompt
  keys], the prompt's keys a second stream of keys only; Flux's over each prompt's keys), its QK norms in the
  kernel's prologue.
* ``PydiffPAGIdentitySelfAttnProcessor`` and ``PydiffPAGCFGIdentitySelfAttnProcessor`` replace the PAG pipelines'
  perturbed-attention processors for UNets (``PAGIdentitySelfAttnProcessor2_0``,
  ``PAGCFGIdentitySelfAttnProcessor2_0``): the unperturbed part of the batch in the kernel, the perturbed part's
  identity attention as there.
* ``PydiffHunyuanDiTAttnProcessor`` replaces HunyuanDiT's ``HunyuanAttnProcessor2_0`` and its fused form
  (``FusedHunyuanAttnProcessor2_0``): the same steps with its RoPE in the prologue, on the queries alone in
  cross-attention (``key_rope`` tables that turn nothing).
* ``PydiffAllegroAttnProcessor`` replaces Allegro's ``AllegroAttnProcessor2_0``: the same steps with its 3-D RoPE in
  the prologue (the t, h and w thirds of each head turned by halves of their own: ``rope_sections=3``).
* ``PydiffStableAudioAttnProcessor`` replaces Stable Audio Open's ``StableAudioAttnProcessor2_0``: its
  grouped-query keys and values read as they are (the stock processor repeats them per query head), its partial
  rotary (half-split, on the first rot_dim channels) in the prologue, on the queries alone in cross-attention.
* ``PydiffSanaAttnProcessor`` replaces Sana's ``SanaAttnProcessor2_0`` (its cross-attention): the same, with its
  across-heads QK RMSNorms as modules first.
* ``PydiffSanaWMCrossAttnProcessor`` (0.42+) replaces SANA-WM's cross-attention processor the same way.
* ``PydiffJointAttnProcessor`` replaces SD3's ``JointAttnProcessor2_0``: image and text streams are attended
  jointly without concatenating q/k/v or splitting the output; the QK RMSNorms run inside the kernel.
* Both read fused projections too (``fuse_qkv_projections()``: one matmul for q, k and v), and so replace
  diffusers' ``FusedAttnProcessor2_0`` and, where a joint module has no QK norms, ``FusedJointAttnProcessor2_0``
  (which skips them); q, k and v are then strided views of the one projection.
* ``PydiffAuraFlowAttnProcessor`` replaces ``AuraFlowAttnProcessor2_0`` and its fused form (AuraFlow, Pony v7): the
  joint [text; image] call as SD3's, with the module's scale.
* ``PydiffFluxAttnProcessor`` replaces Flux's ``FluxAttnProcessor``: joint attention plus the QK RMSNorms and
  the RoPE table, applied by pydiff in one float32 pass per tensor (no torch op sequence, no concatenation).
* ``PydiffFlux2AttnProcessor`` and ``PydiffFlux2ParallelSelfAttnProcessor`` replace FLUX.2's processors (diffusers
  0.36+): the double-stream blocks' joint call as FLUX.1's, and the single-stream blocks' attention (whose one
  projection also feeds the MLP) with its QK RMSNorms and RoPE in the kernel. ``PydiffFlux2KVAttnProcessor`` and
  ``PydiffFlux2KVParallelSelfAttnProcessor`` (0.39+) replace FLUX.2 Klein KV's: the same, and in the steps after
  the first the reference image's cached keys and values as a second stream of keys only (no concatenation).
* ``PydiffHunyuanVideoAttnProcessor`` replaces HunyuanVideo's ``HunyuanVideoAttnProcessor2_0``: [video; text]
  attention (joint, or over a single-stream block's joined tokens) with the RoPE on the video tokens only and the
  text padding as the key mask.
* ``PydiffMotifVideoAttnProcessor`` (0.39+) replaces Motif-Video's ``MotifVideoAttnProcessor2_0``: the same
  [video; text] call (joint in the dual-stream blocks, over the joined tokens in the single-stream ones), its text
  padding as the key mask; ``PydiffMotifVideoCrossAttnProcessor`` its optional text cross-attention (the RoPE on
  the queries alone).
* ``PydiffHunyuanVideo15AttnProcessor`` replaces HunyuanVideo 1.5's ``HunyuanVideo15AttnProcessor2_0`` (diffusers
  0.36+): the same joint call, the stock processor's (B, 1, N, N) outer-product mask read as the tokens' key mask,
  the padding's query rows zeroed (no N x N mask built).
* ``PydiffHiDreamAttnProcessor`` replaces HiDream-I1's ``HiDreamAttnProcessor``: [image; text] as a joint call,
  its rotation-matrix RoPE read in place as the prologue's tables (identity pairs where it turns half the head dim).
* ``PydiffOmniGenAttnProcessor`` replaces OmniGen's ``OmniGenAttnProcessor2_0``: its half-split RoPE in the
  prologue, its (B, 1, N, N) additive mask (causal condition, bidirectional images) the kernel's mask per query.
* ``PydiffHeliosAttnProcessor`` (0.39+) replaces Helios's ``HeliosAttnProcessor``: its RoPE (a (B, N, 2D) table)
  in the prologue, the history keys' amplification before it, its cross-attention to the text.
* ``PydiffQwenImageAttnProcessor`` replaces Qwen-Image's ``QwenDoubleStreamAttnProcessor2_0`` (diffusers 0.39+):
  the same joint call, its complex RoPE as cos/sin tables, and the text padding as the kernel's key mask.
* ``PydiffQwenImage21AttnProcessor`` and ``PydiffQwenImage21FlexAttnProcessor`` (0.42+) replace Qwen-Image 2.1's
  ``QwenImage21AttnProcessor`` and ``QwenImage21FlexAttnProcessor``: in the steps after the first, the target
  image's queries over the KV cache's prefix (text and condition images) and its own keys, the cached ones a second
  stream of keys only; the block-causal prefill as one block-sparse call (the flex one's BlockMask read as compiled
  flex attention reads it, eagerly).
* ``PydiffWanAttnProcessor`` replaces Wan's ``WanAttnProcessor`` (Wan 2.1/2.2, VACE): the RoPE in the kernel's
  prologue, and image-to-video cross-attention's two attentions (text, image context) summed in one pass over q.
* ``PydiffWanAnimateFaceBlockAttnProcessor`` (0.36+) replaces Wan-Animate's ``WanAnimateFaceBlockAttnProcessor``
  (its face blocks' cross-attention to the motion vectors, frame by frame): one call over the B*T frames' batch
  rows of views, its per-head QK RMSNorms in the prologue.
* ``PydiffWanAnimate2CrossAttnProcessor`` (0.42+) replaces Wan-Animate 2's cross-attention processor the same way,
  and ``PydiffWanAnimate2AttnProcessor`` its self-attention: the generation pass's in-context attention over the
  model's flex BlockMask as one block-sparse call (its partial blocks as tiles), eagerly, where the stock processor
  needs torch.compile.
* ``PydiffAnyFlowAttnProcessor`` and ``PydiffAnyFlowCrossAttnProcessor`` (0.39+) replace AnyFlow's (and AnyFlow
  FAR's copies), Wan-style; ``PydiffAnyFlowCausalAttnProcessor`` AnyFlow FAR's causal one: its KV cache as the
  stock one keeps it, the chunk-causal BlockMask as one block-sparse call, eagerly.
* ``PydiffAudioDiTSelfAttnProcessor`` and ``PydiffAudioDiTCrossAttnProcessor`` (0.39+) replace LongCat-AudioDiT's:
  the RoPE (the prompt's keys by tables of their own) in the prologue, the token masks as key masks.
* ``PydiffAceStepAttnProcessor`` (0.39+) replaces ACE-Step 1.5's: GQA, QK norms and RoPE in the prologue, its
  sliding-window band mask read as given, the band's empty 64 x 64 blocks skipped (``mask_block_mask``, once per
  forward).
* ``PydiffCosmos3AttnProcessor`` (0.39+) replaces Cosmos 3's: the understanding pathway's causal attention
  (``causal``), the generation pathway's over [understanding; generation] keys without concatenation.
* ``PydiffMiniMaxMusic3AttnProcessor`` and ``PydiffMiniMaxMusic3DepthAttnProcessor`` (0.42+) replace MiniMax Music
  3's: its partial rotary in the prologue, its depth decoder's causal attention.
* ``PydiffMiniMaxH3AttnProcessor`` (0.42+) replaces MiniMax-H3's: its QK norms and partial rotary in the prologue.
* ``PydiffStableAudio3SelfAttnProcessor`` and ``PydiffStableAudio3CrossAttnProcessor`` (0.42+) replace Stable Audio
  3's differential attention (two calls, their QK norms and partial rotary in the prologue, the context mask as a
  key mask).
* ``PydiffCogVideoXAttnProcessor`` replaces ``CogVideoXAttnProcessor2_0`` and its fused form (CogVideoX, ConsisID,
  CogView3-Plus): [text; video] attention as a joint call, the RoPE on the video tokens only.
* ``PydiffLTXVideoAttnProcessor`` replaces ``LTXVideoAttnProcessor``: the RoPE, whose tables span every head's
  channels, in the kernel's prologue as per-head tables.
* ``PydiffLTX2AttnProcessor`` replaces LTX-2's ``LTX2AudioVideoAttnProcessor`` (diffusers 0.37+): the same for its
  video and audio self-attention (interleaved or split tables), text cross-attention and audio-video
  cross-attention (the keys turned by tables of their own: the kernel's ``key_rope``), then its per-head gates.
  ``PydiffLTX2PerturbedAttnProcessor`` (0.38+) replaces ``LTX2PerturbedAttnProcessor`` (models built for
  spatio-temporal guidance) the same way, the perturbed samples' outputs blended with their values.
  ``PydiffLTX2VaeNeighborhoodAttnProcessor`` (0.42+) replaces ``LTX2VideoVaeNeighborhoodAttnProcessor``, its
  diffusion decoder's (VAE's) 3-D neighborhood attention: ``pydiff.neighborhood``'s block-sparse attention over
  the grid's tiles (the stock processor's flex BlockMask evaluates every query and key: N^2), its QK RMSNorms and
  RoPE in the prologue.
* ``PydiffZImageAttnProcessor`` (diffusers 0.36+) and ``PydiffLumina2AttnProcessor`` replace Z-Image's
  ``ZSingleStreamAttnProcessor`` and ``Lumina2AttnProcessor2_0``: the QK RMSNorms and the complex RoPE (one table
  per sample) in the prologue, the token padding as the key mask; Lumina 2's grouped-query heads read as they are
  (the stock processor repeats k and v per query head) and its proportional-attention scale.
* ``PydiffEasyAnimateAttnProcessor`` replaces EasyAnimate's ``EasyAnimateAttnProcessor2_0``: CogVideoX's
  [text; video] call (joint in its MMDiT blocks, over the joined tokens in the others).
* ``PydiffCogView4AttnProcessor`` replaces ``CogView4AttnProcessor``: CogVideoX's joint call with the half-split
  RoPE, and the stock processor's text mask (a float mask per query) in the kernel. ``PydiffGlmImageAttnProcessor``
  (0.37+) replaces GLM-Image's ``GlmImageAttnProcessor``: the same, and in image editing the condition images'
  cached keys and values beside each step's as a second stream of keys only (no concatenation).
* ``PydiffFlux3AttnProcessor`` (diffusers 0.42+), ``PydiffKrea2AttnProcessor`` and ``PydiffIdeogram4AttnProcessor``
  (0.39+), ``PydiffBriaFibo2AttnProcessor`` (0.42+) replace those models' self-attention processors: the QK RMSNorms
  (Krea 2's zero-centred ones too) and the RoPE (interleaved; Ideogram 4's half-split tables per batch row; FIBO 2's
  complex ones read in place) in the prologue, Krea 2's grouped-query heads read as they are and its gate after,
  Ideogram 4's block-diagonal mask of packed samples read per query, FIBO 2's cross-attention with its padding.
* ``PydiffPRXAttnProcessor`` (0.36+) and ``PydiffNucleusMoEAttnProcessor`` (0.39+) replace PRX's and
  Nucleus-Image's processors, whose image queries attend over the image's and the text's keys (the text has no
  queries): the text's keys and values a second stream of keys only (no concatenation), each stream's QK norms
  and RoPE in the prologue, the text padding as the key mask; Nucleus-Image's grouped-query heads read as they are
  and the text keys diffusers' text K/V cache holds read as they are.
* ``PydiffErnieImageAttnProcessor``, ``PydiffJoyImageAttnProcessor`` (0.39+) and
  ``PydiffJoyImageEditPlusAttnProcessor`` (0.42+) replace ERNIE-Image's, JoyImage-Edit's and JoyImage-Edit-Plus's:
  their self- or joint attention with the QK norms and RoPE in the prologue (ERNIE-Image's an angle per channel,
  turned with its partner in the other half; JoyImage's per-stream tables joined), their text padding as the key
  mask.
* ``PydiffCosmosAttnProcessor`` and ``PydiffCosmos25AttnProcessor`` replace Cosmos's ``CosmosAttnProcessor2_0`` and
  (0.37+) ``CosmosAttnProcessor2_5``: self-attention with the QK RMSNorms and the half-split RoPE in the prologue,
  cross-attention with the text padding as the key mask, Predict 2.5's image-context attention summed.
* ``PydiffMochiAttnProcessor`` replaces Mochi's ``MochiAttnProcessor2_0``: [video; text] as one joint call over
  the batch (the stock processor loops over the samples), its per-head RoPE on the video tokens, the text padding
  as the key mask.
* ``PydiffKandinsky5AttnProcessor`` (0.36+) replaces ``Kandinsky5AttnProcessor``: the QK RMSNorms and the
  rotation-matrix RoPE (as HiDream's) in the prologue; its NABLA sparse attention block-sparse in the kernel (the
  key blocks NABLA leaves out never read, with no torch.compile: the stock processor's flex attention skips them
  only compiled).
* ``PydiffKandinsky6SRAttnProcessor`` (0.42+) replaces Kandinsky 6 SR's ``Kandinsky6SRAttnProcessor``: its NABLA
  attention, block-sparse in the kernel, as Kandinsky 5's.
* ``PydiffKandinsky6AttnProcessor`` (0.42+) replaces ``Kandinsky6AttnProcessor``: the same with the queries and
  keys turned by tables of their own (its video-audio cross-attention), the text padding as the key mask.
* Copies diffusers keeps in other models' files (``_copies``: ChronoEdit's, SkyReels-V2's and Wan-Animate's of
  Wan's processor, Bria's, Bria FIBO's, LongCat-Image's and Ovis-Image's of Flux's, HunyuanImage 2.1's of
  HunyuanVideo's, the SANA-WM refiner's two of LTX-2's, Sana-Video's of Sana's, the Z-Image ControlNet's of
  Z-Image's) get the original's pydiff processor.

Outputs equal the stock processors' (same math; pydiff keeps the norm and RoPE in float32). Attention masks go into
the kernel (``attn_mask``), read in place: those the same for every query (PixArt's and Sana's text padding:
diffusers' (B, 1, N_k) additive masks) as its key mask, those that differ per query (Chroma's outer product of its
token mask, HunyuanVideo's token refiner) one tile per key block. Calls the kernel does not take go to the stock
processor itself: masks of other dtypes and head dims over 256 (the VAE's mid-block attention: one head of 512
channels in every Stable Diffusion VAE; ``set_attention_backend`` leaves such modules their stock processor).
QK norms that are not RMSNorms over the head dim are applied as modules before the fused call.
"""

from __future__ import annotations

import functools
import importlib
import math
import weakref
from typing import Dict, List, Optional, Tuple

import diffusers
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    AllegroAttnProcessor2_0,
    AttnAddedKVProcessor2_0,
    AttnProcessor2_0,
    AuraFlowAttnProcessor2_0,
    CogVideoXAttnProcessor2_0,
    CustomDiffusionAttnProcessor2_0,
    FusedAttnProcessor2_0,
    FusedAuraFlowAttnProcessor2_0,
    FusedCogVideoXAttnProcessor2_0,
    FusedHunyuanAttnProcessor2_0,
    FusedJointAttnProcessor2_0,
    HunyuanAttnProcessor2_0,
    PAGCFGHunyuanAttnProcessor2_0,
    PAGCFGIdentitySelfAttnProcessor2_0,
    PAGCFGJointAttnProcessor2_0,
    PAGHunyuanAttnProcessor2_0,
    PAGIdentitySelfAttnProcessor2_0,
    PAGJointAttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
    JointAttnProcessor2_0,
    LuminaAttnProcessor2_0,
    MochiAttnProcessor2_0,
    SD3IPAdapterJointAttnProcessor2_0,
    StableAudioAttnProcessor2_0,
)
from diffusers.models.normalization import MochiRMSNorm
from diffusers.models.normalization import RMSNorm as DiffusersRMSNorm
from diffusers.models.transformers.sana_transformer import SanaAttnProcessor2_0
from diffusers.models.transformers.transformer_cogview4 import CogView4AttnProcessor
from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxIPAdapterAttnProcessor
from diffusers.models.transformers.transformer_hidream_image import HiDreamAttnProcessor
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor
from diffusers.models.transformers.transformer_lumina2 import Lumina2AttnProcessor2_0
from diffusers.models.transformers.transformer_omnigen import OmniGenAttnProcessor2_0
from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0
from diffusers.models.transformers.transformer_wan import (
    WanAttnProcessor,
    _get_added_kv_projections,
    _get_qkv_projections,
)

from pydiff.attention import MAX_HEAD_DIM, attention, block_mask_tiles, mask_block_mask
from pydiff.neighborhood import neighborhood_layout
from pydiff.reference.attention import rope_reference


def _stock_class(module: str, name: str):
    """The processor class ``name`` of ``diffusers.models.transformers.<module>`` (of ``diffusers.models.<module>``
    where it names its package: "unets.unet_dreamlite"); None where this diffusers has none."""
    try:
        package = "diffusers.models" if "." in module else "diffusers.models.transformers"
        return getattr(importlib.import_module(f"{package}.{module}"), name)
    except (ImportError, AttributeError):
        return None


# (diffusers 0.36+)
Flux2AttnProcessor = _stock_class("transformer_flux2", "Flux2AttnProcessor")
Flux2ParallelSelfAttnProcessor = _stock_class("transformer_flux2", "Flux2ParallelSelfAttnProcessor")
Flux2KVAttnProcessor = _stock_class("transformer_flux2", "Flux2KVAttnProcessor")  # (0.39+)
Flux2KVParallelSelfAttnProcessor = _stock_class("transformer_flux2", "Flux2KVParallelSelfAttnProcessor")
ZSingleStreamAttnProcessor = _stock_class("transformer_z_image", "ZSingleStreamAttnProcessor")
HunyuanVideo15AttnProcessor2_0 = _stock_class("transformer_hunyuan_video15", "HunyuanVideo15AttnProcessor2_0")
WanAnimateFaceBlockAttnProcessor = _stock_class("transformer_wan_animate", "WanAnimateFaceBlockAttnProcessor")
LTX2AudioVideoAttnProcessor = _stock_class("transformer_ltx2", "LTX2AudioVideoAttnProcessor")  # (0.37+)
LTX2PerturbedAttnProcessor = _stock_class("transformer_ltx2", "LTX2PerturbedAttnProcessor")  # (0.38+)
Kandinsky5AttnProcessor = _stock_class("transformer_kandinsky", "Kandinsky5AttnProcessor")  # (0.36+)
Krea2AttnProcessor = _stock_class("transformer_krea2", "Krea2AttnProcessor")  # (0.39+)
Krea2RMSNorm = _stock_class("transformer_krea2", "Krea2RMSNorm")
Ideogram4AttnProcessor = _stock_class("transformer_ideogram4", "Ideogram4AttnProcessor")  # (0.39+)
Flux3AttnProcessor = _stock_class("transformer_flux3", "Flux3AttnProcessor")  # (0.42+)
BriaFibo2AttnProcessor = _stock_class("transformer_bria_fibo2", "BriaFibo2AttnProcessor")  # (0.42+)
CosmosAttnProcessor2_5 = _stock_class("transformer_cosmos", "CosmosAttnProcessor2_5")  # (0.37+)
GlmImageAttnProcessor = _stock_class("transformer_glm_image", "GlmImageAttnProcessor")  # (0.37+)
PRXAttnProcessor2_0 = _stock_class("transformer_prx", "PRXAttnProcessor2_0")  # (0.36+)
NucleusMoEAttnProcessor2_0 = _stock_class("transformer_nucleusmoe_image", "NucleusMoEAttnProcessor2_0")  # (0.39+)
ErnieImageAttnProcessor = _stock_class("transformer_ernie_image", "ErnieImageSingleStreamAttnProcessor")  # (0.39+)
JoyImageAttnProcessor = _stock_class("transformer_joyimage", "JoyImageAttnProcessor")  # (0.39+)
JoyImageEditPlusAttnProcessor = _stock_class("transformer_joyimage_edit_plus",  # (0.42+)
                                             "JoyImageEditPlusAttnProcessor")
QwenImage21AttnProcessor = _stock_class("transformer_qwenimage21", "QwenImage21AttnProcessor")  # (0.42+)
QwenImage21FlexAttnProcessor = _stock_class("transformer_qwenimage21", "QwenImage21FlexAttnProcessor")  # (0.42+)
HeliosAttnProcessor = _stock_class("transformer_helios", "HeliosAttnProcessor")  # (0.39+)
MotifVideoAttnProcessor2_0 = _stock_class("transformer_motif_video", "MotifVideoAttnProcessor2_0")  # (0.39+)
MotifVideoCrossAttnProcessor2_0 = _stock_class("transformer_motif_video", "MotifVideoCrossAttnProcessor2_0")
SanaWMCrossAttnProcessor = _stock_class("transformer_sana_wm", "SanaWMCrossAttnProcessor")  # (0.42+)
Kandinsky6AttnProcessor = _stock_class("transformer_kandinsky6", "Kandinsky6AttnProcessor")  # (0.42+)
Kandinsky6SRAttnProcessor = _stock_class("transformer_kandinsky6_sr", "Kandinsky6SRAttnProcessor")  # (0.42+)
EasyAnimateAttnProcessor2_0 = _stock_class("transformer_easyanimate", "EasyAnimateAttnProcessor2_0")
WanAnimate2CrossAttnProcessor = _stock_class("transformer_wan_animate_2", "WanAnimate2CrossAttnProcessor")  # (0.42+)
WanAnimate2AttnProcessor = _stock_class("transformer_wan_animate_2", "WanAnimate2AttnProcessor")
MiniMaxH3AttnProcessor = _stock_class("transformer_minimax_h3", "MiniMaxH3AttnProcessor")  # (0.42+)
StableAudio3SelfAttnProcessor = _stock_class("transformer_stable_audio3", "StableAudio3SelfAttnProcessor")  # (0.42+)
StableAudio3CrossAttnProcessor = _stock_class("transformer_stable_audio3", "StableAudio3CrossAttnProcessor")
StableAudio3RMSNorm = _stock_class("transformer_stable_audio3", "StableAudio3RMSNorm")
AnyFlowAttnProcessor = _stock_class("transformer_anyflow", "AnyFlowAttnProcessor")  # (0.39+)
AnyFlowCrossAttnProcessor = _stock_class("transformer_anyflow", "AnyFlowCrossAttnProcessor")
AnyFlowCausalAttnProcessor = _stock_class("transformer_anyflow_far", "AnyFlowCausalAttnProcessor")
AudioDiTSelfAttnProcessor = _stock_class("transformer_longcat_audio_dit", "AudioDiTSelfAttnProcessor")  # (0.39+)
AudioDiTCrossAttnProcessor = _stock_class("transformer_longcat_audio_dit", "AudioDiTCrossAttnProcessor")
AceStepAttnProcessor2_0 = _stock_class("ace_step_transformer", "AceStepAttnProcessor2_0")  # (0.39+)
Cosmos3AttnProcessor = _stock_class("transformer_cosmos3", "Cosmos3AttnProcessor")  # (0.39+)
Cosmos3NemotronRMSNorm = _stock_class("transformer_cosmos3", "Cosmos3NemotronRMSNorm")
MiniMaxMusic3AttnProcessor = _stock_class("transformer_minimax_music3", "MiniMaxMusic3AttnProcessor")  # (0.42+)
MiniMaxMusic3DepthAttnProcessor = _stock_class("minimax_music3_rvq_depth_decoder", "MiniMaxMusic3DepthAttnProcessor")
LTX2VideoVaeNeighborhoodAttnProcessor = _stock_class("autoencoders.ltx2_diffusion_decoder",  # (0.42+)
                                                     "LTX2VideoVaeNeighborhoodAttnProcessor")
LTX2VideoVaeNeighborhoodNattenProcessor = _stock_class("autoencoders.ltx2_diffusion_decoder",
                                                       "LTX2VideoVaeNeighborhoodNattenProcessor")


def _stock(stock_type, model: str, version: str):
    """A new ``stock_type``, diffusers' processor for ``model``; an ImportError naming the diffusers version that
    brought it where this one has none (None)."""
    if stock_type is None:
        raise ImportError(f"the {model} processors need diffusers {version} or newer, found {diffusers.__version__}")
    return stock_type()

#: Qwen-Image's stock processor masks the text padding itself (from encoder_hidden_states_mask) and refuses an
#: attention_mask since diffusers 0.39; before, it took an attention_mask as given (0.38's transformer built the
#: joint mask, 0.35-0.37 none) and ignored the text mask. Ours does what 0.39 does, so it replaces only there.
_QWEN_MASKS_TEXT = tuple(int(part) for part in diffusers.__version__.split(".")[:2]) >= (0, 39)


def _rms_norm_params(norm, head_dim: int, device: torch.device) -> Optional[Tuple[torch.Tensor, Optional[float]]]:
    """(weight, eps) when ``norm`` is an RMSNorm over the head dim that the kernel can apply; None otherwise.

    eps None means torch.nn.RMSNorm's default (the input dtype's machine epsilon).
    """
    if isinstance(norm, torch.nn.RMSNorm):
        if tuple(norm.normalized_shape) != (head_dim,):
            return None
        weight, eps = norm.weight, norm.eps
    elif isinstance(norm, DiffusersRMSNorm):
        if norm.bias is not None or tuple(norm.dim) != (head_dim,):
            return None
        weight, eps = norm.weight, norm.eps
    elif isinstance(norm, MochiRMSNorm):
        if tuple(norm.dim) != (head_dim,):
            return None
        weight, eps = norm.weight, norm.eps
    elif Krea2RMSNorm is not None and isinstance(norm, Krea2RMSNorm):  # (a zero-centred scale: 1 + weight)
        if norm.dim != head_dim:
            return None
        weight, eps = norm.weight + 1.0, norm.eps
    elif Cosmos3NemotronRMSNorm is not None and isinstance(norm, Cosmos3NemotronRMSNorm):  # (in float32, as here)
        if tuple(norm.weight.shape) != (head_dim,):
            return None
        weight, eps = norm.weight, norm.eps
    elif StableAudio3RMSNorm is not None and isinstance(norm, StableAudio3RMSNorm):  # (in float32, as the prologue)
        if tuple(norm.gamma.shape) != (head_dim,):
            return None
        weight, eps = norm.gamma, norm.eps
    else:
        return None
    if weight is None:
        weight = torch.ones(head_dim, device=device)
    return weight.detach(), eps


def _plan_norms(norms: Dict[str, Optional[torch.nn.Module]], head_dim: int, dtype: torch.dtype,
                device: torch.device):
    """Split QK norms into those fused into the kernel (one shared eps) and those applied as modules first."""
    fused: Dict[str, torch.Tensor] = {}
    separate: Dict[str, torch.nn.Module] = {}
    eps: Optional[float] = None
    for name, norm in norms.items():
        if norm is None:
            continue
        params = _rms_norm_params(norm, head_dim, device)
        if params is not None:
            weight, norm_eps = params
            norm_eps = torch.finfo(dtype).eps if norm_eps is None else float(norm_eps)
            if eps is None or norm_eps == eps:
                eps = norm_eps
                fused[name] = weight
                continue
        separate[name] = norm
    return fused, separate, (1e-6 if eps is None else eps)


def _head_dim(attn) -> int:
    """The head dim a stock processor splits ``attn``'s key projection into (the Flux models' attention modules name
    it; diffusers' ``Attention`` does not, Wan's names its key width differently, HiDream's only its inner dim,
    Bria FIBO 2's and Kandinsky 5's only their projections; Stable Audio 3's calls it dim_heads)."""
    if getattr(attn, "head_dim", None) or getattr(attn, "dim_heads", None):
        return getattr(attn, "head_dim", None) or attn.dim_heads
    kv_width = getattr(attn, "inner_kv_dim", None) or getattr(attn, "kv_inner_dim", None) or \
        getattr(attn, "inner_dim", None) or (getattr(attn, "to_q", None) or attn.to_query).out_features
    return kv_width // (getattr(attn, "heads", None) or attn.num_heads)


_MASK_DTYPES = (torch.bool, torch.float16, torch.bfloat16, torch.float32)


def _kernel_reads(mask: torch.Tensor) -> bool:
    """Whether the kernel reads an SDPA mask as given (Flux's and HunyuanVideo's processors pass theirs to SDPA
    unchanged): its dtype; it takes every shape SDPA broadcasts, per key or per query."""
    return mask.dtype in _MASK_DTYPES


def _processor_mask(attn, mask: Optional[torch.Tensor], batch: int, keys: int) -> Optional[torch.Tensor]:
    """diffusers' attention mask for ``AttnProcessor2_0`` as the kernel's, (B, H or 1, N_q or 1, N_k); None where
    there is none or it has a dtype the kernel does not read. A mask of one batch row per sample, (B, N_q or 1, N_k) or
    (B, 1, N_q or 1, N_k) (the UNet's, PixArt's and Sana's text padding, HunyuanVideo's token refiner), is used as a
    view: ``prepare_attention_mask`` would repeat it for every head."""
    if mask is None or not _kernel_reads(mask):
        return None
    if mask.shape[0] == batch and mask.shape[-1] == keys and (mask.dim() == 3 or (mask.dim() == 4 and
                                                                              mask.shape[1] == 1)):
        return mask[:, None] if mask.dim() == 3 else mask
    mask = attn.prepare_attention_mask(mask, keys, batch)
    return mask.view(batch, attn.heads, -1, mask.shape[-1])


def _call_mask(attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor],
               attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``_processor_mask`` of an ``Attention`` call, its keys the encoder's tokens, or the image's, flattened as the
    stock processors flatten them."""
    source = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
    keys = source.shape[2] * source.shape[3] if source.ndim == 4 else source.shape[1]
    return _processor_mask(attn, attention_mask, source.shape[0], keys)


def _key_mask(mask: Optional[torch.Tensor], batch: int, keys: int) -> Optional[torch.Tensor]:
    """A mask of one row per sample, (B, N_k), as the kernel's key mask (B, 1, 1, N_k), a view (as diffusers'
    attention dispatch widens it for SDPA); any other mask (or None) as given."""
    if mask is not None and mask.dim() == 2 and tuple(mask.shape) == (batch, keys):
        return mask[:, None, None, :]
    return mask


def _fused_projections(attn) -> bool:
    """Whether ``attn``'s projections are fused (``fuse_qkv_projections``): one ``to_qkv`` (self-attention) or
    ``to_kv`` (cross-attention), and ``to_added_qkv`` for a joint module's second stream."""
    return getattr(attn, "fused_projections", False)


class _RankLocal:
    """Base of pydiff's processors: they attend over the tokens they are given. diffusers' context parallelism
    (``enable_parallelism`` with a context-parallel config: each rank holds a slice of the tokens) sets
    ``_parallel_config`` on every processor that has the attribute and expects it to attend across ranks (ring or
    all-to-all); on ours, setting one raises instead of leaving each rank's attention silently local.
    ``set_attention_backend`` leaves the stock processors of a model already under context parallelism."""

    @property
    def _parallel_config(self):
        return None

    @_parallel_config.setter
    def _parallel_config(self, config) -> None:
        if config is not None:
            raise NotImplementedError(
                f"{type(self).__name__} does not run diffusers' context parallelism (the kernel attends over one "
                f"rank's tokens): enable it on the model's stock processors, before set_attention_backend, which "
                f"then leaves them")


class PydiffAttnProcessor(_RankLocal):
    """Drop-in for diffusers' ``AttnProcessor2_0`` and, on fused projections, ``FusedAttnProcessor2_0``
    (``Attention``: UNet and VAE self- and cross-attention), and for DreamLite's ``DreamLiteAttnProcessor2_0``
    (its copy with grouped-query heads, which the kernel reads as they are: no repeated keys). ``stock_type``: the
    stock processor for the calls the kernel does not take."""

    def __init__(self, stock_type=AttnProcessor2_0):
        self.stock, self.stock_fused = stock_type(), FusedAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args, **kwargs) -> torch.Tensor:
        mask = _call_mask(attn, hidden_states, encoder_hidden_states, attention_mask)
        if attn.inner_dim // attn.heads > MAX_HEAD_DIM or (attention_mask is not None and mask is None):
            stock = self.stock_fused if _fused_projections(attn) else self.stock
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self._forward(attn, hidden_states, encoder_hidden_states, mask, temb)

    def _attend(self, attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                head_dim: int, extra) -> torch.Tensor:
        """The attention of (B, N, H, D) views q, k, v with the module's QK norms; ``extra``: a subclass's."""
        return _streams_attention([(q, k, v, attn.norm_q, attn.norm_k)], head_dim, None, mask)

    def _forward(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor],
                 mask: Optional[torch.Tensor], temb: Optional[torch.Tensor], extra=None) -> torch.Tensor:
        """The stock processor's steps around the attention (``_attend``), the kernel's mask ``mask`` given."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        if encoder_hidden_states is not None and attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        if _fused_projections(attn) and encoder_hidden_states is None:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if _fused_projections(attn):
                key, value = attn.to_kv(source).chunk(2, dim=-1)
            else:
                key, value = attn.to_k(source), attn.to_v(source)
        head_dim = query.shape[-1] // attn.heads
        # (B, N, H, D) views of the projections: the kernel reads them through strides, no transposed copies (k
        # and v with fewer heads where the module has kv_heads: grouped-query attention)
        q = query.unflatten(-1, (attn.heads, head_dim))
        k = key.unflatten(-1, (-1, head_dim))
        v = value.unflatten(-1, (-1, head_dim))

        hidden_states = self._attend(attn, q, k, v, mask, head_dim, extra).flatten(2)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class PydiffAttnAddedKVProcessor(_RankLocal):
    """Drop-in for diffusers' ``AttnAddedKVProcessor2_0`` (the simple cross-attention blocks of DeepFloyd IF's and
    UnCLIP's UNets): the image's queries over [the text's added keys; the image's own keys] as a joint call with a
    stream of keys only (no concatenation), or over the text's alone with ``only_cross_attention``; the feature map
    read through strides. Masked calls keep the stock processor."""

    def __init__(self):
        self.stock = AttnAddedKVProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, *args, **kwargs) -> torch.Tensor:
        if attention_mask is not None or args or kwargs or attn.inner_dim // attn.heads > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        residual = hidden_states
        tokens = hidden_states.view(hidden_states.shape[0], hidden_states.shape[1], -1).transpose(1, 2)
        if encoder_hidden_states is None:
            encoder_hidden_states = tokens
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
        head_dim = attn.inner_dim // attn.heads
        q = attn.to_q(tokens).unflatten(-1, (attn.heads, head_dim))
        k, v = (proj(encoder_hidden_states).unflatten(-1, (attn.heads, head_dim))
                for proj in (attn.add_k_proj, attn.add_v_proj))
        if attn.only_cross_attention:
            out = attention(q, k, v, layout="bnhd")
        else:
            own = (q[:, :0], *(proj(tokens).unflatten(-1, (attn.heads, head_dim)) for proj in (attn.to_k, attn.to_v)))
            out = attention(q, k, v, layout="bnhd", joint=own)[0]
        out = attn.to_out[1](attn.to_out[0](out.flatten(2)))
        return out.transpose(-1, -2).reshape(residual.shape) + residual


class PydiffLuminaAttnProcessor(_RankLocal):
    """Drop-in for diffusers' ``LuminaAttnProcessor2_0`` (Lumina-Next): grouped-query attention (the key heads
    read as they are, not repeated), its QK norms (across heads) as modules, the queries' and keys' complex RoPE
    (each its own, or none) in the prologue, the key mask, its proportional attention's scale. Returns (B, N, H, D)
    heads, as the stock processor does."""

    def __init__(self):
        self.stock = LuminaAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None, query_rotary_emb=None, key_rotary_emb=None,
                 base_sequence_length: Optional[int] = None) -> torch.Tensor:
        batch, tokens = hidden_states.shape[:2]
        if hidden_states.ndim != 3 or attention_mask is None or attention_mask.numel() != batch * \
                encoder_hidden_states.shape[1] or attn.inner_dim // attn.heads > MAX_HEAD_DIM or \
                any(f is not None and not _per_row_complex(f) for f in (query_rotary_emb, key_rotary_emb)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                              key_rotary_emb, base_sequence_length)
        query, key = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = query.shape[-1] // attn.heads
        query = query if attn.norm_q is None else attn.norm_q(query)
        key = key if attn.norm_k is None else attn.norm_k(key)
        q, k, v = (t.to(value.dtype).unflatten(-1, (-1, head_dim)) for t in (query, key, value))
        scale = None
        if key_rotary_emb is not None:
            scale = attn.scale if base_sequence_length is None else \
                math.sqrt(math.log(tokens, base_sequence_length)) * attn.scale
        rope = key_rope = None
        if query_rotary_emb is not None:
            rope = _complex_rope(query_rotary_emb)
            key_rope = _unturned(k.shape[1], head_dim, k.device) if key_rotary_emb is None else None
        if key_rotary_emb is not None and key_rotary_emb is not query_rotary_emb:
            key_rope = _complex_rope(key_rotary_emb)
        mask = attention_mask.bool().view(batch, 1, 1, -1)
        return attention(q, k, v, layout="bnhd", attn_mask=mask, rope=rope, key_rope=key_rope, scale=scale)


def _adopt(processor: torch.nn.Module, stock: torch.nn.Module) -> None:
    """Set up ``processor``, a pydiff processor that is also a stock processor's class holding weights (IP-Adapter's,
    Custom Diffusion's), as a copy of ``stock`` (an instance of that class): its settings and the same weight
    modules, so that the model's state dict, ``set_ip_adapter_scale`` and ``unload_ip_adapter`` see what they saw;
    ``processor.stock`` is the stock call on them, for the calls the kernel does not take."""
    torch.nn.Module.__init__(processor)
    for name, value in vars(stock).items():  # (its settings: scale, num_tokens, ..., the training flag)
        if not name.startswith("_"):
            setattr(processor, name, value)
    for name, module in stock.named_children():  # (to_k_ip, to_v_ip, ...: the same modules)
        setattr(processor, name, module)
    # (a partial, so no module of its own is registered)
    processor.stock = processor.stock_fused = functools.partial(type(stock).__call__, processor)


class PydiffIPAdapterAttnProcessor(PydiffAttnProcessor, IPAdapterAttnProcessor2_0):
    """Drop-in for ``IPAdapterAttnProcessor2_0`` (a UNet's cross-attention with IP-Adapter image prompts): the text's
    attention and the first image prompt's, scaled, summed in one pass over q (the kernel's negative-prompt stream
    at -scale: out = A(q, k, v) + scale A(q, k_ip, v_ip)), each further image prompt one call more. Built from the
    stock processor it replaces, it holds that processor's settings and the same projection modules, so the model's
    state dict, ``set_ip_adapter_scale`` and ``unload_ip_adapter`` see what they saw (it is an
    ``IPAdapterAttnProcessor2_0``). Calls with an attention mask, IP-Adapter masks or per-image scales take the
    stock processor's path. Like it, the module's QK norms are not applied."""

    def __init__(self, stock: IPAdapterAttnProcessor2_0):
        _adopt(self, stock)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 scale: float = 1.0, ip_adapter_masks=None) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, tuple) or attention_mask is not None or \
                ip_adapter_masks is not None or any(isinstance(s, list) for s in self.scale) or \
                _fused_projections(attn) or _head_dim(attn) > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale,
                              ip_adapter_masks)
        text, images = encoder_hidden_states
        return self._forward(attn, hidden_states, text, None, temb, extra=images)

    def _attend(self, attn, q, k, v, mask, head_dim, extra) -> torch.Tensor:
        prompts = [(s, x, to_k, to_v) for s, x, to_k, to_v in zip(self.scale, extra, self.to_k_ip, self.to_v_ip)
                   if s != 0]  # (a scale of 0 skips its prompt, as in the stock processor)

        def heads(projection, x):  # (several images per prompt: their tokens one key sequence)
            return projection(x).reshape(q.shape[0], -1, attn.heads, head_dim)

        if not prompts:
            return attention(q, k, v, layout="bnhd")
        first, *more = prompts
        out = attention(q, k, v, layout="bnhd", negative=(heads(first[2], first[1]), heads(first[3], first[1])),
                        negative_scale=-first[0])
        for s, x, to_k, to_v in more:
            out = out + s * attention(q, heads(to_k, x), heads(to_v, x), layout="bnhd")
        return out


class PydiffCustomDiffusionAttnProcessor(_RankLocal, CustomDiffusionAttnProcessor2_0):
    """Drop-in for ``CustomDiffusionAttnProcessor2_0`` (Custom Diffusion, Kumari et al. 2023: a UNet's attention
    with fine-tuned key and value projections of its own, and with ``train_q_out`` query and output ones): the
    attention of (B, N, H, D) views of the projections in the kernel. Built from the stock processor it replaces,
    it holds that processor's settings and the same weight modules (it is a ``CustomDiffusionAttnProcessor2_0``, so
    the model's state dict sees what it saw). Like the stock processor it applies no QK norms. Calls with an
    attention mask (which the stock processor pads to the query length and hands to SDPA as (B*H, 1, N) rows) and
    calls autograd records (Custom Diffusion's training: grad enabled on an input or a weight of the module; the
    kernel has no backward, and the stock processor detaches the first text token's key and value for it, which
    changes no value of a forward pass) take the stock path."""

    def __init__(self, stock: CustomDiffusionAttnProcessor2_0):
        _adopt(self, stock)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # (the stock processor's head dim: the input's width over the heads, as it splits q, k and v)
        head_dim = hidden_states.shape[-1] // attn.heads
        recorded = torch.is_grad_enabled() and (any(p.requires_grad for p in attn.parameters()) or any(
            x is not None and x.requires_grad for x in (hidden_states, encoder_hidden_states)))
        if attention_mask is not None or hidden_states.ndim != 3 or head_dim > MAX_HEAD_DIM or recorded:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask)
        query = (self.to_q_custom_diffusion if self.train_q_out else attn.to_q)(hidden_states)
        context = hidden_states
        if encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else \
                encoder_hidden_states
        if self.train_kv:  # (in the custom projections' dtype, the results in the module's, as there)
            key, value = (projection(context.to(projection.weight.dtype)).to(attn.to_q.weight.dtype)
                          for projection in (self.to_k_custom_diffusion, self.to_v_custom_diffusion))
        else:
            key, value = attn.to_k(context), attn.to_v(context)
        q, k, v = (t.view(hidden_states.shape[0], -1, attn.heads, head_dim) for t in (query, key, value))
        out = attention(q, k, v, layout="bnhd").flatten(2)
        to_out = self.to_out_custom_diffusion if self.train_q_out else attn.to_out
        return to_out[1](to_out[0](out))


class PydiffPAGIdentitySelfAttnProcessor(_RankLocal):
    """Drop-in for ``PAGIdentitySelfAttnProcessor2_0`` (perturbed-attention guidance on a UNet's self-attention
    layers, without CFG): the batch's first half attends as ``AttnProcessor2_0`` does, in the kernel; its second
    half (the perturbed pass) takes the identity attention, its values, as there. Like the stock processor, the
    module's QK norms are not applied. The PAG pipelines set these processors on their layers for each call
    (``set_attention_backend`` gives a pipeline's ``_pag_attn_processors`` ours)."""

    #: the batch's parts: [original, perturbed], or with CFG [unconditional, conditional, perturbed]
    chunks = 2

    def __init__(self):
        self.stock = PAGIdentitySelfAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens = hidden_states.shape[2] * hidden_states.shape[3] if hidden_states.ndim == 4 else \
            hidden_states.shape[1]
        original = hidden_states.shape[0] // self.chunks * (self.chunks - 1)
        mask = _processor_mask(attn, attention_mask, original, tokens)
        if _head_dim(attn) > MAX_HEAD_DIM or (attention_mask is not None and mask is None) or \
                hidden_states.shape[0] % self.chunks:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape = hidden_states.shape
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        states, perturbed = hidden_states[:original], hidden_states[original:]
        q, k, v = (getattr(attn, name)(states).unflatten(-1, (attn.heads, -1)) for name in ("to_q", "to_k", "to_v"))
        out = torch.cat([attention(q, k, v, layout="bnhd", attn_mask=mask).flatten(2), attn.to_v(perturbed)])
        out = attn.to_out[1](attn.to_out[0](out))  # (per token: the two parts' projections at once)
        if len(shape) == 4:
            out = out.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class PydiffPAGCFGIdentitySelfAttnProcessor(PydiffPAGIdentitySelfAttnProcessor):
    """Drop-in for ``PAGCFGIdentitySelfAttnProcessor2_0`` (perturbed-attention guidance with CFG): the batch's first
    two thirds (unconditional and conditional) attend, the last third takes the identity attention."""

    chunks = 3

    def __init__(self):
        self.stock = PAGCFGIdentitySelfAttnProcessor2_0()




def _unturned(keys: int, head_dim: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``key_rope`` tables that turn nothing (cos 1, sin 0, one angle per pair of channels) for ``keys`` keys: the
    keys of a call whose queries alone turn."""
    return (torch.ones(keys, head_dim // 2, device=device), torch.zeros(keys, head_dim // 2, device=device))


class PydiffHunyuanDiTAttnProcessor(PydiffAttnProcessor):
    """Drop-in for HunyuanDiT's ``HunyuanAttnProcessor2_0`` and, on fused projections (``fuse_qkv_projections()``:
    q, k and v strided views of one ``to_qkv``, or k and v of one ``to_kv`` in cross-attention),
    ``FusedHunyuanAttnProcessor2_0``: ``AttnProcessor2_0``'s steps with the RoPE (interleaved tables (N, D)) in the
    kernel's prologue; in cross-attention the queries alone turn, as there (the keys by tables that turn nothing,
    ``key_rope``). Its LayerNorm QK norms run as modules first."""

    def __init__(self):
        self.stock, self.stock_fused = HunyuanAttnProcessor2_0(), FusedHunyuanAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 image_rotary_emb=None) -> torch.Tensor:
        mask = _call_mask(attn, hidden_states, encoder_hidden_states, attention_mask)
        if _head_dim(attn) > MAX_HEAD_DIM or (attention_mask is not None and mask is None):
            stock = self.stock_fused if _fused_projections(attn) else self.stock
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, image_rotary_emb)
        return self._forward(attn, hidden_states, encoder_hidden_states, mask, temb, extra=image_rotary_emb)

    def _attend(self, attn, q, k, v, mask, head_dim, extra):
        rope = key_rope = None
        if extra is not None:
            rope = tuple(extra)
            if attn.is_cross_attention:
                key_rope = _unturned(k.shape[1], head_dim, k.device)
        return _streams_attention([(q, k, v, attn.norm_q, attn.norm_k)], head_dim, rope, mask, key_rope=key_rope)


class PydiffPAGHunyuanAttnProcessor(PydiffHunyuanDiTAttnProcessor):
    """Drop-in for ``PAGHunyuanAttnProcessor2_0`` (perturbed-attention guidance on HunyuanDiT's self-attention,
    without CFG): the batch's first half attends as ``HunyuanAttnProcessor2_0`` (ours), the second half (the
    perturbed pass) takes the identity attention, its values, as there. On fused projections (the stock processor
    reads the separate ones, which ``fuse_qkv_projections`` keeps: the same numbers) q, k and v are views of one."""

    #: the batch's parts: [original, perturbed], or with CFG [unconditional, conditional, perturbed]
    chunks = 2

    def __init__(self):
        self.stock = self.stock_fused = PAGHunyuanAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 image_rotary_emb=None) -> torch.Tensor:
        if hidden_states.ndim != 3 or hidden_states.shape[0] % self.chunks or encoder_hidden_states is not None or \
                attention_mask is not None or attn.spatial_norm is not None or attn.group_norm is not None or \
                _head_dim(attn) > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, image_rotary_emb)
        original = hidden_states.shape[0] // self.chunks * (self.chunks - 1)
        states, perturbed = hidden_states[:original], hidden_states[original:]
        out = self._forward(attn, states, None, None, temb, extra=image_rotary_emb)
        identity = attn.to_out[1](attn.to_out[0](attn.to_v(perturbed)))
        if attn.residual_connection:
            identity = identity + perturbed
        return torch.cat([out, identity / attn.rescale_output_factor])


class PydiffPAGCFGHunyuanAttnProcessor(PydiffPAGHunyuanAttnProcessor):
    """Drop-in for ``PAGCFGHunyuanAttnProcessor2_0`` (perturbed-attention guidance with CFG on HunyuanDiT): the
    batch's first two thirds attend, the last third takes the identity attention."""

    chunks = 3

    def __init__(self):
        self.stock = self.stock_fused = PAGCFGHunyuanAttnProcessor2_0()


class PydiffStableAudioAttnProcessor(PydiffAttnProcessor):
    """Drop-in for Stable Audio Open's ``StableAudioAttnProcessor2_0`` (its DiT's self- and cross-attention):
    ``AttnProcessor2_0``'s steps with the grouped-query keys and values (as many heads as the key projection's
    width holds) read as they are, where the stock processor repeats them per query head, and its partial rotary
    (half-split tables of rot_dim <= D columns: ``rope_dims``) in the kernel's prologue, on q always and on k in
    self-attention alone (a cross-attention module's keys by tables that turn nothing). Like the stock processor it
    takes SDPA's default scale; a module with a spatial or group norm (which the stock processor skips) or fused
    projections keeps the stock call."""

    def __init__(self):
        self.stock = StableAudioAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, rotary_emb=None) -> torch.Tensor:
        mask = _call_mask(attn, hidden_states, encoder_hidden_states, attention_mask)
        if attn.inner_dim // attn.heads > MAX_HEAD_DIM or (attention_mask is not None and mask is None) or \
                attn.spatial_norm is not None or attn.group_norm is not None or _fused_projections(attn):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        return self._forward(attn, hidden_states, encoder_hidden_states, mask, None, extra=rotary_emb)

    def _attend(self, attn, q, k, v, mask, head_dim, extra):
        if extra is None:
            return _streams_attention([(q, k, v, attn.norm_q, attn.norm_k)], head_dim, None, mask)
        rope, rot_dim = tuple(extra), extra[0].shape[-1]
        key_rope = _unturned(k.shape[1], rot_dim, k.device) if attn.is_cross_attention else None
        return _streams_attention([(q, k, v, attn.norm_q, attn.norm_k)], head_dim, rope, mask,
                                  rope_interleaved=False, key_rope=key_rope, rope_dims=rot_dim)


class PydiffAllegroAttnProcessor(PydiffAttnProcessor):
    """Drop-in for Allegro's ``AllegroAttnProcessor2_0``: ``AttnProcessor2_0``'s steps with its 3-D RoPE in the
    kernel's prologue, in self-attention (as there): the t, h and w thirds of each head turned by halves of their
    own (``rope_sections=3``), by one (N, D) table per call, the three axes' tables gathered at the tokens'
    positions side by side (the stock processor gathers them for q and again for k, and turns each third apart)."""

    def __init__(self):
        self.stock = self.stock_fused = AllegroAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 image_rotary_emb=None) -> torch.Tensor:
        mask = _call_mask(attn, hidden_states, encoder_hidden_states, attention_mask)
        head_dim = _head_dim(attn)
        turns = image_rotary_emb is not None and not attn.is_cross_attention
        if head_dim > MAX_HEAD_DIM or (attention_mask is not None and mask is None) or _fused_projections(attn) or \
                (turns and head_dim % 6):  # (thirds of an even size, or the stock's unequal chunks)
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, image_rotary_emb)
        return self._forward(attn, hidden_states, encoder_hidden_states, mask, temb,
                             extra=_allegro_tables(*image_rotary_emb) if turns else None)

    def _attend(self, attn, q, k, v, mask, head_dim, extra):
        # (no QK norms: the stock processor applies none)
        return attention(q, k, v, layout="bnhd", attn_mask=mask, rope=extra, rope_interleaved=False,
                         rope_sections=3 if extra is not None else 1)


#: ``_made_once``'s slot for the last Allegro forward's RoPE tables
_LAST_ALLEGRO_TABLES = [None, None, None]


def _allegro_tables(freqs, positions) -> Tuple[torch.Tensor, torch.Tensor]:
    """Allegro's RoPE as the kernel's sectioned tables: ((t_cos, t_sin), (h_cos, h_sin), (w_cos, w_sin)), each
    (axis length, D/3), gathered at the tokens' positions (t, h, w), each (1 or B, N), side by side: cos and sin
    (1 or B, N, 1, D), [t | h | w] columns; made once per forward (every layer is handed the same tables)."""
    def make():
        return tuple(torch.cat([F.embedding(pos, table[part]) for pos, table in zip(positions, freqs)], -1)[:, :, None]
                     for part in (0, 1))
    others = [*positions[1:], *(t for table in freqs for t in table)]
    return _made_once(_LAST_ALLEGRO_TABLES, _storage_key(others), positions[0], make)


def _storage_key(tensors) -> tuple:
    """What tables made from ``tensors`` are kept under beside one tensor's identity (``_made_once``): each one's
    storage, version and shape."""
    return tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors)


class PydiffSanaAttnProcessor(_RankLocal):
    """Drop-in for Sana's ``SanaAttnProcessor2_0`` (its cross-attention; its linear self-attention stays): the text
    padding, diffusers' (B, 1, N_k) additive mask, as the kernel's key mask read in place (the stock processor
    repeats it per head); its QK RMSNorms (Sana 1.5's) span every head, so they run as modules first, as there.
    ``stock_type``: the stock processor for the calls the kernel does not take (the copy of Sana's a model has)."""

    def __init__(self, stock_type=SanaAttnProcessor2_0):
        self.stock = stock_type()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        mask = _processor_mask(attn, attention_mask, source.shape[0], source.shape[1])
        if _head_dim(attn) > MAX_HEAD_DIM or (attention_mask is not None and mask is None):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask)
        query, key, value = attn.to_q(hidden_states), attn.to_k(source), attn.to_v(source)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        q, k, v = (t.unflatten(-1, (attn.heads, -1)) for t in (query, key, value))
        out = attention(q, k, v, layout="bnhd", attn_mask=mask)
        return attn.to_out[1](attn.to_out[0](out.flatten(2))) / attn.rescale_output_factor


class PydiffSanaWMCrossAttnProcessor(_RankLocal):
    """Drop-in for SANA-WM's ``SanaWMCrossAttnProcessor`` (its cross-attention to the text; diffusers 0.42+): the
    projections and the QK RMSNorms (over every head's channels: modules first) as there, the attention in the
    kernel with the text padding ((B, N_text), or as given) as the key mask, read in place."""

    def __init__(self):
        self.stock = _stock(SanaWMCrossAttnProcessor, "SANA-WM", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # (the stock processor makes a 2-D mask boolean)
        mask = _key_mask(attention_mask.bool() if attention_mask is not None and attention_mask.dim() == 2 else
                         attention_mask, hidden_states.shape[0], encoder_hidden_states.shape[1])
        if attn.head_dim > MAX_HEAD_DIM or (mask is not None and not _kernel_reads(mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask)
        batch, _, channels = hidden_states.shape
        q = attn.q_norm(attn.q_linear(hidden_states)).view(batch, -1, attn.heads, attn.head_dim)
        key, value = attn.kv_linear(encoder_hidden_states).view(batch, -1, 2, channels).unbind(2)
        k = attn.k_norm(key).view(batch, -1, attn.heads, attn.head_dim)
        out = attention(q, k, value.view(batch, -1, attn.heads, attn.head_dim), layout="bnhd", attn_mask=mask)
        return attn.proj(out.reshape(batch, -1, channels))


class PydiffJointAttnProcessor(_RankLocal):
    """Drop-in for SD3's ``JointAttnProcessor2_0`` and, on fused projections without QK norms,
    ``FusedJointAttnProcessor2_0``: joint image+text attention without concatenation."""

    def __init__(self):
        self.stock, self.stock_fused = JointAttnProcessor2_0(), FusedJointAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, *args, **kwargs):
        if _head_dim(attn) > MAX_HEAD_DIM:
            stock = self.stock_fused if _fused_projections(attn) else self.stock
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        # Like the stock processor, attention_mask is not used by SD3's joint attention.
        return self._forward(attn, hidden_states, encoder_hidden_states)

    def _forward(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor], extra=None):
        """The joint call and the output projections; ``extra``: a subclass's, for ``_added``."""
        head_dim = _head_dim(attn)
        streams = [_image_stream(attn, hidden_states, head_dim)]  # (SD3 joins [image; text])
        if encoder_hidden_states is not None:
            streams.append(_text_stream(attn, encoder_hidden_states, head_dim))
        out = _streams_attention(streams, head_dim, None, None)
        image, context = (out, None) if encoder_hidden_states is None else out
        # (the outputs have the projections' dtype, as the stock processor's)
        image = image.flatten(2)
        if extra is not None:
            image = image + self._added(attn, streams[0], head_dim, extra)
        hidden_states = attn.to_out[1](attn.to_out[0](image))
        if encoder_hidden_states is None:
            return hidden_states
        context = context.flatten(2)
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return hidden_states, context

    def _added(self, attn, image, head_dim: int, extra) -> torch.Tensor:
        """What a subclass adds to the image tokens' attention output, (B, N, H*D), before the output projection;
        ``image``: their stream (q, k, v, the module's QK norms)."""
        raise NotImplementedError


class PydiffPAGJointAttnProcessor(_RankLocal):
    """Drop-in for ``PAGJointAttnProcessor2_0`` (perturbed-attention guidance on SD3's joint attention, without
    CFG): the batch's first half attends jointly over [image; text], the second half (the perturbed pass) with each
    image token attending to itself and the text alone (the stock processor's mask, boolean here and made once per
    size), both as joint calls without concatenation. Like the stock processor, the module's QK norms are not
    applied."""

    #: the batch's parts: [original, perturbed], or with CFG [unconditional, conditional, perturbed]
    chunks = 2

    def __init__(self):
        self.stock = PAGJointAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, *args, **kwargs):
        if args or kwargs or attention_mask is not None or hidden_states.ndim != 3 or \
                encoder_hidden_states is None or encoder_hidden_states.ndim != 3 or \
                hidden_states.shape[0] % self.chunks or attn.inner_dim // attn.heads > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        original = hidden_states.shape[0] // self.chunks * (self.chunks - 1)
        images, texts = [], []
        for part in (slice(0, original), slice(original, None)):
            x, context = hidden_states[part], encoder_hidden_states[part]
            image = [getattr(attn, name)(x).unflatten(-1, (attn.heads, -1)) for name in ("to_q", "to_k", "to_v")]
            text = [getattr(attn, name)(context).unflatten(-1, (attn.heads, -1))
                    for name in ("add_q_proj", "add_k_proj", "add_v_proj")]
            mask = None if part.start == 0 else _self_and_text(x.shape[1], context.shape[1], x.device)
            image, text = attention(*image, layout="bnhd", joint=tuple(text), attn_mask=mask)
            images.append(image)
            texts.append(text)
        out = attn.to_out[1](attn.to_out[0](torch.cat(images).flatten(2)))
        text = torch.cat(texts).flatten(2)
        return out, text if attn.context_pre_only else attn.to_add_out(text)


class PydiffPAGCFGJointAttnProcessor(PydiffPAGJointAttnProcessor):
    """Drop-in for ``PAGCFGJointAttnProcessor2_0`` (perturbed-attention guidance with CFG on SD3's joint attention):
    the batch's first two thirds attend, the last third takes the perturbed attention."""

    chunks = 3

    def __init__(self):
        self.stock = PAGCFGJointAttnProcessor2_0()


@functools.lru_cache(maxsize=8)
def _self_and_text(images: int, texts: int, device: torch.device) -> torch.Tensor:
    """PAG's perturbed joint attention mask over [image; text] tokens, (1, 1, N, N) bool: each image token attends to
    itself and the text, each text token to every token."""
    keep = torch.ones(images + texts, images + texts, dtype=torch.bool, device=device)
    keep[:images, :images] = torch.eye(images, dtype=torch.bool, device=device)
    return keep[None, None]


class PydiffSD3IPAdapterAttnProcessor(PydiffJointAttnProcessor, SD3IPAdapterJointAttnProcessor2_0):
    """Drop-in for SD3's ``SD3IPAdapterJointAttnProcessor2_0`` (``load_ip_adapter`` on SD3.5, every attention
    module): the joint call as ``PydiffJointAttnProcessor``'s, plus the image prompt's attention, scaled, before the
    output projection: the image queries over [image keys; image-prompt keys] with this processor's own three QK
    RMSNorms, the prompt's keys a second stream of keys only (no concatenation; the norms in the kernel's
    prologue). Built from the stock processor, on its weights (see ``_adopt``); a scale of 0 or no image prompt
    skips that attention, as there."""

    def __init__(self, stock: SD3IPAdapterJointAttnProcessor2_0):
        _adopt(self, stock)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, ip_hidden_states: Optional[torch.Tensor] = None,
                 temb: Optional[torch.Tensor] = None):
        if _fused_projections(attn) or _head_dim(attn) > MAX_HEAD_DIM:  # (the stock processor reads to_q, to_k, ...)
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, ip_hidden_states, temb)
        prompt = None if self.scale == 0 or ip_hidden_states is None else (ip_hidden_states, temb)
        return self._forward(attn, hidden_states, encoder_hidden_states, prompt)

    def _added(self, attn, image, head_dim, extra):
        ip_hidden_states, temb = extra
        states = self.norm_ip(ip_hidden_states, temb=temb)
        q, k, v = image[:3]
        k_ip, v_ip = (projection(states).reshape(q.shape[0], -1, attn.heads, head_dim)
                      for projection in (self.to_k_ip, self.to_v_ip))
        out, _ = _streams_attention([(q, k, v, self.norm_q, self.norm_k), (q[:, :0], k_ip, v_ip, None, self.norm_ip_k)],
                                    head_dim, None, None)
        return out.flatten(2) * self.scale


def _heads(attn, x: torch.Tensor, fused: str, names: Tuple[str, str, str], head_dim: int) -> List[torch.Tensor]:
    """q, k and v of ``x`` as (B, N, H, D) views: from the module's fused projection ``fused`` where it has one
    (``fuse_qkv_projections``), else from its three projections ``names``."""
    if _fused_projections(attn):
        parts = getattr(attn, fused)(x).chunk(3, dim=-1)
    else:
        parts = [getattr(attn, name)(x) for name in names]
    return [t.unflatten(-1, (-1, head_dim)) for t in parts]


def _streams_attention(streams, head_dim: int, rope, attn_mask: Optional[torch.Tensor],
                       rope_interleaved: bool = True, scale: Optional[float] = None,
                       norm_dtype: Optional[torch.dtype] = None, key_rope=None, rope_dims: int = 0,
                       causal: bool = False, **extra):
    """One ``pydiff.attention`` call over one or two token streams, each (q, k, v, q norm, k norm) with q, k and v
    (B, N, H, D) (k and v may have fewer heads: grouped-query attention): joint attention over [stream 1; stream 2]
    without concatenation or split, the RoPE rows and the mask following that joined sequence; the streams' QK
    RMSNorms run in the kernel's prologue (other norms as modules first; an RMSNorm without an eps takes
    ``norm_dtype``'s, q's dtype by default, as the module does on its input; ``key_rope``: the keys' own tables;
    ``rope_dims``: partial rotary; ``causal``; ``extra``: more of the call's keywords). Returns the output, or both
    streams' with two."""
    (q, k, v, q_norm, k_norm), *second = streams
    norms, tensors = {"q": q_norm, "k": k_norm}, {"q": q, "k": k}
    if second:
        q2, k2, v2, q2_norm, k2_norm = second[0]
        norms.update(q2=q2_norm, k2=k2_norm)
        tensors.update(q2=q2, k2=k2)
    fused, separate, eps = _plan_norms(norms, head_dim, norm_dtype or q.dtype, q.device)
    for name, norm in separate.items():
        tensors[name] = norm(tensors[name])
    common = dict(scale=scale, layout="bnhd", attn_mask=attn_mask, rope=rope, rope_interleaved=rope_interleaved,
                  norm_eps=eps, q_norm_weight=fused.get("q"), k_norm_weight=fused.get("k"))
    if key_rope is not None:
        common["key_rope"] = key_rope
    if rope_dims:
        common["rope_dims"] = rope_dims
    if causal:
        common["causal"] = True
    common.update(extra)
    if not second:
        return attention(tensors["q"], tensors["k"], v, **common)
    return attention(tensors["q"], tensors["k"], v, joint=(tensors["q2"], tensors["k2"], v2),
                     joint_q_norm_weight=fused.get("q2"), joint_k_norm_weight=fused.get("k2"), **common)


def _image_stream(attn, hidden_states: torch.Tensor, head_dim: int):
    """The image tokens' stream for ``_streams_attention``: q, k, v of the module's own projections, its QK norms."""
    return (*_heads(attn, hidden_states, "to_qkv", ("to_q", "to_k", "to_v"), head_dim), attn.norm_q, attn.norm_k)


def _text_stream(attn, encoder_hidden_states: torch.Tensor, head_dim: int):
    """The text tokens' stream for ``_streams_attention``: the added projections and their QK norms."""
    return (*_heads(attn, encoder_hidden_states, "to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj"),
                    head_dim), attn.norm_added_q, attn.norm_added_k)


def _cross_stream(attn, hidden_states: torch.Tensor, context: Optional[torch.Tensor], head_dim: int,
                  names: Tuple[str, str, str] = ("to_q", "to_k", "to_v"),
                  norms: Tuple[str, str] = ("norm_q", "norm_k")):
    """A stream for ``_streams_attention``: q of ``hidden_states``, k and v of ``context`` (self-attention where
    None) through the module's projections ``names`` as (B, N, H, D) views (k and v may have fewer heads), and its
    QK norms ``norms``."""
    context = hidden_states if context is None else context
    q, k, v = (getattr(attn, name)(x).unflatten(-1, (-1, head_dim))
               for name, x in zip(names, (hidden_states, context, context)))
    return q, k, v, getattr(attn, norms[0]), getattr(attn, norms[1])


class PydiffAuraFlowAttnProcessor(_RankLocal):
    """Drop-in for ``AuraFlowAttnProcessor2_0`` and, on fused projections, ``FusedAuraFlowAttnProcessor2_0`` (AuraFlow,
    Pony v7): joint [text; image] attention without concatenation or split (its float32 LayerNorms on q and k run
    as modules first), with the module's scale; self-attention over the single-stream blocks' tokens."""

    def __init__(self):
        self.stock, self.stock_fused = AuraFlowAttnProcessor2_0(), FusedAuraFlowAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 *args, **kwargs):
        head_dim = _head_dim(attn)
        if head_dim > MAX_HEAD_DIM:
            stock = self.stock_fused if _fused_projections(attn) else self.stock
            return stock(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        streams = [_image_stream(attn, hidden_states, head_dim)]
        if encoder_hidden_states is None:
            out = _streams_attention(streams, head_dim, None, None, scale=attn.scale)
            return attn.to_out[1](attn.to_out[0](out.flatten(2)))
        text, image = _streams_attention([_text_stream(attn, encoder_hidden_states, head_dim)] + streams, head_dim,
                                         None, None, scale=attn.scale)
        return attn.to_out[1](attn.to_out[0](image.flatten(2))), attn.to_add_out(text.flatten(2))


class PydiffFluxAttnProcessor(_RankLocal):
    """Drop-in for Flux's ``FluxAttnProcessor``: joint attention with QK RMSNorm and RoPE fused into the kernel.
    ``stock_type``: the stock processor for the calls the kernel does not take (the copy of Flux's a model has)."""

    def __init__(self, stock_type=FluxAttnProcessor):
        self.stock = stock_type()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None,
                 image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        head_dim = _head_dim(attn)  # (Bria FIBO's single-stream blocks: diffusers' Attention, which does not name it)
        if (attention_mask is not None and not _kernel_reads(attention_mask)) or head_dim > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        rope = None if image_rotary_emb is None else tuple(image_rotary_emb)
        # (the outputs have the projections' dtype, as the stock processor's)
        if encoder_hidden_states is None or attn.added_kv_proj_dim is None:
            return _streams_attention([_image_stream(attn, hidden_states, head_dim)], head_dim, rope,
                                      attention_mask).flatten(2)
        return self._joint(attn, hidden_states, encoder_hidden_states, attention_mask, rope, head_dim)[1:]

    @staticmethod
    def _joint(attn, hidden_states, encoder_hidden_states, attention_mask, rope, head_dim):
        """The joint call: (the image stream, the image's output through ``to_out``, the text's through
        ``to_add_out``). Flux joins [text; image]: text is stream 1, so the RoPE rows and the mask follow the joined
        sequence."""
        image = _image_stream(attn, hidden_states, head_dim)
        context, out = _streams_attention([_text_stream(attn, encoder_hidden_states, head_dim), image], head_dim,
                                          rope, attention_mask)
        return image, attn.to_out[1](attn.to_out[0](out.flatten(2))), attn.to_add_out(context.flatten(2))


class PydiffFluxIPAdapterAttnProcessor(PydiffFluxAttnProcessor, FluxIPAdapterAttnProcessor):
    """Drop-in for Flux's ``FluxIPAdapterAttnProcessor`` (``load_ip_adapter`` on FLUX.1: its double-stream blocks):
    the joint call as ``PydiffFluxAttnProcessor``'s, then each image prompt's attention of the image queries
    (QK-normed in the kernel's prologue and not rotated, as there) over that prompt's keys, scaled and summed into
    the third output. Built from the stock processor, on its weights (see ``_adopt``). Like the stock processor,
    it does not use ``ip_adapter_masks``."""

    def __init__(self, stock: FluxIPAdapterAttnProcessor):
        _adopt(self, stock)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None,
                 image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                 ip_hidden_states: Optional[List[torch.Tensor]] = None, ip_adapter_masks=None):
        head_dim = _head_dim(attn)
        if encoder_hidden_states is None or ip_hidden_states is None or head_dim > MAX_HEAD_DIM or \
                (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                              ip_hidden_states, ip_adapter_masks)
        rope = None if image_rotary_emb is None else tuple(image_rotary_emb)
        image, out, context = self._joint(attn, hidden_states, encoder_hidden_states, attention_mask, rope, head_dim)
        q, norm_q = image[0], image[3]
        prompts = torch.zeros_like(out)
        for states, scale, to_k, to_v in zip(ip_hidden_states, self.scale, self.to_k_ip, self.to_v_ip):
            # (several images per prompt: their tokens one key sequence)
            k, v = (projection(states).reshape(q.shape[0], -1, attn.heads, head_dim) for projection in (to_k, to_v))
            prompts = prompts + scale * _streams_attention([(q, k, v, norm_q, None)], head_dim, None, None).flatten(2)
        return out, context, prompts


class PydiffFlux2AttnProcessor(PydiffFluxAttnProcessor):
    """Drop-in for FLUX.2's ``Flux2AttnProcessor`` (its double-stream blocks; diffusers 0.36+): FLUX.1's math."""

    def __init__(self):
        self.stock = _stock(Flux2AttnProcessor, "FLUX.2", "0.36")


class PydiffFlux2ParallelSelfAttnProcessor(_RankLocal):
    """Drop-in for FLUX.2's ``Flux2ParallelSelfAttnProcessor`` (its single-stream blocks, whose one projection feeds
    the attention and the MLP): the attention with its QK RMSNorms and RoPE in one ``pydiff.attention`` call."""

    def __init__(self):
        self.stock = _stock(Flux2ParallelSelfAttnProcessor, "FLUX.2", "0.36")

    def __call__(self, attn, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        if (attention_mask is not None and not _kernel_reads(attention_mask)) or attn.head_dim > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, attention_mask, image_rotary_emb)
        return self._forward(attn, hidden_states, attention_mask, image_rotary_emb)

    def _forward(self, attn, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor], image_rotary_emb,
                 cached: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """The projection, the attention and the output projection; ``cached``: keys and values to attend to
        beside the tokens' (``_beside_cached``)."""
        projected = attn.to_qkv_mlp_proj(hidden_states)
        # (the stock processor's split, by the global ratio of the two parts: the same where the projection is
        # column-sharded)
        qkv_dim, mlp_dim = 3 * attn.inner_dim, attn.mlp_hidden_dim * attn.mlp_mult_factor
        local_qkv = projected.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)
        qkv, mlp = torch.split(projected, [local_qkv, projected.shape[-1] - local_qkv], dim=-1)
        q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in qkv.chunk(3, dim=-1))
        rope = None if image_rotary_emb is None else tuple(image_rotary_emb)
        stream = (q, k, v, attn.norm_q, attn.norm_k)
        if cached is None:
            out = _streams_attention([stream], attn.head_dim, rope, attention_mask)
        else:
            out = _beside_cached(stream, cached, attn.head_dim, rope)
        return attn.to_out(torch.cat([out.flatten(2), attn.mlp_act_fn(mlp)], dim=-1))


def _beside_cached(stream, cached: Tuple[torch.Tensor, torch.Tensor], head_dim: int, rope,
                   attn_mask: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
    """``_streams_attention`` of one stream whose queries also attend to ``cached`` keys and values (B, N_c, H, D)
    as they are (a KV cache's: normed and rotated already), a second stream of keys only, whose RoPE rows turn by
    nothing; a mask over [the stream's keys; the cached]. Returns the stream's output."""
    k_cached, v_cached = cached
    if rope is not None:
        rope = _latent_rope(rope, k_cached.shape[1], text_first=False)
    out, _ = _streams_attention([stream, (stream[0][:, :0], k_cached, v_cached, None, None)], head_dim, rope,
                                attn_mask, **kwargs)
    return out


def _kv_cached(kv_cache, kv_cache_mode: Optional[str], num_ref_tokens: int) -> Optional[bool]:
    """How a FLUX.2 Klein KV processor's call runs: True in the cached mode (the reference image's keys and values
    from the cache), False without a cache (FLUX.2's call), None in the extract mode (the first step: the
    reference tokens attend to themselves only; the stock processor's)."""
    if kv_cache_mode == "extract" and num_ref_tokens > 0:
        return None
    return kv_cache_mode == "cached" and kv_cache is not None


class PydiffFlux2KVAttnProcessor(PydiffFlux2AttnProcessor):
    """Drop-in for FLUX.2 Klein KV's ``Flux2KVAttnProcessor`` (its double-stream blocks; diffusers 0.39+): FLUX.2's
    call without a cache, and in the cached mode (every step after the first) the reference image's cached keys and
    values beside the [text; image] tokens' as a second stream of keys only, not concatenated (the streams'
    QK norms then run as modules and their q, k, v are joined: the kernel has two streams); the extract mode stays
    stock. The stock processor places the reference keys between text and image; the order does not matter."""

    def __init__(self):
        self.stock = _stock(Flux2KVAttnProcessor, "FLUX.2 Klein KV", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None, kv_cache=None,
                 kv_cache_mode: Optional[str] = None, num_ref_tokens: int = 0):
        cached = _kv_cached(kv_cache, kv_cache_mode, num_ref_tokens)
        if cached is None or attn.head_dim > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, kv_cache,
                              kv_cache_mode, num_ref_tokens)
        if not cached:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        # (like the stock processor's cached mode, no attention mask)
        streams = [_image_stream(attn, hidden_states, attn.head_dim)]
        if encoder_hidden_states is not None:
            streams.insert(0, _text_stream(attn, encoder_hidden_states, attn.head_dim))
        normed = [(q if norm_q is None else norm_q(q), k if norm_k is None else norm_k(k), v)
                  for q, k, v, norm_q, norm_k in streams]
        q, k, v = (torch.cat(parts, dim=1) for parts in zip(*normed))
        rope = None if image_rotary_emb is None else tuple(image_rotary_emb)
        out = _beside_cached((q, k, v, None, None), kv_cache.get(), attn.head_dim, rope).flatten(2)
        if encoder_hidden_states is None:
            return attn.to_out[1](attn.to_out[0](out))
        text, image = out.split([encoder_hidden_states.shape[1], hidden_states.shape[1]], dim=1)
        return attn.to_out[1](attn.to_out[0](image)), attn.to_add_out(text)


class PydiffFlux2KVParallelSelfAttnProcessor(PydiffFlux2ParallelSelfAttnProcessor):
    """Drop-in for FLUX.2 Klein KV's ``Flux2KVParallelSelfAttnProcessor`` (its single-stream blocks; 0.39+): FLUX.2's
    call, in the cached mode with the reference image's cached keys and values as a second stream of keys only
    (the tokens' QK norms and RoPE still in the prologue); the extract mode stays stock."""

    def __init__(self):
        self.stock = _stock(Flux2KVParallelSelfAttnProcessor, "FLUX.2 Klein KV", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 image_rotary_emb=None, kv_cache=None, kv_cache_mode: Optional[str] = None, num_txt_tokens: int = 0,
                 num_ref_tokens: int = 0) -> torch.Tensor:
        cached = _kv_cached(kv_cache, kv_cache_mode, num_ref_tokens)
        if cached is None or attn.head_dim > MAX_HEAD_DIM or \
                (not cached and attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, attention_mask, image_rotary_emb, kv_cache, kv_cache_mode,
                              num_txt_tokens, num_ref_tokens)
        return self._forward(attn, hidden_states, None if cached else attention_mask, image_rotary_emb,
                             kv_cache.get() if cached else None)


def _complex_rope(freqs: torch.Tensor):
    """RoPE given as e^(i theta) per pair of channels, (N, D/2) or per batch row (B, N, D/2) complex, as the
    kernel's interleaved tables of one angle per pair (cos, sin), (N, D/2) or (B, N, 1, D/2): the real and
    imaginary parts, read in place (no copy). A complex product per pair is the interleaved rotation."""
    cos, sin = freqs.real, freqs.imag
    return (cos, sin) if freqs.dim() == 2 else (cos.unsqueeze(2), sin.unsqueeze(2))


def _latent_rope(tables, n_text: int, text_first: bool):
    """A model's RoPE tables (cos, sin) for its latent (image or video) tokens, (N_latent, D) (or per head,
    (N_latent, H, D), or per batch row, (B, N_latent, H, D)), over the joined sequence of latent and text tokens:
    the stock processors rotate the latent tokens only, so the text's rows turn by nothing (cos 1, sin 0). (Rows
    that turn by nothing for other tokens too: the tables this gives, taken again as the latent ones.)"""
    cos, sin = tables
    rows = 1 if cos.dim() == 4 else 0  # (tables per batch row, (B, N, H, D): their rows second)
    shape = [*cos.shape[:rows], n_text, *cos.shape[rows + 1:]]
    parts = [(cos, sin), (cos.new_ones(shape), sin.new_zeros(shape))]
    if text_first:
        parts.reverse()
    return torch.cat([part[0] for part in parts], rows), torch.cat([part[1] for part in parts], rows)


class PydiffCogVideoXAttnProcessor(_RankLocal):
    """Drop-in for ``CogVideoXAttnProcessor2_0`` and, on fused projections, ``FusedCogVideoXAttnProcessor2_0``
    (CogVideoX, ConsisID, CogView3-Plus): attention over [text; video] as a joint call of the two streams, each
    through the module's one set of projections, with the RoPE on the video tokens only (identity rows for the
    text) in the kernel's prologue; the stock processor concatenates the hidden states, projects, normalises,
    rotates the video part in place, runs SDPA and splits the output."""

    #: the stock tables' layout: CogVideoX's pairs are interleaved, CogView4's halves split
    rope_interleaved = True

    def __init__(self):
        self.stock, self.stock_fused = CogVideoXAttnProcessor2_0(), FusedCogVideoXAttnProcessor2_0()

    def _mask(self, attn, attention_mask: torch.Tensor, batch: int, n_text: int, keys: int) -> Optional[torch.Tensor]:
        """The kernel's mask for the stock processor's ``attention_mask`` (None: the kernel does not read it)."""
        return _processor_mask(attn, attention_mask, batch, keys)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        head_dim = _head_dim(attn)
        n_text = encoder_hidden_states.shape[1]
        mask = None if attention_mask is None else \
            self._mask(attn, attention_mask, hidden_states.shape[0], n_text, n_text + hidden_states.shape[1])
        if head_dim > MAX_HEAD_DIM or (attention_mask is not None and mask is None) or attn.is_cross_attention:
            stock = self.stock_fused if _fused_projections(attn) else self.stock
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        rope = None if image_rotary_emb is None else _latent_rope(image_rotary_emb, n_text, text_first=True)
        streams = [(*_heads(attn, x, "to_qkv", ("to_q", "to_k", "to_v"), head_dim), attn.norm_q, attn.norm_k)
                   for x in (encoder_hidden_states, hidden_states)]
        text, latent = _streams_attention(streams, head_dim, rope, mask, rope_interleaved=self.rope_interleaved)
        # (the stock processor's output projection runs on the joined tokens: the same per token)
        return tuple(attn.to_out[1](attn.to_out[0](x.flatten(2))) for x in (latent, text))


class PydiffEasyAnimateAttnProcessor(_RankLocal):
    """Drop-in for EasyAnimate's ``EasyAnimateAttnProcessor2_0``: [text; video] attention, a joint call of the two
    streams in its MMDiT blocks (the text through its added projections) and one over the joined tokens in the
    others, the QK norms (LayerNorms: modules first) as there and the RoPE on the video tokens only (identity rows
    for the text; in cross-attention on the queries alone) in the prologue."""

    def __init__(self):
        self.stock = _stock(EasyAnimateAttnProcessor2_0, "EasyAnimate", "0.35")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        head_dim = _head_dim(attn)
        if encoder_hidden_states is None or head_dim > MAX_HEAD_DIM or \
                (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        n_text, n_video = encoder_hidden_states.shape[1], hidden_states.shape[1]
        rope = key_rope = None
        if image_rotary_emb is not None:
            rope = _latent_rope(tuple(image_rotary_emb), n_text, text_first=True)
            if attn.is_cross_attention:
                key_rope = _unturned(n_text + n_video, head_dim, hidden_states.device)
        if attn.add_q_proj is not None:
            streams = [_text_stream(attn, encoder_hidden_states, head_dim), _image_stream(attn, hidden_states,
                                                                                          head_dim)]
            text, video = _streams_attention(streams, head_dim, rope, attention_mask, key_rope=key_rope)
        else:
            joined = torch.cat([encoder_hidden_states, hidden_states], dim=1)
            out = _streams_attention([_image_stream(attn, joined, head_dim)], head_dim, rope, attention_mask,
                                     key_rope=key_rope)
            text, video = out.split([n_text, n_video], dim=1)
        video, text = video.flatten(2), text.flatten(2)
        if getattr(attn, "to_out", None) is not None:
            video = attn.to_out[1](attn.to_out[0](video))
        if getattr(attn, "to_add_out", None) is not None:
            text = attn.to_add_out(text)
        return video, text


class PydiffCogView4AttnProcessor(PydiffCogVideoXAttnProcessor):
    """Drop-in for ``CogView4AttnProcessor`` (CogView4): CogVideoX's [text; image] joint call, the RoPE tables'
    halves split. Its text mask (B, N_text) is, as the stock processor builds it, the outer product of the joined
    tokens' mask added as a float 0/1 mask in the query's dtype (it raises kept scores by 1 rather than masking
    padding out: the stock math, kept); the kernel reads it per query."""

    rope_interleaved = False

    def __init__(self):
        self.stock = self.stock_fused = CogView4AttnProcessor()

    def _mask(self, attn, attention_mask, batch, n_text, keys):
        if attention_mask.dim() != 2:
            return None  # (the stock processor's assertion)
        kept = torch.cat([attention_mask.float() > 0,
                          attention_mask.new_ones(batch, keys - n_text, dtype=torch.bool)], dim=1)
        # (0 and 1 are exact in every float dtype: the stock query-dtype mask's values in the fewest bytes)
        return (kept[:, None, :, None] & kept[:, None, None, :]).to(torch.float16)


class PydiffGlmImageAttnProcessor(PydiffCogView4AttnProcessor):
    """Drop-in for GLM-Image's ``GlmImageAttnProcessor`` (diffusers 0.37+): CogView4's call (the same math), and in
    its KV cache's read mode (image editing: the condition images' keys and values, cached once by the stock
    processor in write mode, joined to every step's) the cached keys and values as a second stream of keys only,
    read in place (a cache shared by the batch as an expanded view, as the cache's ``get`` expands it), not
    concatenated; the [text; image] tokens then one stream, projected joined as there, the RoPE rows of the cache
    turning by nothing (it holds rotated keys). The stock processor places the cache first; softmax attention does
    not depend on the keys' order."""

    def __init__(self):
        self.stock = self.stock_fused = _stock(GlmImageAttnProcessor, "GLM-Image", "0.37")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None, kv_cache=None):
        mode = None if kv_cache is None else kv_cache.mode
        cached = mode == "read" and len(kv_cache.k_caches) > 0
        if mode == "write" or (cached and (attention_mask is not None or _head_dim(attn) > MAX_HEAD_DIM or
                                           _fused_projections(attn))):
            # (a mask of the current tokens beside cached keys: the stock processor's SDPA refuses its shape)
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, kv_cache)
        if not cached:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        head_dim, batch, n_text = _head_dim(attn), hidden_states.shape[0], encoder_hidden_states.shape[1]
        q, k, v = (getattr(attn, name)(torch.cat([encoder_hidden_states, hidden_states], dim=1))
                   .unflatten(-1, (attn.heads, head_dim)) for name in ("to_q", "to_k", "to_v"))
        if len(kv_cache.k_caches) == 1:
            k_cached, v_cached = (cache[0].expand(batch, -1, -1, -1)
                                  for cache in (kv_cache.k_caches, kv_cache.v_caches))
        else:  # (one cache per sample, or each repeated: the cache joins them)
            k_cached, v_cached = kv_cache.get(k[:, :0], v[:, :0])
        rope = None
        if image_rotary_emb is not None:
            rope = _latent_rope(_latent_rope(image_rotary_emb, n_text, text_first=True), k_cached.shape[1],
                                text_first=False)
        out, _ = _streams_attention([(q, k, v, attn.norm_q, attn.norm_k), (q[:, :0], k_cached, v_cached, None, None)],
                                    head_dim, rope, None, rope_interleaved=False)
        text, image = attn.to_out[1](attn.to_out[0](out.flatten(2))).split([n_text, hidden_states.shape[1]], dim=1)
        return image, text


class PydiffHunyuanVideoAttnProcessor(_RankLocal):
    """Drop-in for HunyuanVideo's ``HunyuanVideoAttnProcessor2_0``: [video; text] attention in one call, joint
    (dual-stream blocks: the text through its added projections) or over the blocks' joined tokens (single-stream),
    with the QK RMSNorms in the prologue, the RoPE on the video tokens (identity rows for the text) and the text
    padding as the key mask; no concatenation of q, k, v and no split. ``stock_type``: the stock processor for the
    calls the kernel does not take (the copy of HunyuanVideo's a model has)."""

    def __init__(self, stock_type=HunyuanVideoAttnProcessor2_0):
        self.stock = stock_type()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        head_dim = attn.inner_dim // attn.heads
        if (attention_mask is not None and not _kernel_reads(attention_mask)) or head_dim > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        rope = None if image_rotary_emb is None else _latent_rope(image_rotary_emb, n_text, text_first=False)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            video, text = _streams_attention([_image_stream(attn, hidden_states, head_dim),
                                              _text_stream(attn, encoder_hidden_states, head_dim)],
                                             head_dim, rope, attention_mask)
            video, text = video.flatten(2), text.flatten(2)
        else:
            joined = hidden_states if encoder_hidden_states is None else \
                torch.cat([hidden_states, encoder_hidden_states], dim=1)
            out = _streams_attention([_image_stream(attn, joined, head_dim)], head_dim, rope, attention_mask)
            out = out.flatten(2)
            if encoder_hidden_states is None:
                return out, None
            video, text = out[:, :-n_text], out[:, -n_text:]
        return _hunyuan_projections(attn, video, text)


def _hunyuan_projections(attn, video: torch.Tensor, text: torch.Tensor):
    """HunyuanVideo's (and 1.5's) output projections of the video and text outputs, where the module has them."""
    if getattr(attn, "to_out", None) is not None:
        video = attn.to_out[1](attn.to_out[0](video))
    if getattr(attn, "to_add_out", None) is not None:
        text = attn.to_add_out(text)
    return video, text


class PydiffHunyuanVideo15AttnProcessor(_RankLocal):
    """Drop-in for HunyuanVideo 1.5's ``HunyuanVideo15AttnProcessor2_0``: [video; text] as a joint call with the QK
    RMSNorms in the prologue and the RoPE on the video tokens. The stock processor masks with the outer product of
    the joined tokens' mask, a (B, 1, N, N) tensor; a query that is not padding sees the tokens' mask as its key
    mask, and one that is sees no key, which SDPA answers with zeros: ours reads the tokens' mask as the key mask and
    zeroes the padding's rows, so no N x N mask is built or read."""

    def __init__(self):
        self.stock = _stock(HunyuanVideo15AttnProcessor2_0, "HunyuanVideo 1.5", "0.36")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        head_dim = attn.inner_dim // attn.heads
        if head_dim > MAX_HEAD_DIM or attention_mask is None or attention_mask.dim() != 2 or \
                (image_rotary_emb is not None and any(t.dim() != 2 for t in image_rotary_emb)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        tokens = hidden_states.shape[1] + n_text
        # (the stock processor's tokens' mask: the given mask's columns last, every token before them kept)
        kept = F.pad(attention_mask, (tokens - attention_mask.shape[1], 0), value=True).bool()
        rope = None if image_rotary_emb is None else _latent_rope(image_rotary_emb, n_text, text_first=False)
        streams = [_image_stream(attn, hidden_states, head_dim)]
        if encoder_hidden_states is not None:
            streams.append(_text_stream(attn, encoder_hidden_states, head_dim))
        out = _streams_attention(streams, head_dim, rope, kept[:, None, None, :])
        outs = list(out) if encoder_hidden_states is not None else [out]
        start = 0  # (the padding's query rows zeroed in the streams the given mask reaches: the text's)
        for i, x in enumerate(outs):
            if start + x.shape[1] > tokens - attention_mask.shape[1]:
                outs[i] = x * kept[:, start:start + x.shape[1], None, None].to(x.dtype)
            start += x.shape[1]
        video, *text = (x.flatten(2) for x in outs)
        if not text:
            return video, None  # (the stock processor's output when there is no text)
        return _hunyuan_projections(attn, video, text[0])


class PydiffMochiAttnProcessor(_RankLocal):
    """Drop-in for Mochi's ``MochiAttnProcessor2_0``: [video; text] as one joint call over the batch (the stock
    processor loops over the samples, dropping each one's text padding), the QK RMSNorms and the per-head RoPE (one
    angle per pair, (N, H, D/2), read in place) on the video tokens in the prologue, the text padding as the key
    mask. The text outputs are placed as the stock processor places them: each sample's valid tokens' first, in
    order, then zeros."""

    def __init__(self):
        self.stock = MochiAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb=None):
        head_dim = attn.inner_dim // attn.heads
        if head_dim > MAX_HEAD_DIM or attention_mask is None or \
                (image_rotary_emb is not None and any(t.dim() != 3 for t in image_rotary_emb)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        n_text = encoder_hidden_states.shape[1]
        kept = attention_mask.bool()
        keys = torch.cat([kept.new_ones(kept.shape[0], hidden_states.shape[1]), kept], 1)[:, None, None]
        rope = None
        if image_rotary_emb is not None:
            rope = tuple(t[None] for t in _latent_rope(image_rotary_emb, n_text, text_first=False))
        video, text = _streams_attention([_image_stream(attn, hidden_states, head_dim),
                                          _text_stream(attn, encoder_hidden_states, head_dim)], head_dim, rope, keys)
        text = text.flatten(2)
        # (the valid tokens' rows first: a stable sort of the padding flags puts their indices first, in order)
        order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices
        text = text.gather(1, order[..., None].expand(-1, -1, text.shape[2]))
        valid = torch.arange(n_text, device=kept.device) < kept.sum(1, keepdim=True)
        text = text * valid[..., None].to(text.dtype)
        video = attn.to_out[1](attn.to_out[0](video.flatten(2)))
        return video, (attn.to_add_out(text) if hasattr(attn, "to_add_out") else text)


class PydiffQwenImageAttnProcessor(_RankLocal):
    """Drop-in for Qwen-Image's ``QwenDoubleStreamAttnProcessor2_0`` (diffusers 0.39+, which masks the text
    padding): joint [text; image] attention with the per-stream QK RMSNorms and the RoPE in the kernel's prologue
    and the text padding as its key mask; no concatenation, no split, no complex-number RoPE passes."""

    def __init__(self):
        self.stock = QwenDoubleStreamAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 encoder_hidden_states_mask: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        head_dim = attn.inner_dim // attn.heads
        complex_rope = image_rotary_emb is None or all(torch.is_complex(f) and f.dim() == 2 for f in image_rotary_emb)
        if encoder_hidden_states is None or attention_mask is not None or head_dim > MAX_HEAD_DIM or \
                not complex_rope:  # (the stock processor refuses the first two)
            return self.stock(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, attention_mask,
                              image_rotary_emb)
        rope = None
        if image_rotary_emb is not None:
            image_freqs, text_freqs = image_rotary_emb
            rope = _complex_rope(torch.cat([text_freqs, image_freqs]))  # (rows as the join)
        mask = None
        if encoder_hidden_states_mask is not None:
            image_keys = encoder_hidden_states_mask.new_ones(hidden_states.shape[:2], dtype=torch.bool)
            mask = torch.cat([encoder_hidden_states_mask.to(torch.bool), image_keys], dim=1)[:, None, None]
        context, image = _streams_attention([_text_stream(attn, encoder_hidden_states, head_dim),
                                             _image_stream(attn, hidden_states, head_dim)], head_dim, rope, mask)
        image = attn.to_out[0](image.flatten(2))
        if len(attn.to_out) > 1:
            image = attn.to_out[1](image)
        return image, attn.to_add_out(context.flatten(2))


class PydiffWanAttnProcessor(_RankLocal):
    """Drop-in for Wan's ``WanAttnProcessor`` (Wan 2.1/2.2 self- and cross-attention): the RoPE in the kernel's
    prologue (the stock processor's takes several elementwise passes per tensor); in image-to-video
    cross-attention, the text's and the image context's attentions summed in one pass over q (the kernel's
    negative-prompt stream with a scale of -1: out = A(q, k_text, v_text) + A(q, k_image, v_image)). Wan's QK
    RMSNorms span every head, so they run as modules first, as in the stock processor. ``stock_type``: the stock
    processor for the calls the kernel does not take (the copy of Wan's a model has)."""

    def __init__(self, stock_type=WanAttnProcessor):
        self.stock = stock_type()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, rotary_emb=None) -> torch.Tensor:
        head_dim = attn.inner_dim // attn.heads
        image_context = attn.add_k_proj is not None
        rope = None
        if rotary_emb is not None and all(t.dim() == 4 and t.shape[0] == 1 and t.shape[2] == 1 for t in rotary_emb):
            # (1, N, 1, D) -> (N, D) rows, read in place: pairs interleaved, each angle repeated for both channels
            # of its pair (WanRotaryPosEmbed), as the kernel's interleaved tables hold them
            rope = tuple(t[0, :, 0] for t in rotary_emb)
        if head_dim > MAX_HEAD_DIM or _head_dim(attn) != head_dim or (rotary_emb is not None and rope is None) or \
                (attention_mask is not None and (image_context or not _kernel_reads(attention_mask))):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        image = None
        if image_context:
            # (the stock processor's split: the text encoder's 512 tokens last, the image context before them)
            image_tokens = encoder_hidden_states.shape[1] - 512
            image, encoder_hidden_states = encoder_hidden_states[:, :image_tokens], \
                encoder_hidden_states[:, image_tokens:]
        return _wan_attention(attn, hidden_states, encoder_hidden_states, image, attention_mask, rope)


def _wan_attention(attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor],
                   image: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor], rope) -> torch.Tensor:
    """Wan's attention through its output projection: its across-heads QK norms as modules, the RoPE tables
    ``rope`` in the prologue; with an image context ``image``, its attention (the added projections) summed with
    the text's in the same pass over q (the negative stream at a scale of -1)."""
    negative = None
    if image is not None:
        key_image, value_image = _get_added_kv_projections(attn, image)
        negative = (attn.norm_added_k(key_image).unflatten(2, (attn.heads, -1)),
                    value_image.unflatten(2, (attn.heads, -1)))
    return _projected_attention(attn, hidden_states, encoder_hidden_states, (attn.norm_q, attn.norm_k),
                                attn_mask=attention_mask, rope=rope, negative=negative, negative_scale=-1.0)


def _projected_attention(attn, hidden_states: torch.Tensor, context: Optional[torch.Tensor], norms,
                         post_mask: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
    """The attention of a module with ``to_q``, ``to_k``, ``to_v`` (or Wan's fused ones) and ``to_out`` (linear,
    dropout), through its output projection: q of ``hidden_states``, k and v of ``context`` (itself where None),
    ``norms`` (q's and k's, spanning every head: modules run first, or None), ``pydiff.attention`` with ``kwargs``
    on the (B, N, H, D) views; ``post_mask`` (B, N_q) multiplies the outputs (LongCat-AudioDiT's audio mask).
    Wan's, AnyFlow's and LongCat-AudioDiT's attentions."""
    if _fused_projections(attn):
        q, k, v = _get_qkv_projections(attn, hidden_states, context)
    else:
        source = hidden_states if context is None else context
        q, k, v = attn.to_q(hidden_states), attn.to_k(source), attn.to_v(source)
    q_norm, k_norm = norms
    q = q if q_norm is None else q_norm(q).to(v.dtype)
    k = k if k_norm is None else k_norm(k).to(v.dtype)
    q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
    out = attention(q, k, v, layout="bnhd", **kwargs)
    if post_mask is not None:
        out = out * post_mask[:, :, None, None].to(out.dtype)
    return attn.to_out[1](attn.to_out[0](out.flatten(2)))


class PydiffWanAnimateFaceBlockAttnProcessor(_RankLocal):
    """Drop-in for Wan-Animate's ``WanAnimateFaceBlockAttnProcessor`` (diffusers 0.36+; its face adapter's
    temporally aligned cross-attention to the motion vectors): the video's S tokens of each of the motion's T frames
    attend to that frame's N motion tokens, as one call over B*T batch rows of (B*T, S/T, H, D) query views and
    (B*T, N, H, D) key and value views of the projections (no copies), the per-head QK RMSNorms in the kernel's
    prologue (other norms as modules); the pre-norms and the multiplicative mask after the output projection as
    there."""

    def __init__(self):
        self.stock = _stock(WanAnimateFaceBlockAttnProcessor, "Wan-Animate", "0.36")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        head_dim = attn.inner_dim // attn.heads
        if head_dim > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask)
        hidden_states = attn.pre_norm_q(hidden_states)
        motion = attn.pre_norm_kv(encoder_hidden_states)
        batch, frames, tokens, _ = motion.shape  # (B, T, N, C): N motion tokens per frame
        query, key, value = _get_qkv_projections(attn, hidden_states, motion.flatten(1, 2))
        q = query.unflatten(2, (attn.heads, head_dim)).unflatten(1, (frames, -1)).flatten(0, 1)
        k, v = (t.view(batch * frames, tokens, attn.heads, -1) for t in (key, value))
        out = _streams_attention([(q, k, v, attn.norm_q, attn.norm_k)], head_dim, None, None)
        out = attn.to_out(out.flatten(2).unflatten(0, (batch, frames)).flatten(1, 2))
        if attention_mask is not None:  # (multiplicative, as the stock processor takes it)
            out = out * attention_mask.flatten(start_dim=1)
        return out


class PydiffWanAnimate2CrossAttnProcessor(_RankLocal):
    """Drop-in for Wan-Animate 2's ``WanAnimate2CrossAttnProcessor`` (diffusers 0.42+): Wan's cross-attention, the
    text's and the image context's (given apart) attentions summed in one pass over q."""

    def __init__(self):
        self.stock = _stock(WanAnimate2CrossAttnProcessor, "Wan-Animate 2", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 encoder_hidden_states_image: Optional[torch.Tensor] = None) -> torch.Tensor:
        if _head_dim(attn) > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_image)
        return _wan_attention(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_image, None, None)


class PydiffWanAnimate2AttnProcessor(_RankLocal):
    """Drop-in for Wan-Animate 2's ``WanAnimate2AttnProcessor`` (diffusers 0.42+), its self-attention. The reference
    pass (``kv_cache_mode="extract"``): dense, the RoPE in the kernel's prologue. The generation pass ("cached"):
    the stock processor's packed ``[generation | reference]`` buffer (the same zero padding, which its BlockMask
    attends to) in one block-sparse call on the model's BlockMask, whose partial blocks become tiles once per
    BlockMask (the model builds it once per video size, from sizes alone); the queries and the generation keys turn
    by the generation grid's tables and the reference keys by the reference grid's (``key_rope``), in the
    prologue. The stock processor runs this through flex attention, which needs torch.compile (eagerly, flex
    attention materialises every score). Its RoPE is computed in float64, ours in float32, both rounded to the
    model's dtype."""

    def __init__(self):
        self.stock = _stock(WanAnimate2AttnProcessor, "Wan-Animate 2", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, rotary_emb: torch.Tensor, grid_sizes: torch.Tensor,
                 kv_cache, kv_cache_mode: str, rope_stride: int = 1, reference_rotary_emb=None,
                 reference_grid_sizes=None, reference_rope_stride: int = 1, attention_mask=None,
                 origin_latent_frames: Optional[int] = None, origin_latent_hw: Optional[int] = None) -> torch.Tensor:
        cached = kv_cache_mode == "cached"
        if _head_dim(attn) > MAX_HEAD_DIM or kv_cache_mode not in ("extract", "cached") or \
                (cached and type(attention_mask).__name__ != "BlockMask"):
            return self.stock(attn, hidden_states, rotary_emb, grid_sizes, kv_cache, kv_cache_mode, rope_stride,
                              reference_rotary_emb, reference_grid_sizes, reference_rope_stride, attention_mask,
                              origin_latent_frames, origin_latent_hw)
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        q, k = attn.norm_q(query).unflatten(2, (attn.heads, -1)), attn.norm_k(key).unflatten(2, (attn.heads, -1))
        v = value.unflatten(2, (attn.heads, -1))
        tables = _wan_tables_once(0, rotary_emb, grid_sizes, rope_stride, q.shape[1])
        if cached:
            reference = kv_cache.get()
            reference_tables = _wan_tables_once(1, reference_rotary_emb, reference_grid_sizes, reference_rope_stride,
                                                reference[0].shape[1])
            out = _wan_in_context(q, k, v, tables, reference, reference_tables, grid_sizes, reference_grid_sizes,
                                  origin_latent_frames, origin_latent_hw, attention_mask)
        else:
            kv_cache.store(k, v)  # (unturned, as the stock processor keeps them)
            out = attention(q, k, v, layout="bnhd", rope=_complex_rope(tables), rope_interleaved=True)
        return attn.to_out[1](attn.to_out[0](out.flatten(2)))


#: ``_made_once``'s slots for Wan-Animate 2's last tables: the generation grid's, the reference grid's
_LAST_WAN_TABLES = ([None, None, None], [None, None, None])


def _wan_tables_once(which: int, freqs: torch.Tensor, grid_sizes: torch.Tensor, stride: int,
                     tokens: int) -> torch.Tensor:
    """``_wan_grid_tables``, made once per forward (``which``: 0 the generation grid's, 1 the reference grid's):
    every layer is handed the same grid sizes and table, so no layer after the first reads the sizes on the host."""
    return _made_once(_LAST_WAN_TABLES[which], (_storage_key([freqs]), stride, tokens), grid_sizes,
                      lambda: _wan_grid_tables(freqs, grid_sizes, stride, tokens))


def _wan_grid_tables(freqs: torch.Tensor, grid_sizes: torch.Tensor, stride: int, tokens: int) -> torch.Tensor:
    """Wan-Animate 2's RoPE angles for each sample's (frames, height, width) grid (``rope_apply``'s: the complex
    table ``freqs`` split over the three axes, frames ``stride`` apart), (B, tokens, D / 2) complex; 1 (no turn)
    past a sample's grid."""
    c = freqs.shape[1]
    axes = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    tables = torch.ones(len(grid_sizes), tokens, c, dtype=freqs.dtype, device=freqs.device)
    for i, (f, h, w) in enumerate(grid_sizes.tolist()):
        tables[i, :f * h * w] = torch.cat([axes[0][:f * stride:stride].view(f, 1, 1, -1).expand(f, h, w, -1),
                                           axes[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
                                           axes[2][:w].view(1, 1, w, -1).expand(f, h, w, -1)], -1).flatten(0, 2)
    return tables


def _frames_packed(x: torch.Tensor, frames: int, hw: int, origin_hw: int, length: int, fill=0) -> torch.Tensor:
    """x's first ``frames`` frames of ``hw`` tokens (dim 1) laid out ``origin_hw`` tokens apart in a new buffer of
    ``length`` tokens, ``fill`` elsewhere (Wan-Animate 2's packing)."""
    out = x.new_full((x.shape[0], length, *x.shape[2:]), fill)
    out[:, :frames * origin_hw].unflatten(1, (frames, origin_hw))[:, :, :hw] = \
        x[:, :frames * hw].unflatten(1, (frames, hw))
    return out


#: a BlockMask a model built -> {(queries, keys): its ``block_mask_tiles``}. Wan-Animate 2 builds one per video size
#: and AnyFlow FAR one per chunk layout, each from sizes alone (their mask_mods read nothing that changes), and
#: every layer attends on it: it becomes tiles once
_MODEL_MASK_TILES = weakref.WeakKeyDictionary()


def _model_mask_tiles(block_mask, n_q: int, n_k: int) -> dict:
    """``block_mask_tiles`` of a model's BlockMask, made once per BlockMask and size (``_MODEL_MASK_TILES``)."""
    made = _MODEL_MASK_TILES.setdefault(block_mask, {})
    if (n_q, n_k) not in made:
        made[n_q, n_k] = block_mask_tiles(block_mask, n_q, n_k)
    return made[n_q, n_k]


def _wan_in_context(q, k, v, tables, reference, reference_tables, grid_sizes, reference_grid_sizes,
                    origin_frames: int, origin_hw: int, block_mask) -> torch.Tensor:
    """The generation pass's attention: the generation tokens (q, k, v) and the reference keys and values beside
    them packed as the stock processor packs them, attended on ``block_mask``; the generation tokens' outputs, and
    past the grid the queries themselves (the stock processor's pass-through)."""
    frames, height, width = grid_sizes[0].tolist()
    ref_frames, ref_height, ref_width = reference_grid_sizes[0].tolist()
    hw, ref_hw = height * width, ref_height * ref_width
    n_q = math.ceil((origin_frames + 1) * origin_hw / 128) * 128
    n_ref = math.ceil(origin_frames * origin_hw / 128) * 128

    def packed(x, y, fill=0):
        here = _frames_packed(x, frames, hw, origin_hw, n_q, fill)
        return here if y is None else torch.cat([here, _frames_packed(y, ref_frames, ref_hw, origin_hw, n_ref, fill)],
                                                1)

    out = attention(packed(q, None), packed(k, reference[0]), packed(v, reference[1]), layout="bnhd",
                    rope=_complex_rope(packed(tables, None, 1)),
                    key_rope=_complex_rope(packed(tables, reference_tables, 1)), rope_interleaved=True,
                    **_model_mask_tiles(block_mask, n_q, n_q + n_ref))
    valid = frames * hw
    out = out[:, :frames * origin_hw].unflatten(1, (frames, origin_hw))[:, :, :hw].flatten(1, 2)
    return torch.cat([out, q[:, valid:]], 1)


class PydiffAnyFlowAttnProcessor(_RankLocal):
    """Drop-in for AnyFlow's ``AnyFlowAttnProcessor`` (diffusers 0.39+; AnyFlow FAR's copy too): Wan's attention,
    its QK RMSNorms (across heads) as modules first, its complex RoPE in the prologue (the keys' table as their own
    where it is another), in float32 where the stock processor rotates in float64. ``stock_type``: the stock
    processor for the calls the kernel does not take (the copy of it a model has)."""

    def __init__(self, stock_type=AnyFlowAttnProcessor):
        self.stock = _stock(stock_type, "AnyFlow", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, rotary_emb=None) -> torch.Tensor:
        tables = None
        if rotary_emb is not None and all(torch.is_complex(f) and f.dim() == 4 and f.shape[:2] == (1, 1)
                                          for f in (rotary_emb["query"], rotary_emb["key"])):
            tables = [_complex_rope(rotary_emb[name][0, 0]) for name in ("query", "key")]
        if attn.inner_dim // attn.heads > MAX_HEAD_DIM or (rotary_emb is not None and tables is None) or \
                (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        rope = key_rope = None
        if tables is not None:
            rope, key_rope = tables[0], (None if rotary_emb["key"] is rotary_emb["query"] else tables[1])
        return _projected_attention(attn, hidden_states, encoder_hidden_states, (attn.norm_q, attn.norm_k),
                                    attn_mask=attention_mask, rope=rope, key_rope=key_rope)


class PydiffAnyFlowCrossAttnProcessor(_RankLocal):
    """Drop-in for AnyFlow's ``AnyFlowCrossAttnProcessor`` (diffusers 0.39+; AnyFlow FAR's copy too): the text's
    attention, its QK RMSNorms as modules first."""

    def __init__(self, stock_type=AnyFlowCrossAttnProcessor):
        self.stock = _stock(stock_type, "AnyFlow", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attn.inner_dim // attn.heads > MAX_HEAD_DIM or \
                (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask)
        return _projected_attention(attn, hidden_states, encoder_hidden_states, (attn.norm_q, attn.norm_k),
                                    attn_mask=attention_mask)


class PydiffAnyFlowCausalAttnProcessor(_RankLocal):
    """Drop-in for AnyFlow FAR's ``AnyFlowCausalAttnProcessor`` (diffusers 0.39+): the KV cache kept as the stock
    processor keeps it (keys before their RoPE); the training rollout's and the cache prefill's chunk-causal
    BlockMask in one block-sparse call (its partial blocks as tiles, once per BlockMask); the autoregressive step
    over [compressed cache; full cache; new] keys, with as many zero keys after them as the stock processor pads
    (it pads to the flex block and attends to them: a weight each in the softmax, no value); the queries' and the
    keys' own RoPE tables in the prologue (float32; the stock processor's in float64). The stock processor needs
    flex attention (compiled: eagerly it materialises every score)."""

    def __init__(self):
        self.stock = _stock(AnyFlowCausalAttnProcessor, "AnyFlow FAR", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask=None, rotary_emb=None, kv_cache=None, kv_cache_flag=None) -> torch.Tensor:
        complex_tables = rotary_emb is None or all(torch.is_complex(rotary_emb[name]) and rotary_emb[name].dim() == 4
                                                   for name in ("query", "key"))
        if attn.inner_dim // attn.heads > MAX_HEAD_DIM or not complex_tables or \
                (attention_mask is not None and type(attention_mask).__name__ != "BlockMask"):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, kv_cache,
                              kv_cache_flag)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        q = q if attn.norm_q is None else attn.norm_q(q)
        k = k if attn.norm_k is None else attn.norm_k(k)
        # (B, H, N, D), as the cache holds them
        q, k, v = (t.to(hidden_states.dtype).unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
        if kv_cache is not None:
            k, v = _far_cache(kv_cache, kv_cache_flag, k, v)
        key_freqs = None if rotary_emb is None else rotary_emb["key"][0, 0]
        extra = {}
        if attention_mask is not None:
            extra = _model_mask_tiles(attention_mask, q.shape[2], k.shape[2])
        elif q.shape[2] % 128:
            pad = 128 - q.shape[2] % 128
            k, v = (torch.cat([t, t.new_zeros(*t.shape[:2], pad, t.shape[3])], 2) for t in (k, v))
            if key_freqs is not None:
                key_freqs = torch.cat([key_freqs, key_freqs.new_ones(pad, key_freqs.shape[1])])
        out = attention(q, k, v, rope=None if rotary_emb is None else _complex_rope(rotary_emb["query"][0, 0]),
                        key_rope=None if key_freqs is None else _complex_rope(key_freqs), **extra)
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))


def _far_cache(kv_cache: dict, flag: dict, k: torch.Tensor, v: torch.Tensor):
    """AnyFlow FAR's KV cache, as its stock processor keeps it: the prefill (``is_cache_step``) writes k and v
    (B, H, N, D) into its compressed and full parts and attends to them alone; a later step attends to [compressed
    cache; full cache; k]."""
    compressed, full = kv_cache["compressed_cache"], kv_cache["full_cache"]
    if flag["is_cache_step"]:
        split = flag["num_compressed_tokens"]
        compressed[:, :, :, :split] = torch.stack([k[:, :, :split], v[:, :, :split]])
        full[:, :, :, :flag["num_full_tokens"]] = torch.stack([k[:, :, split:], v[:, :, split:]])
        return k, v
    cached = [compressed[:, :, :, :flag["num_cached_compressed_tokens"]],
              full[:, :, :, :flag["num_cached_full_tokens"]]]
    return tuple(torch.cat([part[i] for part in cached] + [new], 2) for i, new in enumerate((k, v)))


class PydiffAudioDiTSelfAttnProcessor(_RankLocal):
    """Drop-in for LongCat-AudioDiT's ``AudioDiTSelfAttnProcessor`` (diffusers 0.39+): its QK RMSNorms (across heads)
    as modules first, its RoPE (halves paired, tables in the model's dtype) in the prologue, the token mask as the
    kernel's key mask, then the padded tokens' outputs zeroed as the stock processor zeroes them."""

    def __init__(self):
        self.stock = _stock(AudioDiTSelfAttnProcessor, "LongCat-AudioDiT", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 audio_rotary_emb=None) -> torch.Tensor:
        if attn.inner_dim // attn.heads > MAX_HEAD_DIM or \
                (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, attention_mask, audio_rotary_emb)
        return _audio_dit_attention(attn, hidden_states, None, attention_mask, attention_mask, audio_rotary_emb, None)


class PydiffAudioDiTCrossAttnProcessor(_RankLocal):
    """Drop-in for LongCat-AudioDiT's ``AudioDiTCrossAttnProcessor`` (diffusers 0.39+): the audio queries turned by
    the audio's RoPE tables and the prompt's keys by the prompt's (``key_rope``), in the prologue; the prompt mask
    as the key mask, the audio mask on the outputs after."""

    def __init__(self):
        self.stock = _stock(AudioDiTCrossAttnProcessor, "LongCat-AudioDiT", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 post_attention_mask: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, audio_rotary_emb=None,
                 prompt_rotary_emb=None) -> torch.Tensor:
        if attn.inner_dim // attn.heads > MAX_HEAD_DIM or \
                (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, post_attention_mask, attention_mask,
                              audio_rotary_emb, prompt_rotary_emb)
        key_rope = prompt_rotary_emb
        if audio_rotary_emb is not None and key_rope is None:  # (the prompt's keys unturned, as there)
            key_rope = _unturned(encoder_hidden_states.shape[1], _head_dim(attn), hidden_states.device)
        return _audio_dit_attention(attn, hidden_states, encoder_hidden_states, attention_mask, post_attention_mask,
                                    audio_rotary_emb, key_rope)


def _audio_dit_attention(attn, hidden_states: torch.Tensor, context: Optional[torch.Tensor], key_mask,
                         post_mask, query_rope, key_rope) -> torch.Tensor:
    """LongCat-AudioDiT's attention through its output projection: its QK norms as modules, q turned by
    ``query_rope`` and k by ``key_rope`` (None: q's) (rows (N, D), halves paired), ``key_mask`` (B, N_k) on the
    keys and ``post_mask`` (B, N_q) on the outputs."""
    norms = (attn.q_norm, attn.k_norm) if attn.qk_norm else (None, None)
    key_count = (hidden_states if context is None else context).shape[1]
    return _projected_attention(attn, hidden_states, context, norms, post_mask,
                                attn_mask=_key_mask(key_mask, hidden_states.shape[0], key_count), rope=query_rope,
                                key_rope=key_rope, rope_interleaved=False)


#: ``_made_once``'s slot for the last dense mask ``_mask_blocks`` was asked for: a model hands its layers one mask per
#: forward (ACE-Step's sliding-window band), whose blocks are found once
_LAST_MASK_BLOCKS = [None, None, None]


def _mask_blocks(mask: torch.Tensor, n_q: int, n_k: int) -> dict:
    """``mask_block_mask(mask, n_q, n_k, 64)``, made once for the same mask tensor (again once it changes in
    place)."""
    return _made_once(_LAST_MASK_BLOCKS, (n_q, n_k), mask, lambda: mask_block_mask(mask, n_q, n_k, 64))


class PydiffAceStepAttnProcessor(_RankLocal):
    """Drop-in for ACE-Step 1.5's ``AceStepAttnProcessor2_0`` (diffusers 0.39+): grouped-query attention with its
    per-head QK RMSNorms and, in self-attention, its RoPE (Qwen3's: halves paired) in the kernel's prologue, with
    the module's scale; its masks (the sliding-window layers' additive band, a padding mask) read as given, the
    band's 64 x 64 blocks that keep no weight skipped (``mask_block_mask``, made once for the layers the model
    hands one band: ``_mask_blocks``)."""

    def __init__(self):
        self.stock = _stock(AceStepAttnProcessor2_0, "ACE-Step 1.5", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None) -> torch.Tensor:
        if attn.head_dim > MAX_HEAD_DIM or (attn.training and attn.dropout) or \
                (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        cross = attn.is_cross_attention and encoder_hidden_states is not None
        stream = _cross_stream(attn, hidden_states, encoder_hidden_states if cross else None, attn.head_dim)
        mask = _key_mask(attention_mask, hidden_states.shape[0], stream[1].shape[1])
        band = not cross and getattr(attn, "sliding_window", None) is not None and mask is not None and \
            mask.dim() == 4 and mask.shape[-2] > 1
        out = _streams_attention([stream], attn.head_dim, None if cross else image_rotary_emb, mask,
                                 rope_interleaved=False, scale=attn.scaling,
                                 **(_mask_blocks(mask, stream[0].shape[1], stream[1].shape[1]) if band else {}))
        return attn.to_out[1](attn.to_out[0](out.flatten(2)))


class PydiffCosmos3AttnProcessor(_RankLocal):
    """Drop-in for Cosmos 3's ``Cosmos3AttnProcessor`` (diffusers 0.39+), its two pathways: the understanding
    tokens' causal self-attention (``causal=True``: the blocks above the diagonal never read) and the generation
    tokens' attention over [understanding keys; generation keys] as a joint call with a stream of keys only (no
    concatenation), grouped-query heads, the per-head QK RMSNorms and the RoPE (halves paired; the two pathways'
    own tables, the keys' as ``key_rope``) in the prologue. The stock processor rotates in the model's dtype."""

    def __init__(self):
        self.stock = _stock(Cosmos3AttnProcessor, "Cosmos 3", "0.39")

    def __call__(self, attn, und_seq: torch.Tensor, gen_seq: torch.Tensor, rotary_emb):
        if attn.head_dim > MAX_HEAD_DIM or any(t.dim() != 2 for t in rotary_emb):
            return self.stock(attn, und_seq, gen_seq, rotary_emb)
        cos_und, sin_und, cos_gen, sin_gen = rotary_emb
        d = attn.head_dim
        q, k, v = (getattr(attn, name)(und_seq).unflatten(-1, (-1, d))[None] for name in ("to_q", "to_k", "to_v"))
        q2, k2, v2 = (getattr(attn, name)(gen_seq).unflatten(-1, (-1, d))[None]
                      for name in ("add_q_proj", "add_k_proj", "add_v_proj"))
        k_for_gen, gen_norm = k, getattr(attn, "k_norm_und_for_gen", None)  # (0.42's; 0.39 has none)
        if gen_norm is not None:  # (a second norm, the generation pathway's: as modules)
            k_for_gen = gen_norm(attn.norm_k(k))
        understanding = _streams_attention([(q, k, v, attn.norm_q, attn.norm_k)], d, (cos_und, sin_und), None,
                                           rope_interleaved=False, causal=True)
        keys_rope = (torch.cat([cos_und, cos_gen]), torch.cat([sin_und, sin_gen]))
        generation, _ = _streams_attention(
            [(q2, k_for_gen, v, attn.norm_added_q, None if gen_norm is not None else attn.norm_k),
             (q2[:, :0], k2, v2, None, attn.norm_added_k)], d, (cos_gen, sin_gen), None, rope_interleaved=False,
            key_rope=keys_rope)
        return attn.to_out(understanding[0].flatten(-2)), attn.to_add_out(generation[0].flatten(-2))


class PydiffMiniMaxMusic3AttnProcessor(_RankLocal):
    """Drop-in for MiniMax Music 3's ``MiniMaxMusic3AttnProcessor`` (diffusers 0.42+): its partial rotary (the
    leading channels its tables span, halves paired; ``rope_dims``) in the prologue, in float32 where the stock
    processor rotates in the model's dtype."""

    def __init__(self):
        self.stock = _stock(MiniMaxMusic3AttnProcessor, "MiniMax Music 3", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, rotary_emb) -> torch.Tensor:
        if attn.head_dim > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, rotary_emb)
        stream = (*_heads(attn, hidden_states, "to_qkv", ("to_q", "to_k", "to_v"), attn.head_dim), None, None)
        out = _streams_attention([stream], attn.head_dim, rotary_emb, None, rope_interleaved=False,
                                 rope_dims=rotary_emb[0].shape[-1])
        return attn.to_out[1](attn.to_out[0](out.flatten(2)))


class PydiffMiniMaxMusic3DepthAttnProcessor(_RankLocal):
    """Drop-in for MiniMax Music 3's RVQ depth decoder's ``MiniMaxMusic3DepthAttnProcessor`` (diffusers 0.42+): its
    causal self-attention (``causal=True``)."""

    def __init__(self):
        self.stock = _stock(MiniMaxMusic3DepthAttnProcessor, "MiniMax Music 3", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor) -> torch.Tensor:
        if attn.head_dim > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states)
        q, k, v = _heads(attn, hidden_states, "to_qkv", ("to_q", "to_k", "to_v"), attn.head_dim)
        return attn.to_out(attention(q, k, v, layout="bnhd", causal=True).flatten(2))


class PydiffMiniMaxH3AttnProcessor(_RankLocal):
    """Drop-in for MiniMax-H3's ``MiniMaxH3AttnProcessor`` (diffusers 0.42+): its per-head QK RMSNorms and its
    partial rotary (the first 6 x rope_freq_dim channels of each head, halves paired; ``rope_dims``) in the kernel's
    prologue. The stock processor rotates in the model's dtype with its tables rounded to it; ours in float32."""

    def __init__(self):
        self.stock = _stock(MiniMaxH3AttnProcessor, "MiniMax-H3", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, rotary_emb=None,
                 attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        head_dim = _head_dim(attn)
        if head_dim > MAX_HEAD_DIM or (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, rotary_emb, attention_mask)
        out = _streams_attention([_image_stream(attn, hidden_states, head_dim)], head_dim, rotary_emb,
                                 attention_mask, rope_interleaved=False,
                                 rope_dims=0 if rotary_emb is None else rotary_emb[0].shape[-1])
        return attn.to_out[1](attn.to_out[0](out.flatten(2)))


class PydiffStableAudio3SelfAttnProcessor(_RankLocal):
    """Drop-in for Stable Audio 3's ``StableAudio3SelfAttnProcessor`` (diffusers 0.42+): differential attention,
    A(q1, k1, v) - A(q2, k2, v), in one call (the negative stream with queries of its own) whose QK RMSNorms and
    partial rotary (the first half of each head's channels; ``rope_dims``) run in the kernel's prologue, the heads
    read in place from the fused projection; the stock processor runs a norm and a float32 rotation per tensor
    (eight passes) before its two attentions and their difference."""

    def __init__(self):
        self.stock = _stock(StableAudio3SelfAttnProcessor, "Stable Audio 3", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        if attn.dim_heads > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, rope)
        parts = 5 if attn.use_differential else 3
        heads = attn.to_qkv(hidden_states).unflatten(-1, (parts, attn.heads, attn.dim_heads)).unbind(2)
        tables = rope[-hidden_states.shape[1]:].float()
        rope_args = dict(rope=(tables.cos(), tables.sin()), rope_interleaved=False, rope_dims=rope.shape[-1])
        queries, keys = (heads[:2], heads[2:4]) if attn.use_differential else (heads[:1], heads[1:2])
        return attn.to_out(_differential(attn, queries, keys, heads[-1], rope_args).flatten(2))


class PydiffStableAudio3CrossAttnProcessor(_RankLocal):
    """Drop-in for Stable Audio 3's ``StableAudio3CrossAttnProcessor`` (diffusers 0.42+): its differential
    cross-attention to the context in one call, under the context mask (the kernel's key mask, both streams'), the
    QK RMSNorms in the prologue."""

    def __init__(self):
        self.stock = _stock(StableAudio3CrossAttnProcessor, "Stable Audio 3", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, context: torch.Tensor,
                 context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attn.dim_heads > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, context, context_mask)
        split = 2 if attn.use_differential else 1
        queries = attn.to_q(hidden_states).unflatten(-1, (split, attn.heads, attn.dim_heads)).unbind(2)
        *keys, value = attn.to_kv(context).unflatten(-1, (split + 1, attn.heads, attn.dim_heads)).unbind(2)
        mask = None if context_mask is None else context_mask[:, None, None, :].bool()
        return attn.to_out(_differential(attn, queries, keys, value, dict(attn_mask=mask)).flatten(2))


def _differential(attn, queries, keys, value: torch.Tensor, extra: dict) -> torch.Tensor:
    """Stable Audio 3's attention (B, N, H, D) views: A(q1, k1, v) - A(q2, k2, v) (Differential Transformer, Ye et
    al. 2024) for two queries and keys, in one call (the kernel's negative stream with queries of its own, a mask
    on both streams' keys); A(q, k, v) for one; the module's QK norms in the prologue."""
    fused, separate, eps = _plan_norms({"q": attn.q_norm, "k": attn.k_norm}, attn.dim_heads, value.dtype,
                                       value.device)
    queries = [separate["q"](q) if "q" in separate else q for q in queries]
    keys = [separate["k"](k) if "k" in separate else k for k in keys]
    common = dict(layout="bnhd", q_norm_weight=fused.get("q"), k_norm_weight=fused.get("k"), norm_eps=eps, **extra)
    if len(queries) == 1:
        return attention(queries[0], keys[0], value, **common)
    return attention(queries[0], keys[0], value, negative=(queries[1], keys[1], value), **common)


def _ltx_rope(attn, tables):
    """LTX-Video's and LTX-2's RoPE tables as the kernel's per-head tables, read in place: interleaved tables
    (B, N, H*D), which span every head's channels, as (B, N, H, D); LTX-2's split tables (B, H, N, D/2), one angle
    per pair of channels, as (B, N, H, D/2). None for other forms."""
    cos, sin = tables
    if getattr(attn, "rope_type", "interleaved") == "interleaved":
        if attn.inner_kv_dim == attn.inner_dim and all(t.dim() == 3 and t.shape[-1] == attn.inner_dim
                                                       for t in tables):
            return cos.unflatten(-1, (attn.heads, attn.head_dim)), sin.unflatten(-1, (attn.heads, attn.head_dim))
    elif attn.rope_type == "split" and all(t.dim() == 4 and t.shape[1] == attn.heads and
                                           2 * t.shape[-1] == attn.head_dim for t in tables):
        return cos.transpose(1, 2), sin.transpose(1, 2)
    return None


def _ltx_attention(attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor],
                   attention_mask: Optional[torch.Tensor], tables, key_tables=None):
    """LTX-Video's and LTX-2's attention, (B, N, H, D), in one ``pydiff.attention`` call, and the values it read
    (B, N_k, H, D): the RoPE (``tables``; the keys' own, LTX-2's audio-video cross-attention's, ``key_tables``,
    used only with ``tables`` as there) in the prologue, the mask as the kernel reads it; their QK RMSNorms span
    every head, so they run as modules first, as in the stock processors. None where the kernel does not take the
    call (the stock processor's then)."""
    source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    mask = _processor_mask(attn, attention_mask, source.shape[0], source.shape[1])
    rope = None if tables is None else _ltx_rope(attn, tables)
    key_rope = None if tables is None or key_tables is None else _ltx_rope(attn, key_tables)
    if attn.head_dim > MAX_HEAD_DIM or (attention_mask is not None and mask is None) or \
            (tables is not None and rope is None) or (key_tables is not None and rope is not None and key_rope is None):
        return None
    q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (-1, attn.head_dim))
    k = attn.norm_k(attn.to_k(source)).unflatten(2, (-1, attn.head_dim))
    v = attn.to_v(source).unflatten(2, (-1, attn.head_dim))
    return attention(q, k, v, layout="bnhd", attn_mask=mask, rope=rope, key_rope=key_rope,
                     rope_interleaved=getattr(attn, "rope_type", "interleaved") == "interleaved"), v


class PydiffLTXVideoAttnProcessor(_RankLocal):
    """Drop-in for ``LTXVideoAttnProcessor`` (LTX-Video): the RoPE in the kernel's prologue, its tables
    (B, N, H*D), which span every head's channels, read in place as per-head tables (B, N, H, D); the stock
    processor rotates q and k over the whole inner dim in several elementwise passes each."""

    def __init__(self):
        self.stock = LTXVideoAttnProcessor()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None) -> torch.Tensor:
        called = _ltx_attention(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if called is None:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        return attn.to_out[1](attn.to_out[0](called[0].flatten(2)))


class PydiffLTX2AttnProcessor(_RankLocal):
    """Drop-in for LTX-2's ``LTX2AudioVideoAttnProcessor`` (diffusers 0.37+): LTX-Video's call for its video and
    audio self-attention (interleaved or split RoPE tables, per head), text cross-attention (the padding as the key
    mask) and audio-video cross-attention (the keys turned by tables of their own, ``key_rotary_emb``: the kernel's
    ``key_rope``), then its per-head gates. ``stock_type``: the stock processor for the calls the kernel does not
    take (the copy of LTX-2's a model has)."""

    def __init__(self, stock_type=None):
        self.stock = _stock(stock_type or LTX2AudioVideoAttnProcessor, "LTX-2", "0.37")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, query_rotary_emb=None,
                 key_rotary_emb=None) -> torch.Tensor:
        called = _ltx_attention(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                                key_rotary_emb)
        if called is None:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                              key_rotary_emb)
        return self._output(attn, called[0], hidden_states)

    def _output(self, attn, out: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """The attention's output (B, N, H, D) through the per-head gates, where the module has them, and to_out."""
        gate_logits = getattr(attn, "to_gate_logits", None)  # (diffusers 0.38+)
        if gate_logits is not None:  # (the stock processor's per-head gates, 1 where the logits are 0)
            out = out * (2.0 * torch.sigmoid(gate_logits(hidden_states))).unsqueeze(-1)
        return attn.to_out[1](attn.to_out[0](out.flatten(2)))


class PydiffLTX2PerturbedAttnProcessor(PydiffLTX2AttnProcessor):
    """Drop-in for LTX-2's ``LTX2PerturbedAttnProcessor`` (diffusers 0.38+; every attention's processor in a model
    built with ``perturbed_attn``, for spatio-temporal guidance): LTX-2's call, then each sample's output blended
    with its values by the perturbation mask (1: the attention, 0: the values: STG's perturbed pass). A call in
    which every sample is perturbed needs no attention and stays with the stock processor.
    Where the caller leaves ``all_perturbed`` open, it is read from the mask as the stock processor reads it (a
    host sync). ``stock_type``: the stock processor for the calls the kernel does not take (a copy's)."""

    def __init__(self, stock_type=None):
        self.stock = _stock(stock_type or LTX2PerturbedAttnProcessor, "LTX-2's perturbed attention", "0.38")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, query_rotary_emb=None, key_rotary_emb=None,
                 perturbation_mask: Optional[torch.Tensor] = None, all_perturbed: Optional[bool] = None):
        if all_perturbed is None:
            all_perturbed = perturbation_mask is not None and bool(torch.all(perturbation_mask == 0))
        called = None
        if not all_perturbed:
            called = _ltx_attention(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                                    key_rotary_emb)
        if called is None:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                              key_rotary_emb, perturbation_mask, all_perturbed)
        out, values = called
        if perturbation_mask is not None:
            out = torch.lerp(values.flatten(2), out.flatten(2), perturbation_mask).unflatten(2, out.shape[2:])
        return self._output(attn, out, hidden_states)


class PydiffLTX2VaeNeighborhoodAttnProcessor(_RankLocal):
    """Drop-in for ``LTX2VideoVaeNeighborhoodAttnProcessor`` (diffusers 0.42+), the neighborhood attention of
    LTX-2's diffusion decoder (VAE), which runs flex attention over a BlockMask whose build evaluates the window at
    every query and key (N^2 elements: 167 GiB at a 69 x 64 x 96 stage, by diffusers' own count). Here it is
    ``pydiff.neighborhood``'s block-sparse attention: the tokens gathered into the grid's tiled layout once, before
    the projections, the QK RMSNorms and the 3-D RoPE (one angle per pair: t, h and w positions side by side) in
    the kernel's prologue, only the key blocks the windows reach read, the output scattered back before the out
    projection. The decoder builds no BlockMask for it (``build_block_mask`` gives None to other processors). It
    replaces ``LTX2VideoVaeNeighborhoodNattenProcessor`` too (NATTEN's na3d, fetched from the Hub: the same
    windows)."""

    def __init__(self):
        self.stock = _stock(LTX2VideoVaeNeighborhoodAttnProcessor, "LTX-2's diffusion decoder", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, block_mask=None) -> torch.Tensor:
        batch, *grid, channels = hidden_states.shape
        norms, separate, eps = _plan_norms({"q_norm_weight": attn.norm_q, "k_norm_weight": attn.norm_k},
                                           attn.head_dim, hidden_states.dtype, hidden_states.device)
        rope = getattr(attn, "rope", None)
        if attn.head_dim > MAX_HEAD_DIM or separate or not all(hasattr(rope, name) for name in _VAE_ROPE):
            return self.stock(attn, hidden_states, block_mask)
        layout = neighborhood_layout(grid, attn.kernel_size, hidden_states.device)
        tokens = layout.gather(hidden_states.reshape(batch, -1, channels))
        q, k, v = (project(tokens).unflatten(-1, (attn.heads, attn.head_dim))
                   for project in (attn.to_q, attn.to_k, attn.to_v))
        out = attention(q, k, v, attn.scale, layout="bnhd", rope=_ltx2_vae_tables(rope, layout),
                        norm_eps=eps, block_lists=layout.blocks, **norms)
        out = layout.scatter(out.flatten(2)).view(batch, *grid, -1)
        return attn.to_out[0](out)


#: ``_made_once``'s slot for the last LTX-2 decoder stage's RoPE tables
_LAST_VAE_TABLES = [None, None, None]
#: what ``_ltx2_vae_tables`` reads of the decoder's RoPE module (0.42's; another one keeps the stock processor)
_VAE_ROPE = ("rope_dim_split", "base", "_inv_freqs")


def _ltx2_vae_tables(rope, layout) -> Tuple[torch.Tensor, torch.Tensor]:
    """LTX-2's decoder RoPE (``LTX2VideoVaeRotaryPosEmbed3D``: interleaved pairs, the head's channels in t, h and
    w chunks, each turned by its axis position) as (cos, sin) tables of one angle per pair, a row per slot of the
    tiled layout; made once per stage (every block of a stage has one grid)."""
    device = layout.order.device
    key = (layout.grid, layout.tile, layout.split, tuple(rope.rope_dim_split), float(rope.base), device)

    def make():
        positions = [torch.arange(n, dtype=torch.float32, device=device) for n in layout.grid]
        angles = [pos[:, None] * rope._inv_freqs(dim, device)[None, :]
                  for pos, dim in zip(positions, rope.rope_dim_split)]
        grid = torch.meshgrid(*(torch.arange(n, device=device) for n in layout.grid), indexing="ij")
        table = torch.cat([a[g.reshape(-1)] for a, g in zip(angles, grid)], -1)
        table = layout.gather(table, 0)
        return table.cos(), table.sin()
    return _made_once(_LAST_VAE_TABLES, key, None, make)


def _per_row_complex(freqs) -> bool:
    """Whether ``freqs`` is RoPE as the kernel's tables take it after ``_complex_rope``: complex, (B, N, D/2)."""
    return isinstance(freqs, torch.Tensor) and torch.is_complex(freqs) and freqs.dim() == 3


class PydiffZImageAttnProcessor(_RankLocal):
    """Drop-in for Z-Image's ``ZSingleStreamAttnProcessor`` (diffusers 0.36+): its QK RMSNorms and its complex
    RoPE, one table per batch row, in the kernel's prologue, and the padding of each sample's tokens as the key
    mask; the stock processor runs the norms, a complex product per tensor in float32 and SDPA. ``stock_type``: the
    stock processor for the calls the kernel does not take (the Z-Image ControlNet's copy)."""

    #: whether k and v come from ``encoder_hidden_states`` where it is given (Bria FIBO 2's cross-attention; Z-Image's
    #: processor ignores it)
    cross_attention = False

    def __init__(self, stock_type=None):
        self.stock = _stock(stock_type or ZSingleStreamAttnProcessor, "Z-Image", "0.36")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, freqs_cis: Optional[torch.Tensor] = None):
        head_dim = _head_dim(attn)
        if head_dim > MAX_HEAD_DIM or (freqs_cis is not None and not _per_row_complex(freqs_cis)) or \
                (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, freqs_cis)
        # (the stock processor reads a 2-D mask (B, N_k) as (B, 1, 1, N_k), others as SDPA does; as given: a float
        # mask is added)
        mask = attention_mask
        if mask is not None and mask.dim() == 2:
            mask = mask[:, None, None, :]
        rope = None if freqs_cis is None else _complex_rope(freqs_cis)
        context = encoder_hidden_states if self.cross_attention else None
        out = _streams_attention([_cross_stream(attn, hidden_states, context, head_dim)], head_dim, rope, mask)
        out = attn.to_out[0](out.flatten(2))
        return attn.to_out[1](out) if len(attn.to_out) > 1 else out


class PydiffLumina2AttnProcessor(_RankLocal):
    """Drop-in for ``Lumina2AttnProcessor2_0`` (Lumina-Image 2.0): grouped-query attention read as is (the stock
    processor repeats k and v for every query head), the QK RMSNorms and the complex RoPE in the kernel's prologue,
    the token padding as the key mask, and the proportional-attention scale where a base sequence length is set."""

    def __init__(self):
        self.stock = Lumina2AttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb: Optional[torch.Tensor] = None,
                 base_sequence_length: Optional[int] = None) -> torch.Tensor:
        batch, queries, _ = hidden_states.shape
        head_dim = attn.inner_dim // attn.heads
        if head_dim > MAX_HEAD_DIM or (image_rotary_emb is not None and not _per_row_complex(image_rotary_emb)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                              base_sequence_length)
        q = attn.to_q(hidden_states).unflatten(-1, (attn.heads, head_dim))
        k, v = (proj(encoder_hidden_states).unflatten(-1, (-1, head_dim)) for proj in (attn.to_k, attn.to_v))
        scale = attn.scale
        if base_sequence_length is not None:
            scale = math.sqrt(math.log(queries, base_sequence_length)) * attn.scale
        rope = None if image_rotary_emb is None else _complex_rope(image_rotary_emb)
        # (the stock processor's mask: (B, N_k), any dtype, non-zero where the key takes part)
        mask = None if attention_mask is None else attention_mask.bool().view(batch, 1, 1, -1)
        out = _streams_attention([(q, k, v, attn.norm_q, attn.norm_k)], head_dim, rope, mask, scale=scale)
        return attn.to_out[1](attn.to_out[0](out.flatten(2)))


def _rotation_pairs(freqs, head_dim: int):
    """HiDream's and Kandinsky 5's RoPE, a 2 x 2 rotation [[cos, -sin], [sin, cos]] per pair of channels,
    (B, N, 1, P, 2, 2) (Kandinsky 6's one for every batch row, (N, 1, P, 2, 2)), as the kernel's interleaved tables
    of one angle per pair, (B, N, 1, D/2) (or (N, D/2)): its cos and sin entries read in place where it turns every
    pair (P = D/2); where it turns the first half of the head dim only (P = D/4: HiDream's stock processor rotates
    q[..., :D/2]), identity pairs after them. None for other forms."""
    if not isinstance(freqs, torch.Tensor) or freqs.dim() not in (5, 6) or tuple(freqs.shape[-2:]) != (2, 2) or \
            (freqs.dim() == 5 and freqs.shape[1] != 1):
        return None
    if freqs.dim() == 5:
        freqs = freqs[:, 0]
    cos, sin = freqs[..., 0, 0], freqs[..., 1, 0]
    if 2 * cos.shape[-1] == head_dim:
        return cos, sin
    if 4 * cos.shape[-1] == head_dim:
        return torch.cat([cos, torch.ones_like(cos)], -1), torch.cat([sin, torch.zeros_like(sin)], -1)
    return None


class PydiffOmniGenAttnProcessor(_RankLocal):
    """Drop-in for OmniGen's ``OmniGenAttnProcessor2_0``: self-attention over its [condition; time; image] tokens,
    its half-split RoPE (one (N, D) table) in the prologue, its attention mask ((B, 1, N, N), additive: causal over
    the condition, bidirectional over the images) the kernel's mask per query, grouped-query heads read as they
    are."""

    def __init__(self):
        self.stock = OmniGenAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None) -> torch.Tensor:
        head_dim = attn.to_q.out_features // attn.heads
        if head_dim > MAX_HEAD_DIM or (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        stream = _cross_stream(attn, hidden_states, encoder_hidden_states, head_dim)
        rope = None if image_rotary_emb is None else tuple(image_rotary_emb)
        out = _streams_attention([stream], head_dim, rope, attention_mask, rope_interleaved=False)
        return attn.to_out[0](out.flatten(2))


class PydiffHeliosAttnProcessor(_RankLocal):
    """Drop-in for Helios's ``HeliosAttnProcessor`` (diffusers 0.39+): self-attention over [history; current] video
    tokens with its RoPE in the prologue (its (B, N, 2D) table: the cos of the even and the sin of the odd channels,
    read in place as tables of one angle per pair), the history keys amplified by their per-head scale first (RoPE
    is linear: scaling before it is scaling after), and cross-attention to the text; its QK RMSNorms span every head,
    so they run as modules first, as in Wan's."""

    def __init__(self):
        self.stock = _stock(HeliosAttnProcessor, "Helios", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, rotary_emb: Optional[torch.Tensor] = None,
                 original_context_length: Optional[int] = None) -> torch.Tensor:
        head_dim = attn.inner_dim // attn.heads
        if head_dim > MAX_HEAD_DIM or getattr(attn, "fused_projections", False) or \
                (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb,
                              original_context_length)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(context).unflatten(2, (attn.heads, -1))
        history = hidden_states.shape[1] - (original_context_length or 0)
        if not attn.is_cross_attention and attn.is_amplify_history and original_context_length and history > 0:
            scale = 1.0 + torch.sigmoid(attn.history_key_scale) * (attn.max_scale - 1.0)
            scale = scale.view(1, 1, -1, 1) if attn.history_scale_mode == "per_head" else scale
            k = torch.cat([k[:, :history] * scale, k[:, history:]], dim=1)
        rope = None
        if rotary_emb is not None:
            rope = (rotary_emb[:, :, None, 0:head_dim:2], rotary_emb[:, :, None, head_dim + 1::2])
        out = attention(q, k, v, layout="bnhd", rope=rope, attn_mask=attention_mask)
        return attn.to_out[1](attn.to_out[0](out.flatten(2).type_as(q)))


class PydiffHiDreamAttnProcessor(_RankLocal):
    """Drop-in for HiDream-I1's ``HiDreamAttnProcessor``: [image; text] as a joint call (dual-stream blocks) or over
    the joined tokens (single-stream blocks), the RoPE in the kernel's prologue (``_rotation_pairs``: its
    rotation matrices' entries, read in place). Its QK RMSNorms span every head, so they run as modules first, and
    the padding of non-square images has its keys zeroed (a score of 0, not masked out), both as in the stock
    processor."""

    def __init__(self):
        self.stock = HiDreamAttnProcessor()

    def __call__(self, attn, hidden_states: torch.Tensor, hidden_states_masks: Optional[torch.Tensor] = None,
                 encoder_hidden_states: Optional[torch.Tensor] = None, image_rotary_emb=None, *args, **kwargs):
        dtype, head_dim = hidden_states.dtype, attn.inner_dim // attn.heads
        rope = _rotation_pairs(image_rotary_emb, head_dim)
        if head_dim > MAX_HEAD_DIM or rope is None or args or kwargs:
            return self.stock(attn, hidden_states, hidden_states_masks, encoder_hidden_states, image_rotary_emb,
                              *args, **kwargs)

        def heads(x):
            return x.unflatten(-1, (attn.heads, head_dim))

        key = heads(attn.k_rms_norm(attn.to_k(hidden_states)).to(dtype))
        if hidden_states_masks is not None:
            key = key * hidden_states_masks.view(hidden_states.shape[0], -1, 1, 1)
        streams = [(heads(attn.q_rms_norm(attn.to_q(hidden_states)).to(dtype)), key, heads(attn.to_v(hidden_states)),
                    None, None)]
        if not attn.single:
            streams.append((heads(attn.q_rms_norm_t(attn.to_q_t(encoder_hidden_states)).to(dtype)),
                            heads(attn.k_rms_norm_t(attn.to_k_t(encoder_hidden_states)).to(dtype)),
                            heads(attn.to_v_t(encoder_hidden_states)), None, None))
        out = _streams_attention(streams, head_dim, rope, None)
        if attn.single:
            return attn.to_out(out.flatten(2))
        image, text = out
        return attn.to_out(image.flatten(2)), attn.to_out_t(text.flatten(2))


class PydiffPRXAttnProcessor(_RankLocal):
    """Drop-in for PRX's ``PRXAttnProcessor2_0`` (Photoroom's PRX; diffusers 0.36+): its image queries attend over
    [text keys; image keys] and the text has no queries, so the image tokens are one stream (QK RMSNorms and the
    RoPE, its rotation matrices read in place by ``_rotation_pairs``, in the prologue) and the text's keys and
    values a second stream of keys only (its key RMSNorm too, its RoPE rows turning by nothing): nothing
    concatenated; the text padding (B, N_text) the key mask."""

    def __init__(self):
        self.stock = _stock(PRXAttnProcessor2_0, "PRX", "0.36")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None, **kwargs):
        head_dim = attn.head_dim
        rope = None if image_rotary_emb is None else _rotation_pairs(image_rotary_emb.transpose(1, 2), head_dim)
        if encoder_hidden_states is None or kwargs or head_dim > MAX_HEAD_DIM or \
                (image_rotary_emb is not None and rope is None) or (attention_mask is not None and (
                    attention_mask.dim() != 2 or attention_mask.shape[-1] != encoder_hidden_states.shape[1])):
            # (the stock processor's errors for a missing text and for masks of other shapes)
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)
        batch, n_image = hidden_states.shape[:2]
        q, k, v = attn.img_qkv_proj(hidden_states).unflatten(-1, (3, attn.heads, head_dim)).unbind(2)
        k_text, v_text = attn.txt_kv_proj(encoder_hidden_states).unflatten(-1, (2, attn.heads, head_dim)).unbind(2)
        if rope is not None:
            rope = _latent_rope(rope, k_text.shape[1], text_first=False)
        mask = None
        if attention_mask is not None:  # (keys: the image's, then the text's)
            mask = torch.cat([attention_mask.new_ones(batch, n_image, dtype=torch.bool), attention_mask.bool()], 1)
            mask = mask[:, None, None, :]
        out, _ = _streams_attention([(q, k, v, attn.norm_q, attn.norm_k),
                                     (q[:, :0], k_text, v_text, None, attn.norm_added_k)], head_dim, rope, mask)
        return attn.to_out[1](attn.to_out[0](out.flatten(2)))


class PydiffNucleusMoEAttnProcessor(_RankLocal):
    """Drop-in for Nucleus-Image's ``NucleusMoEAttnProcessor2_0`` (diffusers 0.39+): its image queries attend over
    [image keys; text keys] (grouped-query heads, read as they are: the stock processor repeats k and v per query
    head) and the text has no queries: the image tokens one stream, the text's keys and values a second stream of
    keys only, each with its key RMSNorm and complex RoPE (the image's table and the text's, joined: the kernel's
    rows follow [image; text]) in the prologue; text keys and values the model cached (``cached_txt_key``) read as
    they are. Its joint mask (B, N_image + N_text) is the key mask."""

    def __init__(self):
        self.stock = _stock(NucleusMoEAttnProcessor2_0, "Nucleus-Image", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None,
                 cached_txt_key: Optional[torch.Tensor] = None, cached_txt_value: Optional[torch.Tensor] = None):
        head_dim = attn.inner_dim // attn.heads
        batch, n_image = hidden_states.shape[:2]
        cached = cached_txt_key is not None and cached_txt_value is not None
        text = cached or encoder_hidden_states is not None
        n_keys = n_image + (cached_txt_key.shape[1] if cached else
                            encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0)
        mask = _key_mask(attention_mask, batch, n_keys)
        tables = None if image_rotary_emb is None else image_rotary_emb[0]
        if head_dim > MAX_HEAD_DIM or (mask is not None and (mask.dim() != 4 or not _kernel_reads(mask))) or \
                (tables is not None and tables.shape[0] != n_image):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                              cached_txt_key, cached_txt_value)
        heads_kv = attn.inner_kv_dim // head_dim
        q = attn.to_q(hidden_states).unflatten(-1, (attn.heads, head_dim))
        k, v = (projection(hidden_states).unflatten(-1, (heads_kv, head_dim)) for projection in (attn.to_k, attn.to_v))
        streams = [(q, k, v, attn.norm_q, attn.norm_k)]
        rope = None if tables is None else _complex_rope(tables)
        if cached:
            streams.append((q[:, :0], cached_txt_key, cached_txt_value, None, None))
            if rope is not None:
                rope = _latent_rope(rope, cached_txt_key.shape[1], text_first=False)
        elif text:
            k_text, v_text = (projection(encoder_hidden_states).unflatten(-1, (heads_kv, head_dim))
                              for projection in (attn.add_k_proj, attn.add_v_proj))
            streams.append((q[:, :0], k_text, v_text, None, attn.norm_added_k))
            if rope is not None:
                rope = _complex_rope(torch.cat([tables, image_rotary_emb[1]]))
        out = _streams_attention(streams, head_dim, rope, mask)
        out = out[0] if text else out
        return attn.to_out[1](attn.to_out[0](out.flatten(2))) if len(attn.to_out) > 1 else \
            attn.to_out[0](out.flatten(2))


class PydiffErnieImageAttnProcessor(_RankLocal):
    """Drop-in for ERNIE-Image's ``ErnieImageSingleStreamAttnProcessor`` (diffusers 0.39+): self-attention over its
    [image; text] tokens with the QK RMSNorms and the RoPE in the prologue. Its RoPE gives every channel an angle
    of its own, (B, N, 1, D) per batch row, and turns it with its partner in the other half (Megatron's
    ``rotate_half``): the kernel's half-split rotation on tables of those angles' cos and sin, in float32 (the stock
    processor rounds them to the model's dtype first). The text padding is the key mask."""

    def __init__(self):
        self.stock = _stock(ErnieImageAttnProcessor, "ERNIE-Image", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 freqs_cis: Optional[torch.Tensor] = None) -> torch.Tensor:
        head_dim = _head_dim(attn)
        mask = _key_mask(attention_mask, *hidden_states.shape[:2])
        if head_dim > MAX_HEAD_DIM or (mask is not None and not _kernel_reads(mask)) or \
                (freqs_cis is not None and freqs_cis.shape[-1] != head_dim):  # (a partial rotation: stock)
            return self.stock(attn, hidden_states, attention_mask, freqs_cis)
        q, k, v = (getattr(attn, name)(hidden_states).unflatten(-1, (attn.heads, head_dim))
                   for name in ("to_q", "to_k", "to_v"))
        rope = None if freqs_cis is None else (torch.cos(freqs_cis), torch.sin(freqs_cis))
        out = _streams_attention([(q, k, v, getattr(attn, "norm_q", None), getattr(attn, "norm_k", None))], head_dim,
                                 rope, mask, rope_interleaved=False)
        return attn.to_out[0](out.flatten(2))


class PydiffJoyImageAttnProcessor(_RankLocal):
    """Drop-in for JoyImage's ``JoyImageAttnProcessor`` (JoyImage-Edit; diffusers 0.39+): joint [image; text]
    attention of its two streams (fused projections per stream, read as views), each stream's QK RMSNorms and RoPE
    table (the image's and the text's, interleaved pairs, joined: the kernel's rows follow [image; text]; a stream
    without one turns by nothing) in the prologue."""

    def __init__(self):
        self.stock = _stock(JoyImageAttnProcessor, "JoyImage", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 image_rotary_emb=None, **kwargs):
        rope = self._rope(image_rotary_emb, hidden_states, encoder_hidden_states, attn.head_dim)
        if encoder_hidden_states is None or kwargs or attn.head_dim > MAX_HEAD_DIM or rope is False:
            return self.stock(attn, hidden_states, encoder_hidden_states, image_rotary_emb, **kwargs)
        return self._forward(attn, hidden_states, encoder_hidden_states, rope, None)

    @staticmethod
    def _rope(image_rotary_emb, hidden_states, encoder_hidden_states, head_dim: int):
        """The kernel's tables over [image; text] (None: no RoPE; False: a form the stock processor takes only)."""
        tables = (None, None) if image_rotary_emb is None else tuple(image_rotary_emb)
        counts = (hidden_states.shape[1], 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1])
        if any(t is not None and t[0].numel() != n * head_dim for t, n in zip(tables, counts)):
            return False
        image, text = (None if t is None else tuple(x.reshape(-1, head_dim) for x in t) for t in tables)
        if image is not None and text is not None:
            return tuple(torch.cat(pair) for pair in zip(image, text))
        if image is not None:
            return _latent_rope(image, counts[1], text_first=False)
        return None if text is None else _latent_rope(text, counts[0], text_first=True)

    def _forward(self, attn, hidden_states, encoder_hidden_states, rope, mask):
        streams = [(*(t.unflatten(-1, (attn.heads, attn.head_dim)) for t in projection(x).chunk(3, dim=-1)), norm_q,
                    norm_k) for x, projection, norm_q, norm_k in (
                       (hidden_states, attn.img_attn_qkv, attn.img_attn_q_norm, attn.img_attn_k_norm),
                       (encoder_hidden_states, attn.txt_attn_qkv, attn.txt_attn_q_norm, attn.txt_attn_k_norm))]
        image, text = _streams_attention(streams, attn.head_dim, rope, mask)
        return attn.img_attn_proj(image.flatten(2)), attn.txt_attn_proj(text.flatten(2))


class PydiffJoyImageEditPlusAttnProcessor(PydiffJoyImageAttnProcessor):
    """Drop-in for JoyImage-Edit-Plus's ``JoyImageEditPlusAttnProcessor`` (diffusers 0.42+): JoyImage's joint call,
    the RoPE on the image tokens only (a table per batch row, (B, N_image, D), read in place as (B, N, 1, D)), its
    mask of the joined tokens (B, 1, 1, N) the key mask."""

    def __init__(self):
        self.stock = _stock(JoyImageEditPlusAttnProcessor, "JoyImage-Edit-Plus", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 image_rotary_emb=None, attention_mask: Optional[torch.Tensor] = None):
        rope = None
        if image_rotary_emb is not None and encoder_hidden_states is not None:
            cos, sin = image_rotary_emb
            rope = False
            if cos.dim() == 3 and tuple(cos.shape[1:]) == (hidden_states.shape[1], attn.head_dim):
                rope = _latent_rope((cos.unsqueeze(2), sin.unsqueeze(2)), encoder_hidden_states.shape[1],
                                    text_first=False)
        if encoder_hidden_states is None or attn.head_dim > MAX_HEAD_DIM or rope is False or \
                (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, image_rotary_emb, attention_mask)
        return self._forward(attn, hidden_states, encoder_hidden_states, rope, attention_mask)


class PydiffQwenImage21AttnProcessor(_RankLocal):
    """Drop-in for Qwen-Image 2.1's ``QwenImage21AttnProcessor`` (diffusers 0.42+): in its KV cache's cached mode
    (every denoising step after the first: the target image's queries over the cached prefix of text and condition
    images, then its own tokens) the cached keys and values as a second stream of keys only (no concatenation), the
    target's QK RMSNorms and complex RoPE in the prologue, the padding mask the key mask (its halves swapped: the
    kernel joins [target; prefix]). The prefill (``segments``: the block-causal mask as one call per segment there)
    as one block-sparse call (``_prefill``): its mask per query and key from the segments and the padding, the
    128 x 128 blocks it masks whole never read."""

    @property
    def stock_type(self):
        return QwenImage21AttnProcessor

    def __init__(self):
        self.stock = _stock(self.stock_type, "Qwen-Image 2.1", "0.42")
        self.qwen = importlib.import_module(self.stock_type.__module__)  # (the stock processors' q, k, v helper)

    def __call__(self, attn, hidden_states: torch.Tensor, attention_mask=None, rotary_emb=None, layer_cache=None,
                 kv_cache_mode: Optional[str] = None, cache_write_slice=None, segments=None, key_valid=None):
        head_dim = attn.inner_dim // attn.heads
        if segments is not None and kv_cache_mode != "cached" and head_dim <= MAX_HEAD_DIM:
            return self._prefill(attn, hidden_states, rotary_emb, layer_cache, kv_cache_mode, cache_write_slice,
                                 lambda n: _prefill_masks(segments, n, key_valid, hidden_states.device))
        mask = attention_mask
        readable = mask is None or (isinstance(mask, torch.Tensor) and _kernel_reads(mask) and mask.dim() == 4 and
                                    mask.shape[-2] == 1)
        if kv_cache_mode != "cached" or layer_cache is None or segments is not None or not readable or \
                head_dim > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, attention_mask, rotary_emb, layer_cache, kv_cache_mode,
                              cache_write_slice, segments, key_valid)
        cached = layer_cache.get()
        q, k, v = (getattr(attn, name)(hidden_states).unflatten(-1, (-1, head_dim))
                   for name in ("to_q", "to_k", "to_v"))
        if mask is not None:  # ([prefix; target] keys, as the stock processor joins them)
            prefix = cached[0].shape[1]
            mask = torch.cat([mask[..., prefix:], mask[..., :prefix]], dim=-1)
        rope = None if rotary_emb is None else _complex_rope(rotary_emb)
        out = _beside_cached((q, k, v, attn.norm_q, attn.norm_k), cached, head_dim, rope, mask)
        return attn.to_out[1](attn.to_out[0](out.flatten(2)))

    def _prefill(self, attn, hidden_states, rotary_emb, layer_cache, kv_cache_mode, cache_write_slice, masks):
        """The block-causal prefill in one ``pydiff.attention`` call: q, k and v through the stock processors' own
        preparation (the QK norms, the RoPE, the prefix's keys and values into the cache), ``masks(tokens)`` the
        call's mask keywords."""
        q, k, v, n = self.qwen._qwenimage21_prepare_qkv(attn, hidden_states, rotary_emb, layer_cache, kv_cache_mode,
                                                        cache_write_slice)
        out = attention(q, k, v, layout="bnhd", **masks(k.shape[1]))
        return attn.to_out[1](attn.to_out[0](out[:, :n].flatten(2).type_as(q)))


class PydiffQwenImage21FlexAttnProcessor(PydiffQwenImage21AttnProcessor, QwenImage21FlexAttnProcessor or object):
    """Drop-in for Qwen-Image 2.1's ``QwenImage21FlexAttnProcessor`` (diffusers 0.42+; an instance of it, so the
    model builds it the flex BlockMask): the prefill's BlockMask (block-causal, its mask_mod inside the partial
    blocks) taken by the kernel as compiled flex attention reads it, eagerly, with no torch.compile and no padding
    to its blocks; the cached steps as ``PydiffQwenImage21AttnProcessor``'s."""

    @property
    def stock_type(self):
        return QwenImage21FlexAttnProcessor

    def __call__(self, attn, hidden_states: torch.Tensor, attention_mask=None, rotary_emb=None, layer_cache=None,
                 kv_cache_mode: Optional[str] = None, cache_write_slice=None, segments=None, key_valid=None):
        if type(attention_mask).__name__ == "BlockMask" and attn.inner_dim // attn.heads <= MAX_HEAD_DIM:
            return self._prefill(attn, hidden_states, rotary_emb, layer_cache, kv_cache_mode, cache_write_slice,
                                 lambda n: {"block_mask": attention_mask})
        return super().__call__(attn, hidden_states, attention_mask, rotary_emb, layer_cache, kv_cache_mode,
                                cache_write_slice, segments, key_valid)


def _made_once(slot: list, key, tensor: Optional[torch.Tensor], make):
    """``make()``, kept in ``slot`` ([key, a weak reference to ``tensor``, what was made]) for the next call with the
    same key and the same ``tensor`` (the same object, unchanged in place since; None: none), the last one only:
    what every layer of a model's forward asks for alike is made for the first."""
    key = (key, None if tensor is None else tensor._version)
    if slot[0] != key or (slot[1] or (lambda: None))() is not tensor:
        slot[:] = key, None if tensor is None else weakref.ref(tensor), make()
    return slot[2]


#: ``_made_once``'s slot for the last prefill's masks (Qwen-Image 2.1's)
_LAST_PREFILL = [None, None, None]


def _prefill_masks(segments, tokens: int, key_valid: Optional[torch.Tensor], device: torch.device) -> dict:
    """``_segment_masks``, made once for the layers of one prefill: the same segments, length, device and
    key_valid tensor give the masks made for the first layer."""
    key = (tuple(tuple(int(x) for x in segment) for segment in segments), tokens, device)
    return _made_once(_LAST_PREFILL, key, key_valid, lambda: _segment_masks(segments, tokens, key_valid, device))


def _segment_masks(segments, tokens: int, key_valid: Optional[torch.Tensor], device: torch.device) -> dict:
    """Qwen-Image 2.1's block-causal prefill mask as ``pydiff.attention`` keywords: ``attn_mask`` per query and key
    (the sequence causal, each image of the prefix (``segments``: (start, end, is text)) and the target after it
    bidirectional within itself, the padded keys of ``key_valid`` (B, N) out) and the ``block_mask`` of its 128 x
    128 blocks that keep any element."""
    image = torch.full((tokens,), -1, dtype=torch.long)
    for number, (start, end, is_text) in enumerate(segments):
        if not is_text:
            image[start:end] = number
    image[segments[-1][1] if segments else 0:] = len(segments)  # (the target image)
    image, position = image.to(device), torch.arange(tokens, device=device)
    keep = (position[:, None] >= position[None, :]) | ((image[:, None] == image[None, :]) & (image[:, None] >= 0))
    keep = keep[None, None] if key_valid is None else keep[None, None] & key_valid.bool()[:, None, None, :tokens]
    return {"attn_mask": keep, **mask_block_mask(keep, tokens, tokens)}


class PydiffMotifVideoAttnProcessor(_RankLocal):
    """Drop-in for Motif-Video's ``MotifVideoAttnProcessor2_0`` (diffusers 0.39+): [video; text] attention, a joint
    call of the two streams in the dual-stream blocks (the text through its added projections) and one call over
    the joined tokens in the single-stream ones, the QK RMSNorms and the RoPE (on the video tokens only: identity
    rows for the text) in the prologue, the text padding mask (B, 1, 1, N) the key mask."""

    def __init__(self):
        self.stock = _stock(MotifVideoAttnProcessor2_0, "Motif-Video", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        head_dim = _head_dim(attn)
        if head_dim > MAX_HEAD_DIM or (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        n_video = hidden_states.shape[1]
        n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        rope = None if image_rotary_emb is None else _latent_rope(tuple(image_rotary_emb), n_text, text_first=False)
        if n_text and attn.add_q_proj is not None:
            streams = [_image_stream(attn, hidden_states, head_dim), _text_stream(attn, encoder_hidden_states,
                                                                                 head_dim)]
            video, text = _streams_attention(streams, head_dim, rope, attention_mask)
        else:
            joined = torch.cat([hidden_states, encoder_hidden_states], dim=1) if n_text else hidden_states
            out = _streams_attention([_image_stream(attn, joined, head_dim)], head_dim, rope, attention_mask)
            video, text = out.split([n_video, n_text], dim=1) if n_text else (out, None)
        video = video.flatten(2)
        if attn.to_out is not None:
            video = attn.to_out[1](attn.to_out[0](video))
        if text is None:
            return video
        text = text.flatten(2)
        return video, (attn.to_add_out(text) if attn.to_add_out is not None else text)


class PydiffMotifVideoCrossAttnProcessor(_RankLocal):
    """Drop-in for Motif-Video's ``MotifVideoCrossAttnProcessor2_0`` (its optional text cross-attention; 0.39+): the
    video queries over the text (the condition image's tokens left out, as there), the QK RMSNorms and the RoPE on
    the queries alone in the prologue (the keys' tables turn nothing), the text's part of the padding mask as the
    key mask."""

    def __init__(self):
        self.stock = _stock(MotifVideoCrossAttnProcessor2_0, "Motif-Video", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None,
                 image_embed_seq_len: int = 0) -> torch.Tensor:
        head_dim = _head_dim(attn)
        if head_dim > MAX_HEAD_DIM or (attention_mask is not None and not _kernel_reads(attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                              image_embed_seq_len)
        text = encoder_hidden_states[:, image_embed_seq_len:]
        mask = None if attention_mask is None else attention_mask[..., attention_mask.shape[-1] - text.shape[1]:]
        rope = key_rope = None
        if image_rotary_emb is not None:
            rope, key_rope = tuple(image_rotary_emb), _unturned(text.shape[1], head_dim, text.device)
        out = _streams_attention([_cross_stream(attn, hidden_states, text, head_dim)], head_dim, rope, mask,
                                 key_rope=key_rope)
        return attn.to_out[1](attn.to_out[0](out.flatten(2)))


class PydiffFlux3AttnProcessor(_RankLocal):
    """Drop-in for FLUX.3's ``Flux3AttnProcessor`` (diffusers 0.42+): self-attention over one mode's tokens or the
    joined [text; image] tokens, its QK RMSNorms (float32 in the stock processor too) and interleaved RoPE in the
    kernel's prologue."""

    def __init__(self):
        self.stock = _stock(Flux3AttnProcessor, "FLUX.3", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        if (attention_mask is not None and not _kernel_reads(attention_mask)) or attn.head_dim > MAX_HEAD_DIM:
            return self.stock(attn, hidden_states, attention_mask, image_rotary_emb)
        rope = None if image_rotary_emb is None else tuple(image_rotary_emb)
        out = _streams_attention([_image_stream(attn, hidden_states, attn.head_dim)], attn.head_dim, rope,
                                 attention_mask)
        return self._output(attn, out.flatten(2), hidden_states)

    def _output(self, attn, out: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        return attn.to_out[1](attn.to_out[0](out))


class PydiffKrea2AttnProcessor(PydiffFlux3AttnProcessor):
    """Drop-in for Krea 2's ``Krea2AttnProcessor`` (diffusers 0.39+): FLUX.3's call with grouped-query heads read as
    they are (the stock processor repeats k and v for every query head), its zero-centred QK RMSNorms (a scale of
    1 + weight) and the text padding as the key mask, then its sigmoid output gate."""

    def __init__(self):
        self.stock = _stock(Krea2AttnProcessor, "Krea 2", "0.39")

    def _output(self, attn, out, hidden_states):
        return attn.to_out[0](out * torch.sigmoid(attn.to_gate(hidden_states)))


class PydiffIdeogram4AttnProcessor(_RankLocal):
    """Drop-in for Ideogram 4's ``Ideogram4AttnProcessor`` (diffusers 0.39+): its QK RMSNorms and its multi-axis
    RoPE (half-split tables per batch row, (B, N, D), read in place as (B, N, 1, D)) in the prologue, and its
    block-diagonal mask of packed samples (B, 1, N, N) read per query."""

    def __init__(self):
        self.stock = _stock(Ideogram4AttnProcessor, "Ideogram 4", "0.39")

    def __call__(self, attn, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor],
                 image_rotary_emb: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if (attention_mask is not None and not _kernel_reads(attention_mask)) or attn.head_dim > MAX_HEAD_DIM or \
                any(t.dim() != 3 for t in image_rotary_emb):
            return self.stock(attn, hidden_states, attention_mask, image_rotary_emb)
        rope = tuple(t.unsqueeze(2) for t in image_rotary_emb)
        out = _streams_attention([_cross_stream(attn, hidden_states, None, attn.head_dim)], attn.head_dim, rope,
                                 attention_mask, rope_interleaved=False)
        return attn.to_out[0](out.flatten(2))


class PydiffBriaFibo2AttnProcessor(PydiffZImageAttnProcessor):
    """Drop-in for ``BriaFibo2AttnProcessor`` (diffusers 0.42+): Z-Image's call (self-attention with its QK
    RMSNorms and complex RoPE, one table per batch row, read in place; a (B, N_k) mask as the key mask), and
    cross-attention to the text."""

    cross_attention = True

    def __init__(self):
        self.stock = _stock(BriaFibo2AttnProcessor, "Bria FIBO 2", "0.42")


def _cosmos_attention(attn, hidden_states: torch.Tensor, context: Optional[torch.Tensor],
                      mask: Optional[torch.Tensor], rope, **stream) -> torch.Tensor:
    """Cosmos's attention of ``hidden_states`` to ``context`` (itself where None): the QK RMSNorms and the
    half-split RoPE in the prologue, (B, N, H*D); ``stream``: ``_cross_stream``'s projection and norm names."""
    head_dim = attn.inner_dim // attn.heads
    out = _streams_attention([_cross_stream(attn, hidden_states, context, head_dim, **stream)], head_dim, rope, mask,
                             rope_interleaved=False)
    return out.flatten(2)


def _cosmos_takes(attn, masks, image_rotary_emb) -> bool:
    """Whether the kernel takes a Cosmos processor's call: its masks' dtypes, (N, D) RoPE tables, the head dim."""
    return attn.inner_dim // attn.heads <= MAX_HEAD_DIM and \
        all(mask is None or _kernel_reads(mask) for mask in masks) and \
        (image_rotary_emb is None or all(t.dim() == 2 for t in image_rotary_emb))


class PydiffCosmosAttnProcessor(_RankLocal):
    """Drop-in for ``CosmosAttnProcessor2_0`` (Cosmos Predict 2): self-attention with the QK RMSNorms and the
    half-split RoPE in the prologue, cross-attention to the text with its padding as the key mask; the stock
    processor's transposes and key/value repeats (by the head dim's ratio: none) are not needed."""

    def __init__(self):
        self.stock = CosmosAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None) -> torch.Tensor:
        if not _cosmos_takes(attn, [attention_mask], image_rotary_emb):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        out = _cosmos_attention(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        return attn.to_out[1](attn.to_out[0](out))


class PydiffCosmos25AttnProcessor(_RankLocal):
    """Drop-in for ``CosmosAttnProcessor2_5`` (Cosmos Predict 2.5's cross-attention): the text's attention and,
    where there is an image context, the image's (queries of their own, ``q_img``) summed, each one kernel call with
    its QK RMSNorms in the prologue and its padding as the key mask."""

    def __init__(self):
        self.stock = _stock(CosmosAttnProcessor2_5, "Cosmos 2.5", "0.37")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states, attention_mask,
                 image_rotary_emb=None) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, tuple) or not isinstance(attention_mask, (tuple, type(None))):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        text, image = encoder_hidden_states if encoder_hidden_states else (None, None)
        text_mask, image_mask = attention_mask if attention_mask else (None, None)
        if not _cosmos_takes(attn, [text_mask, image_mask], image_rotary_emb):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        out = _cosmos_attention(attn, hidden_states, text, text_mask, image_rotary_emb)
        if image is not None:
            out = out + _cosmos_attention(attn, hidden_states, image, image_mask, None,
                                          names=("q_img", "k_img", "v_img"), norms=("q_img_norm", "k_img_norm"))
        return attn.to_out[1](attn.to_out[0](out))


class PydiffKandinsky5AttnProcessor(_RankLocal):
    """Drop-in for Kandinsky 5's ``Kandinsky5AttnProcessor`` (diffusers 0.36+): self-attention with its QK RMSNorms
    (in float32 with float32's default eps, as the stock processor runs them) and its rotation-matrix RoPE (the
    matrices' entries read in place as pair tables) in the prologue, or cross-attention to the text. The stock
    processor rounds the rotated q and k to bfloat16 whatever the model's dtype; ours rounds them once, to the
    model's dtype (in a bfloat16 model the same up to the order of roundings; in float32 ours keeps float32). Its
    NABLA sparse attention (``sparse_params``) is block-sparse in the kernel (``_nabla_attention``)."""

    def __init__(self):
        self.stock = _stock(Kandinsky5AttnProcessor, "Kandinsky 5", "0.36")
        self.nabla = importlib.import_module(Kandinsky5AttnProcessor.__module__)  # (its NABLA mask builder)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 rotary_emb: Optional[torch.Tensor] = None, sparse_params=None) -> torch.Tensor:
        head_dim = _head_dim(attn)
        rope = None if rotary_emb is None else _rotation_pairs(rotary_emb, head_dim)
        if head_dim > MAX_HEAD_DIM or (rotary_emb is not None and rope is None) or \
                (sparse_params is not None and (encoder_hidden_states is not None or rope is None)):
            return self.stock(attn, hidden_states, encoder_hidden_states, rotary_emb, sparse_params)
        if sparse_params is not None:
            return _nabla_attention(attn, hidden_states, rope, head_dim, lambda q, k: self.nabla.nablaT_v2(
                q, k, sparse_params["sta_mask"], thr=sparse_params["P"]))
        stream = _cross_stream(attn, hidden_states, encoder_hidden_states, head_dim,
                               ("to_query", "to_key", "to_value"), ("query_norm", "key_norm"))
        out = _streams_attention([stream], head_dim, rope, None, norm_dtype=torch.float32)
        return attn.out_layer(out.flatten(2))


class PydiffKandinsky6AttnProcessor(_RankLocal):
    """Drop-in for Kandinsky 6's ``Kandinsky6AttnProcessor`` (diffusers 0.42+): self- and cross-attention (text,
    and between video and audio) with its QK RMSNorms and rotation-matrix RoPE in the prologue, the queries and keys
    each turned by their own tables (``rotary_emb``, ``rotary_emb_kv``: the kernel's ``rope`` and ``key_rope``; the
    keys by none where they have none), the text padding (B, N_text) the key mask."""

    def __init__(self):
        self.stock = _stock(Kandinsky6AttnProcessor, "Kandinsky 6", "0.42")

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 rotary_emb: Optional[torch.Tensor] = None, rotary_emb_kv: Optional[torch.Tensor] = None,
                 attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        head_dim = _head_dim(attn)
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        rope = None if rotary_emb is None else _rotation_pairs(rotary_emb, head_dim)
        key_rope = None if rotary_emb_kv is None else _rotation_pairs(rotary_emb_kv, head_dim)
        mask = _key_mask(attn_mask, *source.shape[:2])
        if head_dim > MAX_HEAD_DIM or (rotary_emb is not None and rope is None) or \
                (rotary_emb_kv is not None and key_rope is None) or (mask is not None and not _kernel_reads(mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, rotary_emb, rotary_emb_kv, attn_mask)
        if rope is not None and key_rope is None:
            key_rope = _unturned(source.shape[1], head_dim, source.device)
        elif rotary_emb_kv is rotary_emb:  # (one table for both: the prologue's rope)
            key_rope = None
        stream = _cross_stream(attn, hidden_states, encoder_hidden_states, head_dim,
                               ("to_query", "to_key", "to_value"), ("query_norm", "key_norm"))
        out = _streams_attention([stream], head_dim, rope, mask, key_rope=key_rope)
        return attn.out_layer(out.flatten(2))


class PydiffKandinsky6SRAttnProcessor(_RankLocal):
    """Drop-in for Kandinsky 6 SR's ``Kandinsky6SRAttnProcessor`` (diffusers 0.42+): its NABLA block-sparse
    self-attention in the kernel (``_nabla_attention``)."""

    def __init__(self):
        self.stock = _stock(Kandinsky6SRAttnProcessor, "Kandinsky 6 SR", "0.42")
        self.nabla = importlib.import_module(Kandinsky6SRAttnProcessor.__module__)  # (its NABLA mask builder)

    def __call__(self, attn, hidden_states: torch.Tensor, rotary_emb: torch.Tensor, sparse_params) -> torch.Tensor:
        head_dim = _head_dim(attn)
        rope = _rotation_pairs(rotary_emb, head_dim)
        if head_dim > MAX_HEAD_DIM or rope is None:
            return self.stock(attn, hidden_states, rotary_emb, sparse_params)
        return _nabla_attention(attn, hidden_states, rope, head_dim, lambda q, k: self.nabla.nabla_block_mask(
            q.transpose(1, 2), k.transpose(1, 2), sparse_params["sta_mask"], thr=sparse_params["threshold"]))


def _nabla_attention(attn, hidden_states: torch.Tensor, rope, head_dim: int, block_mask) -> torch.Tensor:
    """NABLA's block-sparse self-attention (Kandinsky 5's and 6 SR's), its key blocks left out never read: q and k
    through the module's float32 QK RMSNorms and the rotation-matrix RoPE (``rope``: ``_rotation_pairs``' tables) in
    float32, rounded once to the model's dtype; the flex BlockMask the stock processor builds from them
    (``block_mask(q, k)``: its module's mask builder) as the kernel's ``block_mask``; the output projection. The
    stock processors run flex attention, which skips the left-out blocks under torch.compile only: eagerly it
    attends to every key, materialising the scores. Ours skips them eagerly, as the compiled stock model does."""
    q, k, v, q_norm, k_norm = _cross_stream(attn, hidden_states, None, head_dim, ("to_query", "to_key", "to_value"),
                                            ("query_norm", "key_norm"))

    def turned(x, norm):
        return rope_reference(norm(x.float()).transpose(1, 2), *rope, True).transpose(1, 2).to(x.dtype)

    q, k = turned(q, q_norm), turned(k, k_norm)
    return attn.out_layer(attention(q, k, v, layout="bnhd", block_mask=block_mask(q, k)).flatten(2))


def _no_qk_norms(attn) -> bool:
    """diffusers' fused joint processor skips the QK norms (SD3.5's), which ours would apply: replaced only without."""
    return all(getattr(attn, name, None) is None for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"))


def _copies():
    """The processors diffusers copies into other models' files (ChronoEdit's, SkyReels-V2's and Wan-Animate's of
    Wan's; Bria's, Bria FIBO's, LongCat-Image's and Ovis-Image's of Flux's; HunyuanImage 2.1's of HunyuanVideo's;
    the SANA-WM refiner's two of LTX-2's; Sana-Video's of Sana's; AnyFlow FAR's of AnyFlow's; DreamLite's of
    AttnProcessor2_0, with grouped-query heads; the Z-Image ControlNet's of Z-Image's), each with the pydiff
    processor of its original. Their sources
    differ from the originals' in names, comments, tensor-parallel head splits, context-parallel arguments and the
    attention call (SDPA or diffusers' dispatch) only: the same math on modules of the same attributes. Those this
    diffusers lacks are left out."""
    for module, name, ours in (("transformer_chronoedit", "WanAttnProcessor", PydiffWanAttnProcessor),
                               ("transformer_skyreels_v2", "SkyReelsV2AttnProcessor", PydiffWanAttnProcessor),
                               ("transformer_wan_animate", "WanAttnProcessor", PydiffWanAttnProcessor),
                               ("transformer_sana_wm_refiner", "SanaWMLTX2AudioVideoAttnProcessor",
                                PydiffLTX2AttnProcessor),
                               ("transformer_sana_wm_refiner", "SanaWMLTX2PerturbedAttnProcessor",
                                PydiffLTX2PerturbedAttnProcessor),
                               ("transformer_bria", "BriaAttnProcessor", PydiffFluxAttnProcessor),
                               ("transformer_longcat_image", "LongCatImageAttnProcessor", PydiffFluxAttnProcessor),
                               ("transformer_ovis_image", "OvisImageAttnProcessor", PydiffFluxAttnProcessor),
                               ("transformer_bria_fibo", "BriaFiboAttnProcessor", PydiffFluxAttnProcessor),
                               ("transformer_hunyuanimage", "HunyuanImageAttnProcessor",
                                PydiffHunyuanVideoAttnProcessor),
                               ("transformer_sana_video", "SanaAttnProcessor2_0", PydiffSanaAttnProcessor),
                               ("transformer_anyflow_far", "AnyFlowAttnProcessor", PydiffAnyFlowAttnProcessor),
                               ("unets.unet_dreamlite", "DreamLiteAttnProcessor2_0", PydiffAttnProcessor),
                               ("transformer_anyflow_far", "AnyFlowCrossAttnProcessor",
                                PydiffAnyFlowCrossAttnProcessor),
                               ("controlnets.controlnet_z_image", "ZSingleStreamAttnProcessor",
                                PydiffZImageAttnProcessor)):
        stock = _stock_class(module, name)
        if stock is not None:
            yield stock, ours


#: the PAG processors a PAG pipeline sets on its layers for each call, and ours
_PAG = {PAGCFGIdentitySelfAttnProcessor2_0: PydiffPAGCFGIdentitySelfAttnProcessor,
        PAGIdentitySelfAttnProcessor2_0: PydiffPAGIdentitySelfAttnProcessor,
        PAGCFGHunyuanAttnProcessor2_0: PydiffPAGCFGHunyuanAttnProcessor,
        PAGHunyuanAttnProcessor2_0: PydiffPAGHunyuanAttnProcessor,
        PAGCFGJointAttnProcessor2_0: PydiffPAGCFGJointAttnProcessor,
        PAGJointAttnProcessor2_0: PydiffPAGJointAttnProcessor}

#: (stock processor, ours, which modules: all where None); those this diffusers lacks, or where ours would differ
#: from it (Qwen-Image before 0.39), left out
_REPLACEMENTS = tuple(entry for entry in (
    (AttnProcessor2_0, PydiffAttnProcessor, None),
    (AttnAddedKVProcessor2_0, PydiffAttnAddedKVProcessor, None),
    (LuminaAttnProcessor2_0, PydiffLuminaAttnProcessor, None),
    (FusedAttnProcessor2_0, PydiffAttnProcessor, None),
    (IPAdapterAttnProcessor2_0, PydiffIPAdapterAttnProcessor, None),
    (CustomDiffusionAttnProcessor2_0, PydiffCustomDiffusionAttnProcessor, None),
    (HunyuanAttnProcessor2_0, PydiffHunyuanDiTAttnProcessor, None),
    (AllegroAttnProcessor2_0, PydiffAllegroAttnProcessor, None),
    (FusedHunyuanAttnProcessor2_0, PydiffHunyuanDiTAttnProcessor, None),
    (StableAudioAttnProcessor2_0, PydiffStableAudioAttnProcessor, None),
    *((stock, ours, None) for stock, ours in _PAG.items()),
    (SD3IPAdapterJointAttnProcessor2_0, PydiffSD3IPAdapterAttnProcessor, None),
    (FluxIPAdapterAttnProcessor, PydiffFluxIPAdapterAttnProcessor, None),
    (SanaAttnProcessor2_0, PydiffSanaAttnProcessor, None),
    (JointAttnProcessor2_0, PydiffJointAttnProcessor, None),
    (FusedJointAttnProcessor2_0, PydiffJointAttnProcessor, _no_qk_norms),
    (FluxAttnProcessor, PydiffFluxAttnProcessor, None),
    (AuraFlowAttnProcessor2_0, PydiffAuraFlowAttnProcessor, None),
    (FusedAuraFlowAttnProcessor2_0, PydiffAuraFlowAttnProcessor, None),
    (Flux2AttnProcessor, PydiffFlux2AttnProcessor, None),
    (Flux2ParallelSelfAttnProcessor, PydiffFlux2ParallelSelfAttnProcessor, None),
    (Flux2KVAttnProcessor, PydiffFlux2KVAttnProcessor, None),
    (Flux2KVParallelSelfAttnProcessor, PydiffFlux2KVParallelSelfAttnProcessor, None),
    (QwenDoubleStreamAttnProcessor2_0 if _QWEN_MASKS_TEXT else None, PydiffQwenImageAttnProcessor, None),
    (HunyuanVideoAttnProcessor2_0, PydiffHunyuanVideoAttnProcessor, None),
    (MochiAttnProcessor2_0, PydiffMochiAttnProcessor, None),
    (HiDreamAttnProcessor, PydiffHiDreamAttnProcessor, None),
    (OmniGenAttnProcessor2_0, PydiffOmniGenAttnProcessor, None),
    (HeliosAttnProcessor, PydiffHeliosAttnProcessor, None),
    (HunyuanVideo15AttnProcessor2_0, PydiffHunyuanVideo15AttnProcessor, None),
    (WanAttnProcessor, PydiffWanAttnProcessor, None),
    (WanAnimateFaceBlockAttnProcessor, PydiffWanAnimateFaceBlockAttnProcessor, None),
    (WanAnimate2CrossAttnProcessor, PydiffWanAnimate2CrossAttnProcessor, None),
    (WanAnimate2AttnProcessor, PydiffWanAnimate2AttnProcessor, None),
    (MiniMaxH3AttnProcessor, PydiffMiniMaxH3AttnProcessor, None),
    (AnyFlowAttnProcessor, PydiffAnyFlowAttnProcessor, None),
    (AnyFlowCrossAttnProcessor, PydiffAnyFlowCrossAttnProcessor, None),
    (AnyFlowCausalAttnProcessor, PydiffAnyFlowCausalAttnProcessor, None),
    (AudioDiTSelfAttnProcessor, PydiffAudioDiTSelfAttnProcessor, None),
    (AudioDiTCrossAttnProcessor, PydiffAudioDiTCrossAttnProcessor, None),
    (AceStepAttnProcessor2_0, PydiffAceStepAttnProcessor, None),
    (Cosmos3AttnProcessor, PydiffCosmos3AttnProcessor, None),
    (MiniMaxMusic3AttnProcessor, PydiffMiniMaxMusic3AttnProcessor, None),
    (MiniMaxMusic3DepthAttnProcessor, PydiffMiniMaxMusic3DepthAttnProcessor, None),
    (StableAudio3SelfAttnProcessor, PydiffStableAudio3SelfAttnProcessor, None),
    (StableAudio3CrossAttnProcessor, PydiffStableAudio3CrossAttnProcessor, None),
    (CogVideoXAttnProcessor2_0, PydiffCogVideoXAttnProcessor, None),
    (LTXVideoAttnProcessor, PydiffLTXVideoAttnProcessor, None),
    (LTX2AudioVideoAttnProcessor, PydiffLTX2AttnProcessor, None),
    (LTX2PerturbedAttnProcessor, PydiffLTX2PerturbedAttnProcessor, None),
    (FusedCogVideoXAttnProcessor2_0, PydiffCogVideoXAttnProcessor, None),
    (CogView4AttnProcessor, PydiffCogView4AttnProcessor, None),
    (EasyAnimateAttnProcessor2_0, PydiffEasyAnimateAttnProcessor, None),
    (GlmImageAttnProcessor, PydiffGlmImageAttnProcessor, None),
    (PRXAttnProcessor2_0, PydiffPRXAttnProcessor, None),
    (NucleusMoEAttnProcessor2_0, PydiffNucleusMoEAttnProcessor, None),
    (ErnieImageAttnProcessor, PydiffErnieImageAttnProcessor, None),
    (JoyImageAttnProcessor, PydiffJoyImageAttnProcessor, None),
    (JoyImageEditPlusAttnProcessor, PydiffJoyImageEditPlusAttnProcessor, None),
    (QwenImage21AttnProcessor, PydiffQwenImage21AttnProcessor, None),
    (MotifVideoAttnProcessor2_0, PydiffMotifVideoAttnProcessor, None),
    (MotifVideoCrossAttnProcessor2_0, PydiffMotifVideoCrossAttnProcessor, None),
    (SanaWMCrossAttnProcessor, PydiffSanaWMCrossAttnProcessor, None),
    (ZSingleStreamAttnProcessor, PydiffZImageAttnProcessor, None),
    (Lumina2AttnProcessor2_0, PydiffLumina2AttnProcessor, None),
    (Flux3AttnProcessor, PydiffFlux3AttnProcessor, None),
    (Krea2AttnProcessor, PydiffKrea2AttnProcessor, None),
    (Ideogram4AttnProcessor, PydiffIdeogram4AttnProcessor, None),
    (BriaFibo2AttnProcessor, PydiffBriaFibo2AttnProcessor, None),
    (CosmosAttnProcessor2_0, PydiffCosmosAttnProcessor, None),
    (CosmosAttnProcessor2_5, PydiffCosmos25AttnProcessor, None),
    (Kandinsky5AttnProcessor, PydiffKandinsky5AttnProcessor, None),
    (Kandinsky6AttnProcessor, PydiffKandinsky6AttnProcessor, None),
    (Kandinsky6SRAttnProcessor, PydiffKandinsky6SRAttnProcessor, None),
    (QwenImage21FlexAttnProcessor, PydiffQwenImage21FlexAttnProcessor, None),
    (LTX2VideoVaeNeighborhoodAttnProcessor, PydiffLTX2VaeNeighborhoodAttnProcessor, None),
    (LTX2VideoVaeNeighborhoodNattenProcessor, PydiffLTX2VaeNeighborhoodAttnProcessor, None),
    *((stock, functools.partial(ours, stock), None) for stock, ours in _copies()),
) if entry[0] is not None)


def _roots(model_or_pipe) -> List[torch.nn.Module]:
    if isinstance(model_or_pipe, torch.nn.Module):
        return [model_or_pipe]
    components = getattr(model_or_pipe, "components", None)
    if not isinstance(components, dict):
        raise TypeError(f"set_attention_backend expects a torch.nn.Module or a diffusers pipeline (with "
                        f".components), got {type(model_or_pipe).__name__}")
    return [c for c in components.values() if isinstance(c, torch.nn.Module)]


def set_attention_backend(model_or_pipe) -> int:
    """Swap every stock processor pydiff has a counterpart for, in a diffusers model or pipeline, for ours
    (``_REPLACEMENTS``; the module's docstring lists them; FLUX.2's, Z-Image's, HunyuanVideo 1.5's, Kandinsky 5's,
    PRX's and Wan-Animate's face blocks' from diffusers 0.36, LTX-2's, Cosmos 2.5's and GLM-Image's from 0.37,
    Qwen-Image's, Krea 2's, Ideogram 4's, FLUX.2 Klein KV's, Nucleus-Image's, ERNIE-Image's, JoyImage-Edit's,
    Motif-Video's and Helios's from 0.39, FLUX.3's, Bria FIBO 2's, Qwen-Image 2.1's (both), SANA-WM's, Kandinsky 6's
    (and 6 SR's), JoyImage-Edit-Plus's and Wan-Animate 2's from 0.42). Other processors (added-KV, ...) stay, and
    so do modules whose head dim is over the kernel's 256 (a Stable Diffusion VAE's 512-channel mid-block
    attention), SD3.5's fused joint processor (which skips the QK norms) and processors under diffusers' context
    parallelism.
    ``fuse_qkv_projections()`` sets diffusers' fused processors over ours and ``load_ip_adapter`` its IP-Adapter
    processors: call this after them. A PAG pipeline's perturbed-attention processors (``_pag_attn_processors``,
    which it sets on its layers for each call) become ours too (not counted: they are on no module yet).
    The backend the processors use follows ``pydiff.use_backend`` / ``PYDIFF_BACKEND`` at call time.
    Returns the number of attention modules switched.
    """
    switched = 0
    pag = getattr(model_or_pipe, "_pag_attn_processors", None)  # (a PAG pipeline's, set on its layers per call)
    if isinstance(pag, tuple):
        model_or_pipe._pag_attn_processors = tuple(_PAG[type(p)]() if type(p) in _PAG else p for p in pag)
    for root in _roots(model_or_pipe):
        for module in root.modules():
            processor = getattr(module, "processor", None)
            if processor is None or getattr(processor, "_parallel_config", None) is not None:  # (see _RankLocal)
                continue
            for stock, ours, takes in _REPLACEMENTS:
                if type(processor) is stock and _head_dim(module) <= MAX_HEAD_DIM and (takes is None or takes(module)):
                    # (a stock processor that is a module holds weights, IP-Adapter's or Custom Diffusion's: ours is
                    # built from it and keeps them; the others hold nothing ours needs)
                    new = ours(processor) if isinstance(processor, torch.nn.Module) else ours()
                    if hasattr(module, "set_processor"):
                        module.set_processor(new)
                    else:  # (Mochi's attention module holds its processor as a plain attribute)
                        module.processor = new
                    switched += 1
                    break
    return switched


__all__ = ["PydiffAceStepAttnProcessor", "PydiffAllegroAttnProcessor", "PydiffAnyFlowAttnProcessor",
           "PydiffAnyFlowCausalAttnProcessor", "PydiffAnyFlowCrossAttnProcessor", "PydiffAttnAddedKVProcessor",
           "PydiffAttnProcessor", "PydiffAudioDiTCrossAttnProcessor", "PydiffAudioDiTSelfAttnProcessor",
           "PydiffAuraFlowAttnProcessor", "PydiffBriaFibo2AttnProcessor", "PydiffCogVideoXAttnProcessor",
           "PydiffCogView4AttnProcessor", "PydiffCosmos25AttnProcessor", "PydiffCosmos3AttnProcessor",
           "PydiffCosmosAttnProcessor", "PydiffCustomDiffusionAttnProcessor", "PydiffEasyAnimateAttnProcessor",
           "PydiffErnieImageAttnProcessor", "PydiffFlux2AttnProcessor", "PydiffFlux2KVAttnProcessor",
           "PydiffFlux2KVParallelSelfAttnProcessor", "PydiffFlux2ParallelSelfAttnProcessor", "PydiffFlux3AttnProcessor",
           "PydiffFluxAttnProcessor", "PydiffFluxIPAdapterAttnProcessor", "PydiffGlmImageAttnProcessor",
           "PydiffHeliosAttnProcessor", "PydiffHiDreamAttnProcessor", "PydiffHunyuanDiTAttnProcessor",
           "PydiffHunyuanVideo15AttnProcessor", "PydiffHunyuanVideoAttnProcessor", "PydiffIPAdapterAttnProcessor",
           "PydiffIdeogram4AttnProcessor", "PydiffJointAttnProcessor", "PydiffJoyImageAttnProcessor",
           "PydiffJoyImageEditPlusAttnProcessor", "PydiffKandinsky5AttnProcessor", "PydiffKandinsky6AttnProcessor",
           "PydiffKandinsky6SRAttnProcessor", "PydiffKrea2AttnProcessor", "PydiffLTX2AttnProcessor",
           "PydiffLTX2VaeNeighborhoodAttnProcessor",
           "PydiffLTX2PerturbedAttnProcessor", "PydiffLTXVideoAttnProcessor", "PydiffLumina2AttnProcessor",
           "PydiffLuminaAttnProcessor", "PydiffMiniMaxH3AttnProcessor", "PydiffMiniMaxMusic3AttnProcessor",
           "PydiffMiniMaxMusic3DepthAttnProcessor", "PydiffMochiAttnProcessor", "PydiffMotifVideoAttnProcessor",
           "PydiffMotifVideoCrossAttnProcessor", "PydiffNucleusMoEAttnProcessor", "PydiffOmniGenAttnProcessor",
           "PydiffPAGCFGHunyuanAttnProcessor", "PydiffPAGCFGIdentitySelfAttnProcessor",
           "PydiffPAGCFGJointAttnProcessor", "PydiffPAGHunyuanAttnProcessor", "PydiffPAGIdentitySelfAttnProcessor",
           "PydiffPAGJointAttnProcessor", "PydiffPRXAttnProcessor", "PydiffQwenImage21AttnProcessor",
           "PydiffQwenImage21FlexAttnProcessor", "PydiffQwenImageAttnProcessor", "PydiffSD3IPAdapterAttnProcessor",
           "PydiffSanaAttnProcessor", "PydiffSanaWMCrossAttnProcessor", "PydiffStableAudio3CrossAttnProcessor",
           "PydiffStableAudio3SelfAttnProcessor", "PydiffStableAudioAttnProcessor", "PydiffWanAnimate2AttnProcessor",
           "PydiffWanAnimate2CrossAttnProcessor", "PydiffWanAnimateFaceBlockAttnProcessor", "PydiffWanAttnProcessor",
           "PydiffZImageAttnProcessor", "set_attention_backend"]
