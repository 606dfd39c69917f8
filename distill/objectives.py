"""Training objectives: what a stage minimises, built from the pure losses (losses.py) and the batch's targets.

An objective is called as `objective(logits, batch, mix, x, progress)` and returns its terms by name: `loss` (what
is minimised) and the unweighted parts (`ce`, `kd`, `tckd`, `nckd`, `inter`, `intra`), which the engine logs per
epoch. `mix` is the engine's mixing of this batch (None: unmixed), `x` the (mixed) network input, so a live teacher
runs on the very same input, and `progress` the epoch and step (DKD's warm-up reads the epoch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill import losses, tricks
from distill.config import KDCfg


@dataclass(frozen=True)
class Progress:
    epoch: int  # 0-based epoch being trained
    step: int  # optimizer steps done before this one


def hard_targets(batch: dict, num_classes: int, label_smoothing: float, mix) -> torch.Tensor:
    """Smoothed one-hot labels, mixed like the images (the engine's mix, or a cached mixed view's lambda)."""
    target = tricks.smooth_one_hot(batch["label"], num_classes, label_smoothing)
    if "partner_label" in batch:
        other = tricks.smooth_one_hot(batch["partner_label"], num_classes, label_smoothing)
        lam = batch["lam"].float()[:, None]
        target = lam * target + (1 - lam) * other
    return tricks.mix_targets(target, mix)


class CrossEntropy:
    """Cross-entropy against label-smoothed one-hot targets, mixed like the images: the teacher's and the
    baseline's objective."""

    def __init__(self, num_classes: int, label_smoothing: float):
        self.num_classes, self.label_smoothing = num_classes, label_smoothing

    def __call__(self, logits, batch, mix, x, progress) -> dict[str, torch.Tensor]:
        ce = losses.soft_cross_entropy(logits, hard_targets(batch, self.num_classes, self.label_smoothing, mix))
        return {"loss": ce}


class Distillation:
    """The student's objective, `kd.loss`:

    - kd:   kd.alpha * KL(q_T || p_T) * T^2 + w_ce * CE                       (Hinton et al. 2015)
    - dkd:  w_ce * CE + min((epoch + 1) / warmup, 1) * (a * TCKD + b * NCKD) * T^2   (Zhao et al. 2022)
    - dist: w_ce * CE + (beta * inter + gamma * intra) * T^2                   (Huang et al. 2022)

    with w_ce = kd.ce_weight (null: 1 - alpha for kd, 1 for dkd and dist). `kd.logit_standardization` z-scores
    teacher and student logits before the softmax (Sun et al. 2024), T then being the base temperature. The hard
    term is CE or focal (`kd.ce`); `teacher` is a targets.CachedTeacher or LiveTeacher."""

    def __init__(self, cfg: KDCfg, num_classes: int, label_smoothing: float, teacher):
        self.cfg, self.num_classes, self.label_smoothing, self.teacher = cfg, num_classes, label_smoothing, teacher
        self.ce_weight = cfg.ce_weight if cfg.ce_weight is not None else (1.0 - cfg.alpha if cfg.loss == "kd" else 1.0)
        self.focal_alpha = torch.tensor(cfg.focal_alpha) if cfg.focal_alpha else None

    def _teacher(self, batch, mix, x) -> torch.Tensor:
        """The teacher's distribution at T for each sample as the student sees it."""
        c = self.cfg
        q = self.teacher.probs(batch, x, c.temperature, c.logit_standardization)
        return q if self.teacher.sees_mixed_input else tricks.mix_targets(q, mix)

    def __call__(self, logits, batch, mix, x, progress) -> dict[str, torch.Tensor]:
        c, t = self.cfg, self.cfg.temperature
        target = hard_targets(batch, self.num_classes, self.label_smoothing, mix)
        hard = losses.focal(logits, target, c.focal_gamma, self.focal_alpha) if c.ce == "focal" else \
            losses.soft_cross_entropy(logits, target)
        terms = {"ce": hard}
        if c.loss == "kd" and c.alpha == 0.0:
            return {"loss": hard, **terms}
        q = self._teacher(batch, mix, x)
        student = losses.standardize(logits) if c.logit_standardization else logits
        if c.loss == "kd":
            terms["kd"] = losses.kl_probs(student, q, t).mean() * t ** 2
            if c.balance == "scale":
                return {"loss": losses.combine(terms["kd"], hard, c.alpha, "scale"), **terms}
            return {"loss": c.alpha * terms["kd"] + self.ce_weight * hard, **terms}
        if c.loss == "dkd":
            tckd, nckd = losses.dkd(student, q, batch["label"], t)
            if "partner_label" in batch:  # a cached mixed view: its two classes, weighted like the hard labels
                lam = batch["lam"].float()
                tckd_p, nckd_p = losses.dkd(student, q, batch["partner_label"], t)
                tckd, nckd = lam * tckd + (1 - lam) * tckd_p, lam * nckd + (1 - lam) * nckd_p
            terms |= {"tckd": tckd.mean() * t ** 2, "nckd": nckd.mean() * t ** 2}
            warm = min((progress.epoch + 1) / c.dkd_warmup, 1.0) if c.dkd_warmup else 1.0
            kd = c.dkd_alpha * terms["tckd"] + c.dkd_beta * terms["nckd"]
            return {"loss": self.ce_weight * hard + warm * kd, **terms}
        inter, intra = losses.dist(torch.softmax(logits.float() / t, 1), q)
        terms |= {"inter": inter * t ** 2, "intra": intra * t ** 2}
        return {"loss": self.ce_weight * hard + c.dist_beta * terms["inter"] + c.dist_gamma * terms["intra"],
                **terms}
