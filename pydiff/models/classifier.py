"""A small CNN digits classifier whose penultimate features define FD-digits (see `pydiff.metrics`)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .config import require_positive_ints


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Input (B, in_channels, sample_size, sample_size) in [-1, 1]; `feature_dim` features; `num_classes` logits."""

    sample_size: int = 16
    in_channels: int = 1
    channels: int = 32
    feature_dim: int = 64
    num_classes: int = 10

    def __post_init__(self):
        require_positive_ints(self, ("sample_size", "in_channels", "channels", "feature_dim", "num_classes"))
        if self.sample_size % 4:
            raise ValueError(f"ClassifierConfig.sample_size must be a multiple of 4, got {self.sample_size}")


class DigitsClassifier(nn.Module):
    """Three 3x3 conv layers (two of stride 2), a feature layer and a linear head: `model(x) -> logits`."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = cfg = config or ClassifierConfig()
        c = cfg.channels
        self.conv = nn.Sequential(
            nn.Conv2d(cfg.in_channels, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.feature = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * (cfg.sample_size // 4) ** 2, cfg.feature_dim),
                                     nn.SiLU())
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def _check(self, x: torch.Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, feature_dim) of images x (B, C, H, W) in [-1, 1]."""
        self._check(x)
        return self.feature(self.conv(x.to(self.head.weight.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.dropout(self.features(x)))
