"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images) as a small diffusion data set."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

NUM_CLASSES = 10
# The split is part of the committed weights' provenance (see weights/README.md): change it and retrain.
SPLIT_RANDOM_STATE = 0
TEST_FRACTION = 0.2
SIZES = (8, 16, 32)


class Digits(NamedTuple):
    """Images (N, 1, size, size) float32 in [-1, 1] and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor


@functools.lru_cache(maxsize=None)
def _split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    train_idx, test_idx = train_test_split(
        range(len(target)), test_size=TEST_FRACTION, stratify=target, random_state=SPLIT_RANDOM_STATE
    )
    return torch.tensor(train_idx, dtype=torch.int64), torch.tensor(test_idx, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _all_digits(size: int) -> Digits:
    from sklearn.datasets import load_digits

    raw = load_digits()
    # Pixel values are integers 0..16 (counts of set pixels in 4x4 blocks of the original 32x32 bitmaps).
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return Digits(images.clamp(0.0, 1.0) * 2.0 - 1.0, torch.tensor(raw.target, dtype=torch.int64))


def load_digits(split: str = "train", size: int = 16) -> Digits:
    """The stratified 80/20 split (random_state 0) of sklearn's digits, bilinearly upsampled to size x size.

    split: "train" (1,437 images), "test" (360 held-out images) or "all" (1,797).
    Returns fresh tensors, so callers may modify them.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    data = _all_digits(size)
    if split == "all":
        return Digits(data.images.clone(), data.labels.clone())
    idx = _split_indices()[0 if split == "train" else 1]
    return Digits(data.images[idx], data.labels[idx])
