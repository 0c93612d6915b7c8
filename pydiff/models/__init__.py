"""Models pydiff ships: a class-conditional DiT trained on sklearn's digits, its evaluation classifier, and exact
analytic (Gaussian / Gaussian-mixture) models for tests and benchmarks.

    model = pydiff.models.load("digits")             # DiT, eval mode, float32, CPU: model(x, t, y=labels)
    model.scheduler_config                            # diffusers-format noise schedule it was trained with
    clf = pydiff.models.load("digits-classifier")
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from .analytic import GaussianData, GaussianMixtureData
from .classifier import ClassifierConfig, DigitsClassifier
from .digits import load_digits
from .dit import DiT, DiTConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"
# name -> (model kind, file in WEIGHTS_DIR)
MODELS = {
    "digits": ("dit", "digits_dit.safetensors"),
    "digits-classifier": ("classifier", "digits_classifier.safetensors"),
}
_KINDS = {"dit": (DiT, DiTConfig), "classifier": (DigitsClassifier, ClassifierConfig)}

__all__ = [
    "MODELS", "WEIGHTS_DIR", "ClassifierConfig", "DiT", "DiTConfig", "DigitsClassifier", "GaussianData",
    "GaussianMixtureData", "load", "load_digits", "save",
]


def _kind_of(model: nn.Module) -> str:
    for kind, (cls, _) in _KINDS.items():
        if isinstance(model, cls):
            return kind
    raise TypeError(f"model must be a DiT or DigitsClassifier, got {type(model).__name__}")


def save(model: nn.Module, path: str | Path, provenance: dict | None = None) -> None:
    """Write `model`'s parameters (float32) and its config (+ scheduler config, provenance) to a safetensors file."""
    from safetensors.torch import save_file

    kind = _kind_of(model)
    metadata = {"pydiff_model": kind, "config": json.dumps(dataclasses.asdict(model.config), sort_keys=True)}
    if kind == "dit":
        metadata["scheduler_config"] = json.dumps(model.scheduler_config, sort_keys=True)
    if provenance:
        metadata["provenance"] = json.dumps(provenance, sort_keys=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def load(name: str = "digits", path: str | Path | None = None) -> nn.Module:
    """Build model `name` ("digits" or "digits-classifier") from its weights, in eval mode, float32, on CPU.

    path overrides the weight file shipped in pydiff/models/weights/. A missing file raises FileNotFoundError;
    a truncated or corrupt file, one for another model, or tensors of the wrong shape raise ValueError.
    """
    if name not in MODELS:
        raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}")
    kind, filename = MODELS[name]
    path = Path(path) if path is not None else WEIGHTS_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(f"weights for {name!r} not found at {path}; "
                                f"`python -m pydiff.models.train --what {kind}` writes them")
    metadata, tensors = _read_safetensors(path)
    if metadata.get("pydiff_model") != kind:
        raise ValueError(f"{path} holds a {metadata.get('pydiff_model')!r} model, expected {kind!r} for {name!r}")
    cls, config_cls = _KINDS[kind]
    try:
        config = config_cls(**json.loads(metadata["config"]))
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: missing or invalid model config in the file's metadata ({err})") from err
    if kind == "dit":
        model = cls(config, scheduler_config=json.loads(metadata.get("scheduler_config", "{}")))
    else:
        model = cls(config)
    _check_state(path, model.state_dict(), tensors)
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    try:
        model.provenance = json.loads(metadata.get("provenance", "{}"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid provenance in the file's metadata ({err})") from err
    return model.eval()


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), {key: f.get_tensor(key) for key in f.keys()}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err


def _check_state(path: Path, expected: dict, tensors: dict) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not match the model; missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [f"{k}: expected {tuple(v.shape)}, got {tuple(tensors[k].shape)}"
             for k, v in expected.items() if tensors[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: tensors of the wrong shape: " + "; ".join(wrong[:5]))
    not_float = [k for k, v in tensors.items() if not v.is_floating_point()]
    if not_float:
        raise ValueError(f"{path}: tensors must be floating point, got integer tensors {not_float[:5]}")
