"""From uint8 images to the network input: dtype conversion and normalization, run per batch on the device, and
the normalization statistics. (The crop/flip geometry lives in views.py, where it can be recorded and replayed.)"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from distill.config import DataCfg


class PerImageStandardize(torch.nn.Module):
    """Standardise each image's channels to mean 0, std 1 (no data set statistics needed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True).clamp_min(1.0 / 255)
        return (x - mean) / std


def finish(cfg: DataCfg, mean: list[float] | None, std: list[float] | None) -> v2.Compose:
    """uint8 images -> normalised float tensors (mean None: no normalization), one sample or a batch."""
    steps = [v2.ToDtype(torch.float32, scale=True)]
    if cfg.per_image_norm:
        steps.append(PerImageStandardize())
    elif mean is not None:
        steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


def channel_stats(loader) -> tuple[list[float], list[float]]:
    """Per-channel mean and std, on the [0, 1] scale, over every pixel of the uint8 images the loader yields."""
    total, sq, n = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for batch in loader:
        x = batch["image"].to(torch.float64) / 255
        total += x.sum(dim=(0, 2, 3))
        sq += (x * x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
