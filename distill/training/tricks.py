"""The trick set: optimizer and parameter groups, LR schedule, label smoothing, mixup/cutmix.

Optimizer and schedule come from timm. Mixing is written here as pure functions because timm's Mixup draws its
parameters inside the call; we need them as values that can be recorded (the cache stores them) and replayed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from distill.config import MixCfg, OptimCfg, SchedCfg


# ---------------------------------------------------------------- optimizer and schedule

def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    """Linear scaling rule: lr is given per 256 images."""
    return lr_per_256 * global_batch / 256


def build_optimizer(model: torch.nn.Module, cfg: OptimCfg, lr: float, use_sgd: bool = False):
    """timm's factory; `filter_bias_and_bn` puts biases and norm weights in a group without weight decay."""
    name = "sgd" if use_sgd else cfg.name
    kwargs = {}
    if name == "sgd":
        name = "sgd" if cfg.nesterov else "momentum"  # timm: 'sgd' is Nesterov SGD, 'momentum' plain momentum
        kwargs["momentum"] = cfg.momentum
    else:
        kwargs["betas"] = tuple(cfg.betas)
    return create_optimizer_v2(model, opt=name, lr=lr, weight_decay=cfg.weight_decay,
                               filter_bias_and_bn=not cfg.decay_bias_norm, **kwargs)


def build_schedule(optimizer, cfg: SchedCfg, epochs: int, steps_per_epoch: int):
    """A timm scheduler stepped per optimizer update. Call `.step_update(step)`: the LR is a pure function of the
    step number, so nothing about the schedule needs saving in a checkpoint."""
    kwargs = dict(sched=cfg.name, num_epochs=max(epochs - cfg.warmup_epochs, 1e-9), warmup_epochs=cfg.warmup_epochs,
                  warmup_lr=cfg.warmup_lr, warmup_prefix=True, min_lr=cfg.min_lr, step_on_epochs=False,
                  updates_per_epoch=steps_per_epoch)
    if cfg.name == "step":
        kwargs.update(decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate)
    elif cfg.name == "exponential":  # a step decay every epoch
        kwargs.update(sched="step", decay_epochs=1, decay_rate=cfg.decay_rate)
    scheduler, _ = create_scheduler_v2(optimizer, **kwargs)
    scheduler.step_update(0)
    return scheduler


# ---------------------------------------------------------------- targets

def smooth_one_hot(labels: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """(1 - eps) on the true class plus eps spread evenly over all classes."""
    out = torch.full((labels.shape[0], num_classes), eps / num_classes, device=labels.device)
    return out.scatter_add_(1, labels.view(-1, 1), torch.full_like(out[:, :1], 1.0 - eps))


# ---------------------------------------------------------------- mixup / cutmix

@dataclass(frozen=True)
class Mix:
    """One batch's mixing: image i is combined with image perm[i]; lam is the weight of image i.
    For cutmix, `box` = (top, left, height, width) is pasted from the partner and lam is the kept area."""
    perm: torch.Tensor
    lam: float
    box: tuple[int, int, int, int] | None = None


def draw_lam(rng: np.random.Generator, cfg: MixCfg, height: int, width: int):
    """(lam, box) of one mixing, box None for mixup; None when this draw does not mix."""
    use_mixup, use_cutmix = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
    if not cfg.on or rng.random() >= cfg.prob:
        return None
    if not (use_cutmix and (not use_mixup or rng.random() < cfg.switch_prob)):
        return float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha)), None
    lam = float(rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha))
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    box = (top, left, bottom - top, right - left)
    return 1.0 - box[2] * box[3] / (height * width), box  # lam = the area actually kept


def draw_mix(rng: np.random.Generator, cfg: MixCfg, batch_size: int, height: int, width: int) -> Mix | None:
    """Draw one batch's mixing parameters (None: this batch is not mixed)."""
    drawn = draw_lam(rng, cfg, height, width)
    if drawn is None:
        return None
    return Mix(torch.from_numpy(rng.permutation(batch_size)), *drawn)


def blend(x: torch.Tensor, partner: torch.Tensor, lam: float, box=None) -> torch.Tensor:
    """lam * x + (1 - lam) * partner (mixup), or x with the partner's pixels pasted in `box` (cutmix)."""
    if box is None:
        return x * lam + partner * (1.0 - lam)
    top, left, h, w = box
    out = x.clone()
    out[..., top:top + h, left:left + w] = partner[..., top:top + h, left:left + w]
    return out


def mix_images(x: torch.Tensor, mix: Mix | None) -> torch.Tensor:
    if mix is None:
        return x
    return blend(x, x[mix.perm.to(x.device)], mix.lam, mix.box)


def mix_targets(t: torch.Tensor, mix: Mix | None) -> torch.Tensor:
    """Mix per-sample distributions (one-hot, smoothed, or a teacher's) with the images' lambda and pairing."""
    if mix is None:
        return t
    return t * mix.lam + t[mix.perm.to(t.device)] * (1.0 - mix.lam)
