"""Sample-quality metrics for the bundled digits model: classifier accuracy on class-conditional samples and
FD-digits, the Frechet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule", the FID
formula) between the digits classifier's penultimate features of generated and of held-out real digits."""

from __future__ import annotations

import functools

import torch

from pydiff.models import load
from pydiff.models.digits import NUM_CLASSES, load_digits

# Seed of the fixed draw of training images that forms the real-vs-real floor.
FLOOR_SEED = 0


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of two feature sets (N, D) and (M, D), in float64."""
    for name, feats in (("features_a", features_a), ("features_b", features_b)):
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] < 2:
            raise ValueError(f"{name} must be a 2-D tensor (N, D) with N >= 2, got "
                             f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}")
        if not torch.isfinite(feats).all():
            raise ValueError(f"{name} must be finite")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same dimension, got {features_a.shape[1]} "
                         f"and {features_b.shape[1]}")
    a, b = features_a.double().cpu(), features_b.double().cpu()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # tr((C_a C_b)^(1/2)) = sum of sqrt(eigenvalues) of the symmetric PSD matrix C_a^(1/2) C_b C_a^(1/2), which
    # is similar to C_a C_b: stabler than a general matrix square root.
    sqrt_a = _sqrtm_psd(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp(min=0).sqrt().sum()
    fd = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * tr_sqrt
    return max(float(fd), 0.0)


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    eigvals, eigvecs = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


@functools.lru_cache(maxsize=1)
def _classifier():
    return load("digits-classifier")


@functools.lru_cache(maxsize=None)
def _real_features(split: str) -> torch.Tensor:
    return classifier_features(load_digits(split, size=_classifier().config.sample_size).images)


@torch.no_grad()
def classifier_features(images: torch.Tensor, classifier=None) -> torch.Tensor:
    """Penultimate features (N, F) float64 of images (N, 1, 16, 16) in [-1, 1] (clamped to it first)."""
    classifier = classifier or _classifier()
    return classifier.features(images.float().clamp(-1.0, 1.0)).double()


@torch.no_grad()
def evaluate(samples: torch.Tensor, labels: torch.Tensor) -> dict:
    """Quality of class-conditional samples (N, 1, 16, 16) in [-1, 1] generated for labels (N,) in 0..9.

    Returns accuracy (fraction the digits classifier assigns to the requested label), fd (FD-digits between the
    samples and the 360 held-out real digits) and fd_floor (the same distance for min(N, 1437) real training
    digits, a fixed draw: what a perfect model of the training data would score at this sample size).
    Samples are clamped to [-1, 1] first, as they would be when saved as images.
    """
    classifier = _classifier()
    cfg = classifier.config
    expected = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    if not isinstance(samples, torch.Tensor) or not samples.is_floating_point():
        raise TypeError(f"samples must be a floating-point tensor, got {type(samples).__name__}")
    if samples.dim() != 4 or tuple(samples.shape[1:]) != expected or samples.shape[0] < 2:
        raise ValueError(f"samples must have shape (N, {', '.join(map(str, expected))}) with N >= 2, "
                         f"got {tuple(samples.shape)}")
    if not torch.isfinite(samples).all():
        raise ValueError("samples must be finite")
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be an int64 tensor, got {type(labels).__name__}")
    if labels.shape != (samples.shape[0],):
        raise ValueError(f"labels must have shape ({samples.shape[0]},), got {tuple(labels.shape)}")
    if ((labels < 0) | (labels >= NUM_CLASSES)).any():
        raise ValueError(f"labels must lie in [0, {NUM_CLASSES - 1}]")
    samples = samples.detach().cpu().float().clamp(-1.0, 1.0)
    feats = classifier_features(samples, classifier)
    predicted = classifier.head(feats.float()).argmax(1)
    train = _real_features("train")
    n = min(samples.shape[0], train.shape[0])
    floor_idx = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(FLOOR_SEED))[:n]
    held_out = _real_features("test")
    return {
        "accuracy": float((predicted == labels.cpu()).double().mean()),
        "fd": frechet_distance(feats, held_out),
        "fd_floor": frechet_distance(train[floor_idx], held_out),
    }
