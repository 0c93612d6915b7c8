"""Labelled image grids of class-conditional samples (one row per class), for people rather than numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def save_grid(samples: torch.Tensor, labels: torch.Tensor, path: str | Path, title: str = "",
              per_class: int = 10) -> Path:
    """Write a PNG grid: one row per class (label at the left), up to ``per_class`` samples in [-1, 1] each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if samples.dim() != 4 or samples.shape[0] != labels.shape[0]:
        raise ValueError(f"samples must be (N, C, H, W) with N == len(labels); got {tuple(samples.shape)} and "
                         f"{tuple(labels.shape)}")
    classes: Sequence[int] = sorted(set(labels.tolist()))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.6 + 0.6, len(classes) * 0.6 + 0.5),
                             squeeze=False)
    images = samples.detach().float().cpu().clamp(-1, 1)
    for row, cls in enumerate(classes):
        idx = (labels == cls).nonzero().flatten()[:per_class]
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(idx):
                ax.imshow(images[idx[col]].mean(0), cmap="gray", vmin=-1, vmax=1)
        axes[row][0].set_ylabel(str(cls), rotation=0, labelpad=10, fontsize=10, va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    # leave a strip above the first row for the title
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 0.96 if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
