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

import dataclasses
import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from distill.config import DataCfg
from distill.data import jpeg
from distill.data.batch import Views
from distill.errors import DataError

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
    and normalization (which run batched, in transforms.ToInput). CIFAR-style views share one resize and
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


# ---------------------------------------------------------------- batched replay on the device

def render(pixels: torch.Tensor, index: torch.Tensor, params: torch.Tensor, cfg: DataCfg) -> torch.Tensor:
    """Views of images `index` of a decoded split (uint8 [N, H, W, 3], on any device), replayed from their stored
    parameters (int [B, WIDTH]) in one batched pass: uint8 [B, 3, s, s], on the pixels' device.

    CIFAR views (resize, pad, crop, flip) are gathers: the same pixels as `apply`, bit for bit. RandomResizedCrop
    views are resampled with torchvision's roi_align (bilinear, adaptive sampling), not `apply`'s antialiased
    resize: close, not equal (tests/test_views.py bounds the difference)."""
    s, device = cfg.image_size, pixels.device
    x = pixels[index.to(device)].permute(0, 3, 1, 2)
    kind, top, left, h, w, flip = params.to(device=device, dtype=torch.long).unbind(1)
    flip = flip.bool()[:, None]
    if cfg.transform == "cifar":
        if tuple(x.shape[-2:]) != (s, s):
            x = TF.resize(x, [s, s], antialias=True)
        p = cfg.padding
        x = torch.nn.functional.pad(x, [p] * 4) if p else x
        train = kind == TRAIN  # the eval view is the unpadded image: the crop at (p, p)
        rows = torch.where(train, top, p)[:, None] + torch.arange(s, device=device)
        cols = torch.where(train, left, p)[:, None] + torch.arange(s, device=device)
        cols = torch.where(flip, cols.flip(1), cols)
        b = torch.arange(len(x), device=device)[:, None, None]
        return x[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    from torchvision.ops import roi_align

    height, width = x.shape[-2:]
    short = int(round(s / cfg.crop_pct))  # the eval view: shorter side resized to `short`, centre s x s, as `apply`
    rh, rw = (short, int(short * width / height)) if height <= width else (int(short * height / width), short)
    top0, left0 = int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))
    sy, sx = height / rh, width / rw  # resized -> source pixels
    eval_box = torch.tensor([left0 * sx, top0 * sy, (left0 + s) * sx, (top0 + s) * sy], device=device)
    train_box = torch.stack([left, top, left + w, top + h], 1).float()
    boxes = torch.where((kind == TRAIN)[:, None], train_box, eval_box)
    boxes = torch.cat([torch.arange(len(x), device=device, dtype=torch.float)[:, None], boxes], 1)
    out = roi_align(x.float(), boxes, output_size=(s, s), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    out = torch.where(flip[:, :, None, None], out.flip(-1), out)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resized(pixels: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """A decoded split (uint8 [N, H, W, 3]) with every image resized to size x size (antialiased, `apply`'s resize),
    a chunk of images at a time; the split itself when it has that size already."""
    if tuple(pixels.shape[1:3]) == (size, size):
        return pixels
    return torch.cat([TF.resize(pixels[i:i + chunk].permute(0, 3, 1, 2), [size, size], antialias=True)
                      .permute(0, 2, 3, 1) for i in range(0, len(pixels), chunk)]).contiguous()


class DeviceViews:
    """A decoded split kept on the training device, rendering each batch's views there (`render`): the batch
    carries image indices and view parameters instead of pixels, and needs no loader workers. A cached mixed view's
    partner is rendered alike."""

    def __init__(self, pixels, cfg: DataCfg, device):
        pixels = torch.as_tensor(pixels)
        if cfg.transform == "cifar":  # each view starts from the image resized to s: resized once, on the host, as
            pixels = resized(pixels, cfg.image_size)  # `apply` does (a GPU's resize may round a pixel otherwise)
        self.pixels, self.cfg = pixels.to(device), cfg

    def __call__(self, batch: Views) -> Views:
        """The batch with its views' pixels (`image`, and a mixed view's partner's `mixed.image`) rendered."""
        image = render(self.pixels, batch.index, batch.view, self.cfg)
        mixed = batch.mixed
        if mixed is not None:
            partner = mixed.index.to(self.pixels.device)
            drawn = render(self.pixels, partner.clamp_min(0), mixed.view, self.cfg)
            mixed = dataclasses.replace(mixed, image=torch.where((partner >= 0)[:, None, None, None], drawn,
                                                                 torch.zeros_like(drawn)))
        return dataclasses.replace(batch, image=image, mixed=mixed)


class JpegViews:
    """A split too large to keep decoded on the device: each batch carries its JPEG files (`jpeg`, host bytes),
    decoded together on the device (`jpeg.decode`: libjpeg-turbo on the CPU, as PIL's, so the CPU path's very
    pixels; nvJPEG on CUDA, within tests/test_cuda.py's bound) and cropped there with `apply`'s own code. `jpeg_of`
    maps each view to its file when one image gives several views (the cache stage)."""

    def __init__(self, cfg: DataCfg, device):
        self.cfg, self.device = cfg, torch.device(device)

    def __call__(self, batch: Views) -> Views:
        """The batch with its views' pixels (`image`) decoded and cropped; raises DataError for mixed views, whose
        partners this renderer does not decode."""
        if batch.mixed is not None:
            raise DataError("mixed cached views with data.renderer=device need the split decoded into memory "
                            "(data.decode_mb); use data.renderer=cpu")
        files = [torch.from_numpy(np.array(b, copy=True)) for b in batch.jpeg]
        images = jpeg.decode(files, self.device)
        of = batch.jpeg_of.tolist() if batch.jpeg_of is not None else range(len(images))
        params = batch.view.cpu().numpy()
        return dataclasses.replace(batch, image=torch.stack([apply(images[j], params[r], self.cfg)
                                                             for r, j in enumerate(of)]))
