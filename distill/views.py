"""Recordable, replayable augmentation views.

A view is the augmentation actually applied to one image, stored as a few int16: (kind, top, left, height, width,
flip). The cache draws V views per image, labels each with the teacher, and stores the parameters; the student
re-applies them with `apply` and sees the very pixels the teacher saw. Parameters are drawn from a numpy generator
seeded by (seed, image index, view), so a view does not depend on worker, process or batch; they are stored as
values, not as seeds, so a library that changes its sampling code cannot change a cached view.

Why not torchvision's random transforms: they draw from the global torch RNG inside the call and do not expose
what they drew, so a view could be neither recorded nor replayed.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from distill.config import DataCfg

EVAL, TRAIN = 0, 1
FIELDS = ("kind", "top", "left", "height", "width", "flip")
WIDTH = len(FIELDS)


def _random_resized_box(rng: np.random.Generator, h: int, w: int, scale, ratio=(3 / 4, 4 / 3)):
    """The RandomResizedCrop box distribution (Szegedy et al.): area in `scale`, log-uniform aspect ratio."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h  # fallback: the whole image clipped to the ratio range, centred
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def rng_for(seed: int, index: int, view: int) -> np.random.Generator:
    """The generator of one (image, view): independent of worker, process and batch."""
    return np.random.default_rng([seed, index, view])


def train_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of image `index`'s training view at `epoch` (uncached training): a key of another length than
    `rng_for`'s, so the two streams never coincide."""
    return np.random.default_rng([seed, epoch, index, 1])


EVAL_VIEW = np.array([EVAL, 0, 0, 0, 0, 0], dtype=np.int16)


def draw(cfg: DataCfg, rng: np.random.Generator, image_hw: tuple[int, int]) -> np.ndarray:
    """Parameters of one random train view (int16[WIDTH])."""
    s = cfg.image_size
    if cfg.transform == "cifar":  # crop an s x s window out of the image resized to s and padded
        top, left = (int(v) for v in rng.integers(0, 2 * cfg.padding + 1, size=2))
        h = w = s
    else:
        top, left, h, w = _random_resized_box(rng, image_hw[0], image_hw[1], cfg.scale)
    flip = int(cfg.flip and rng.random() < 0.5)
    return np.array([TRAIN, top, left, h, w, flip], dtype=np.int16)


def apply_all(image: torch.Tensor, params: np.ndarray, cfg: DataCfg) -> torch.Tensor:
    """Apply stored views (int16[V, WIDTH]) to one uint8 CHW image: uint8 [V, C, s, s], before dtype conversion
    and normalization (which run batched, see cache.ViewItems.to_input). CIFAR-style views share one resize and
    one padding; each crop is a slice."""
    s = cfg.image_size
    out = []
    if cfg.transform == "cifar":
        base = image if tuple(image.shape[-2:]) == (s, s) else TF.resize(image, [s, s], antialias=True)
        padded = torch.nn.functional.pad(base, [cfg.padding] * 4) if cfg.padding else base
        for kind, top, left, _, _, flip in params.tolist():
            x = padded[:, top:top + s, left:left + s] if kind == TRAIN else base
            out.append(x.flip(-1) if flip else x)
    else:
        for kind, top, left, h, w, flip in params.tolist():
            if kind == TRAIN:
                x = TF.resized_crop(image, top, left, h, w, [s, s], antialias=True)
            else:
                x = TF.center_crop(TF.resize(image, int(round(s / cfg.crop_pct)), antialias=True), [s, s])
            out.append(x.flip(-1) if flip else x)
    return torch.stack(out)


def apply(image: torch.Tensor, params, cfg: DataCfg) -> torch.Tensor:
    """Apply one stored view (uint8 out); the same code path as `apply_all`."""
    return apply_all(image, np.asarray(params, dtype=np.int16)[None], cfg)[0]
