"""From uint8 views to the network input: dtype conversion, normalization and cached mixing, run per batch on the
device, and the normalization statistics. (The crop/flip geometry lives in views.py, where it can be recorded and
replayed.)"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

from distill.config import DataCfg
from distill.data.batch import BatchError, Views


class PerImageStandardize(torch.nn.Module):
    """Standardise each image's channels to mean 0, std 1 (no data set statistics needed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True).clamp_min(1.0 / 255)
        return (x - mean) / std


class ToInput:
    """A batch of uint8 views -> the network input: converted and normalised in one go, on the batch's device,
    then blended with the partner views where the batch carries cached mixed views (`mixed`, a batch.MixedView:
    lam < 1 mixes up, a non-empty box pastes). With data.renderer=device a batch carries view parameters
    instead of pixels, rendered here first. The one place every stage turns a batch into the input."""

    def __init__(self, cfg: DataCfg, mean: Sequence[float] | None, std: Sequence[float] | None,
                 device_views: dict | None = None):
        """`mean`, `std`: the channel statistics the input is normalised with (the run's Normalization; None: none,
        or each image by its own with data.per_image_norm)."""
        self.device_views = device_views  # data.renderer=device: split index -> views.DeviceViews
        steps = [v2.ToDtype(torch.float32, scale=True)]
        if cfg.per_image_norm:
            steps.append(PerImageStandardize())
        elif mean is not None:
            steps.append(v2.Normalize(list(mean), list(std)))
        self.normalize = v2.Compose(steps)

    def __call__(self, batch: Views) -> torch.Tensor:
        """The network input of a batch of views (rendered first when it carries view parameters)."""
        if batch.image is None:  # a batch of view parameters: render its pixels on the device first
            if self.device_views is None:
                raise BatchError("a batch of view parameters reached a ToInput without the device's renderers "
                                 "(data.renderer=cpu)")
            batch = self.device_views[int(batch.split[0])](batch)
        x = self.normalize(batch.image)
        mixed = batch.mixed
        if mixed is None:
            return x
        y = self.normalize(mixed.image)
        lam = torch.as_tensor(mixed.lam, device=x.device).reshape(-1).float()[:, None, None, None]
        top, left, h, w = torch.as_tensor(mixed.box, device=x.device).reshape(-1, 4).long().unbind(1)
        rows, cols = torch.arange(x.shape[-2], device=x.device), torch.arange(x.shape[-1], device=x.device)
        inside = (((rows >= top[:, None]) & (rows < (top + h)[:, None]))[:, :, None]
                  & ((cols >= left[:, None]) & (cols < (left + w)[:, None]))[:, None, :])
        # cutmix rows paste the partner inside their box; the others blend by lam (lam = 1: unmixed, x exactly);
        # batched on the device, no host round trip (the formulas of tricks.blend)
        cut = (h * w > 0)[:, None, None, None]
        return torch.where(cut, torch.where(inside[:, None], y, x), x * lam + y * (1 - lam))


def channel_stats(loader) -> tuple[list[float], list[float]]:
    """Per-channel mean and std, on the [0, 1] scale, over every pixel of the uint8 images the loader yields."""
    total, sq, n = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for batch in loader:
        x = batch.image.to(torch.float64) / 255
        total += x.sum(dim=(0, 2, 3))
        sq += (x * x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
