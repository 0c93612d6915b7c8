"""pydiff inside diffusers pipelines: a fused drop-in scheduler and fused attention processors.

    from pydiff.integrations.diffusers import FusedScheduler
    pipe.scheduler = FusedScheduler.from_scheduler(pipe.scheduler)
    set_attention_backend(pipe)                              # fused attention processors
    set_negative_away_attention(pipe, negative_embeds, 0.5)  # negative prompts for one-step models (SNOOPI's NASA)
"""

from importlib import import_module

_EXPORTS = {
    "FusedScheduler": "scheduler",
    "PydiffAttnProcessor": "attention_processors",
    "PydiffAuraFlowAttnProcessor": "attention_processors",
    "PydiffBriaFibo2AttnProcessor": "attention_processors",
    "PydiffCogVideoXAttnProcessor": "attention_processors",
    "PydiffCogView4AttnProcessor": "attention_processors",
    "PydiffCosmosAttnProcessor": "attention_processors",
    "PydiffCosmos25AttnProcessor": "attention_processors",
    "PydiffJointAttnProcessor": "attention_processors",
    "PydiffLTXVideoAttnProcessor": "attention_processors",
    "PydiffLTX2AttnProcessor": "attention_processors",
    "PydiffLTX2PerturbedAttnProcessor": "attention_processors",
    "PydiffLTX2VaeNeighborhoodAttnProcessor": "attention_processors",
    "PydiffLumina2AttnProcessor": "attention_processors",
    "PydiffMochiAttnProcessor": "attention_processors",
    "PydiffMotifVideoAttnProcessor": "attention_processors",
    "PydiffOmniGenAttnProcessor": "attention_processors",
    "PydiffMotifVideoCrossAttnProcessor": "attention_processors",
    "PydiffNegativeAwayAttnProcessor": "negative_away",
    "PydiffEasyAnimateAttnProcessor": "attention_processors",
    "PydiffErnieImageAttnProcessor": "attention_processors",
    "PydiffFluxAttnProcessor": "attention_processors",
    "PydiffFluxIPAdapterAttnProcessor": "attention_processors",
    "PydiffFlux2AttnProcessor": "attention_processors",
    "PydiffFlux2ParallelSelfAttnProcessor": "attention_processors",
    "PydiffFlux2KVAttnProcessor": "attention_processors",
    "PydiffFlux2KVParallelSelfAttnProcessor": "attention_processors",
    "PydiffFlux3AttnProcessor": "attention_processors",
    "PydiffGlmImageAttnProcessor": "attention_processors",
    "PydiffHeliosAttnProcessor": "attention_processors",
    "PydiffHiDreamAttnProcessor": "attention_processors",
    "PydiffHunyuanDiTAttnProcessor": "attention_processors",
    "PydiffHunyuanVideoAttnProcessor": "attention_processors",
    "PydiffHunyuanVideo15AttnProcessor": "attention_processors",
    "PydiffIdeogram4AttnProcessor": "attention_processors",
    "PydiffIPAdapterAttnProcessor": "attention_processors",
    "PydiffJoyImageAttnProcessor": "attention_processors",
    "PydiffJoyImageEditPlusAttnProcessor": "attention_processors",
    "PydiffKandinsky5AttnProcessor": "attention_processors",
    "PydiffKandinsky6AttnProcessor": "attention_processors",
    "PydiffKandinsky6SRAttnProcessor": "attention_processors",
    "PydiffKrea2AttnProcessor": "attention_processors",
    "PydiffNucleusMoEAttnProcessor": "attention_processors",
    "PydiffPRXAttnProcessor": "attention_processors",
    "PydiffPAGCFGIdentitySelfAttnProcessor": "attention_processors",
    "PydiffPAGIdentitySelfAttnProcessor": "attention_processors",
    "PydiffQwenImageAttnProcessor": "attention_processors",
    "PydiffQwenImage21AttnProcessor": "attention_processors",
    "PydiffQwenImage21FlexAttnProcessor": "attention_processors",
    "PydiffSanaAttnProcessor": "attention_processors",
    "PydiffSanaWMCrossAttnProcessor": "attention_processors",
    "PydiffSD3IPAdapterAttnProcessor": "attention_processors",
    "PydiffWanAnimate2CrossAttnProcessor": "attention_processors",
    "PydiffWanAttnProcessor": "attention_processors",
    "PydiffZImageAttnProcessor": "attention_processors",
    "set_attention_backend": "attention_processors",
    "set_negative_away_attention": "negative_away",
}


def __getattr__(name):
    # Resolved on first use so importing the scheduler never pulls in the attention stack and vice versa.
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
