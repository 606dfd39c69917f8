"""Training objectives: what a stage minimises, built from the pure losses (distill/methods/) and the batch's targets.

An objective is called as `objective(logits, batch, mix, x, progress)` and returns its terms by name: `loss` (what
is minimised) and the unweighted parts (`ce`, `kd`, `tckd`, `nckd`, `inter`, `intra`, `feature`), which the engine
logs per epoch. `mix` is the engine's mixing of this batch (None: unmixed), `x` the (mixed) network input, so a live
teacher runs on the very same input, and `progress` the epoch and step (DKD's warm-up reads the epoch). A student
under feature distillation answers {"logits", "feature"} (models.FeatureStudent). `batch` is a data.ViewBatch (a
data.ReplayBatch for cached KD), read by attribute.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill import methods
from distill.config import KDCfg
from distill.data.batch import ViewBatch
from distill.methods.common import crossentropy, feature, logspace
from distill.methods.common.standardize import standardize
from distill.training import tricks


@dataclass(frozen=True)
class Progress:
    epoch: int  # 0-based epoch being trained
    step: int  # optimizer steps done before this one


def hard_targets(batch: ViewBatch, num_classes: int, label_smoothing: float, mix) -> torch.Tensor:
    """Smoothed one-hot labels, mixed like the images (the engine's mix, or a cached mixed view's lambda)."""
    target = tricks.smooth_one_hot(batch.label, num_classes, label_smoothing)
    if batch.mixed is not None:  # a ViewBatch's mixed views carry their partners' classes
        other = tricks.smooth_one_hot(batch.mixed.label, num_classes, label_smoothing)
        lam = batch.mixed.lam.float()[:, None]
        target = lam * target + (1 - lam) * other
    return tricks.mix_targets(target, mix)


class CrossEntropy:
    """Cross-entropy against label-smoothed one-hot targets, mixed like the images: the teacher's and the
    baseline's objective."""

    def __init__(self, num_classes: int, label_smoothing: float):
        self.num_classes, self.label_smoothing = num_classes, label_smoothing

    def __call__(self, logits, batch, mix, x, progress) -> dict[str, torch.Tensor]:
        ce = crossentropy.soft_cross_entropy(logits, hard_targets(batch, self.num_classes, self.label_smoothing, mix))
        return {"loss": ce}


class Distillation:
    """The student's objective: w_ce * (CE or focal on the hard labels) + the method's own loss (`kd.loss`, one
    file each in distill/methods/: its docstring gives the formula and how the authors' settings map onto ours).
    w_ce = kd.ce_weight, or the method's default when null (1 - alpha for kd, 1 otherwise). With
    `kd.logit_standardization` teacher and student logits are z-scored before the softmax (Sun et al. 2024), T then
    being the base temperature. `teacher` is a targets.CachedTeacher or LiveTeacher; its target travels as
    log-probabilities at T."""

    def __init__(self, cfg: KDCfg, num_classes: int, label_smoothing: float, teacher):
        self.cfg, self.num_classes, self.label_smoothing, self.teacher = cfg, num_classes, label_smoothing, teacher
        self.method = methods.chosen(cfg)
        self.ce_weight = cfg.ce_weight if cfg.ce_weight is not None else self.method.ce_weight(cfg)
        self.focal_alpha = torch.tensor(cfg.focal_alpha) if cfg.focal_alpha else None

    def _teacher(self, batch, mix, x) -> torch.Tensor:
        """The teacher's log-probabilities at T for each sample as the student sees it (mixed like its input)."""
        kd = self.cfg
        log_q = self.teacher.log_probs(batch, x, kd.temperature, kd.logit_standardization)
        if self.teacher.sees_mixed_input or mix is None:
            return log_q
        return logspace.mix(log_q, mix.lam, mix.perm.to(log_q.device))

    def __call__(self, logits, batch, mix, x, progress) -> dict[str, torch.Tensor]:
        kd = self.cfg
        # feature distillation: the student (models.FeatureStudent) also answers its projected pooled feature
        logits, student_feature = (logits["logits"], logits["feature"]) if isinstance(logits, dict) else (logits, None)
        # a student with a distillation head (kd.token) trains (class head, distillation head): CE on the first,
        # the method on the second (DeiT); any other student's one output does both
        logits, dist_head = logits if isinstance(logits, tuple) else (logits, logits)
        target = hard_targets(batch, self.num_classes, self.label_smoothing, mix)
        ce = (crossentropy.focal(logits, target, kd.focal_gamma, self.focal_alpha) if kd.ce == "focal"
              else crossentropy.soft_cross_entropy(logits, target))
        if not self.method.active(kd):  # e.g. kd with alpha 0: no soft target needed
            terms = {"loss": ce, "ce": ce}
        else:
            student = standardize(dist_head) if kd.logit_standardization else dist_head
            terms = self.method(student, self._teacher(batch, mix, x), batch, kd, progress.epoch)
            distilled = terms.pop("loss")
            loss = (crossentropy.combine(distilled, ce, kd.alpha, "scale") if kd.balance == "scale"
                    else self.ce_weight * ce + distilled)
            terms = {"loss": loss, "ce": ce, **terms}
        if student_feature is not None:
            taught = self._teacher_feature(batch, mix, x)
            terms["feature"] = feature.feature_loss(student_feature, taught, kd.feature_loss)
            terms["loss"] = terms["loss"] + kd.feature_weight * terms["feature"]
        return terms

    def _teacher_feature(self, batch, mix, x) -> torch.Tensor:
        """The teacher's pooled feature for each sample as the student sees it (cached ones mixed like its input)."""
        taught = self.teacher.feature(batch, x)
        if self.teacher.sees_mixed_input or mix is None:
            return taught
        return feature.mix_features(taught, mix.lam, mix.perm.to(taught.device))
