"""Training objectives: what a stage minimises, built from the pure losses (losses.py) and the batch's targets.

An objective is `objective(logits, batch, mix, x) -> loss` (engine.Objective): `mix` is the engine's mixing of
this batch (None: unmixed) and `x` the (mixed) network input, so a live teacher can run on the very same input.
"""
from __future__ import annotations

import torch

from distill import losses, tricks
from distill.config import KDCfg


def hard_targets(batch: dict, num_classes: int, label_smoothing: float, mix) -> torch.Tensor:
    """Smoothed one-hot labels, mixed like the images (the engine's mix, or a cached mixed view's lambda)."""
    target = tricks.smooth_one_hot(batch["label"], num_classes, label_smoothing)
    if "partner_label" in batch:
        other = tricks.smooth_one_hot(batch["partner_label"], num_classes, label_smoothing)
        lam = batch["lam"].float()[:, None]
        target = lam * target + (1 - lam) * other
    return tricks.mix_targets(target, mix)


def ce(num_classes: int, label_smoothing: float):
    """Cross-entropy against label-smoothed one-hot targets, mixed like the images: the teacher's and the
    baseline's objective."""
    def objective(logits, batch, mix, x):
        return losses.soft_cross_entropy(logits, hard_targets(batch, num_classes, label_smoothing, mix))
    return objective


def kd(cfg: KDCfg, num_classes: int, label_smoothing: float, soft_target, use_topk):
    """alpha * KL(teacher_T || student_T) * T^2 + (1 - alpha) * CE (or focal). `soft_target(batch, mix, x)` gives
    either the teacher's probabilities at T, or (top-k values, classes, lse) when `use_topk(batch, mix)` says the
    exact sparse form applies (no mixing to fold in)."""
    t = cfg.temperature
    alpha_c = torch.tensor(cfg.focal_alpha) if cfg.focal_alpha else None

    def objective(logits, batch, mix, x):
        target = hard_targets(batch, num_classes, label_smoothing, mix)
        hard = losses.focal(logits, target, cfg.focal_gamma, alpha_c) if cfg.ce == "focal" else \
            losses.soft_cross_entropy(logits, target)
        if cfg.alpha == 0.0:
            return hard
        soft = soft_target(batch, mix, x)
        kl = losses.kl_topk(logits, *soft, t) if use_topk(batch, mix) else losses.kl_probs(logits, soft, t)
        return losses.combine(kl * t ** 2, hard, cfg.alpha, cfg.balance)
    return objective
