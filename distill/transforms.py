"""torchvision.transforms.v2 pipelines (CIFAR-style and ImageNet-style) and normalization statistics."""
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


def geometry(cfg: DataCfg, train: bool) -> list:
    """Resize/crop/flip steps on a uint8 image tensor."""
    s = cfg.image_size
    if cfg.transform == "cifar":
        steps = [v2.Resize((s, s), antialias=True)]  # a no-op when the image already has this size
        if train:
            steps.append(v2.RandomCrop(s, padding=cfg.padding) if cfg.padding else v2.Identity())
            if cfg.flip:
                steps.append(v2.RandomHorizontalFlip())
        return steps
    if train:
        steps = [v2.RandomResizedCrop(s, scale=tuple(cfg.scale), antialias=True)]
        if cfg.flip:
            steps.append(v2.RandomHorizontalFlip())
        return steps
    return [v2.Resize(int(round(s / cfg.crop_pct)), antialias=True), v2.CenterCrop(s)]


def finish(cfg: DataCfg, mean: list[float] | None, std: list[float] | None) -> v2.Compose:
    """uint8 image tensor -> normalised float tensor (mean None: no normalization)."""
    steps = [v2.ToDtype(torch.float32, scale=True)]
    if cfg.per_image_norm:
        steps.append(PerImageStandardize())
    elif mean is not None:
        steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


def to_uint8(cfg: DataCfg, train: bool) -> v2.Compose:
    """PIL RGB image -> augmented uint8 tensor: the per-sample part, run in the DataLoader workers. The float
    conversion and normalization (`finish`) run once per batch on the device: 4x less data through the loader
    and less work in the workers, with the same values."""
    return v2.Compose([v2.ToImage(), *geometry(cfg, train)])


def build(cfg: DataCfg, train: bool, mean: list[float] | None, std: list[float] | None) -> v2.Compose:
    """PIL RGB image -> normalised float tensor. mean/std None: no normalization (used to compute them)."""
    return v2.Compose([to_uint8(cfg, train), finish(cfg, mean, std)])


def channel_stats(loader) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over every pixel the loader yields (float64 sums)."""
    total, sq, n = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for batch in loader:
        x = batch["image"].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        sq += (x * x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
