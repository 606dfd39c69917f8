"""Training objectives: what a stage minimises, built from the pure losses (distill/methods/) and the batch's targets.

An objective is called as `objective(out, batch, mix, x, progress)` and returns its terms by name: `loss` (what is
minimised) and the unweighted parts (`ce`, `kd`, `tckd`, `nckd`, `inter`, `intra`, `feature`, ...), which the
engine logs per epoch. `out` is the model's training output, `batch` a data.ViewBatch (a data.ReplayBatch for cached
KD), `mix` the engine's mixing of this batch (None: unmixed), `x` the (mixed) network input, so a live teacher runs
on the very same input, and `progress` the epoch and step (DKD's warm-up reads the epoch).

The student's objective is one object per kind of distillation, chosen once from the kd section (`objective_for`):

    LogitObjective    the student answers its logits; CE and the method both read them
    TokenObjective    a student with a distillation head (kd.token, DeiT) answers (class head, distillation head):
                      CE on the first, the method on the second
    FeatureObjective  the student also answers its pooled pre-logit feature through a projection to the teacher's
                      width (models.FeatureStudent): with a feature method (Method.kind) or kd.feature_weight > 0

Each reads the model's output into one typed record (`Outputs`) and calls the method with what the method's kind
reads: a logit method the logits of the head it teaches and the teacher's log-probabilities at T, a feature method
the student's projected feature and the teacher's pooled feature.
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


@dataclass(frozen=True)
class Outputs:
    """The student's training output by part: `logits`, the class head's (CE on the labels); `taught`, the logits a
    logit method teaches (the distillation head's under kd.token, else `logits`); `feature`, the pooled pre-logit
    feature through the projection to the teacher's width (feature distillation only, else None)."""
    logits: torch.Tensor
    taught: torch.Tensor
    feature: torch.Tensor | None = None


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

    def __call__(self, logits: torch.Tensor, batch: ViewBatch, mix: tricks.Mix | None, x: torch.Tensor | None,
                 progress: Progress) -> dict[str, torch.Tensor]:
        ce = crossentropy.soft_cross_entropy(logits, hard_targets(batch, self.num_classes, self.label_smoothing, mix))
        return {"loss": ce}


class StudentObjective:
    """What every kind of the student's objective shares: w_ce * (CE or focal on the hard labels) + the method's own
    loss (`kd.loss`, one file each in distill/methods/: its docstring gives the formula and how the authors' settings
    map onto ours). w_ce = kd.ce_weight, or the method's default when null (its `ce_weight`: 1 - kd.alpha for kd and
    hard, 1 for dkd and dist). kd.balance=scale balances the two instead. With `kd.logit_standardization` the
    logits a method teaches and the teacher's are z-scored before the softmax (Sun et al. 2024), T then being the
    base temperature. `teacher` is a targets.CachedTeacher, LiveTeacher or Ensemble; its target travels as
    log-probabilities at T. A kind says how it reads the model's output (`outputs`)."""

    def __init__(self, kd: KDCfg, num_classes: int, label_smoothing: float, teacher):
        self.cfg, self.num_classes, self.label_smoothing, self.teacher = kd, num_classes, label_smoothing, teacher
        self.method = methods.chosen(kd)
        self.ce_weight = kd.ce_weight if kd.ce_weight is not None else self.method.ce_weight(kd)
        self.focal_alpha = torch.tensor(kd.focal_alpha) if kd.focal_alpha else None

    def outputs(self, out) -> Outputs:
        """The model's training output as its parts."""
        raise NotImplementedError

    def __call__(self, out, batch: ViewBatch, mix: tricks.Mix | None, x: torch.Tensor | None,
                 progress: Progress) -> dict[str, torch.Tensor]:
        """The terms of this step: `loss`, `ce` and the method's own terms (none when the method is not active)."""
        return self.terms(self.outputs(out), batch, mix, x, progress)

    def terms(self, student: Outputs, batch: ViewBatch, mix: tricks.Mix | None, x: torch.Tensor | None,
              progress: Progress) -> dict[str, torch.Tensor]:
        """CE on the class head's logits and, when the method is active, its terms, weighted together."""
        kd = self.cfg
        target = hard_targets(batch, self.num_classes, self.label_smoothing, mix)
        ce = (crossentropy.focal(student.logits, target, kd.focal_gamma, self.focal_alpha) if kd.ce == "focal"
              else crossentropy.soft_cross_entropy(student.logits, target))
        if not self.method.active(kd):  # e.g. kd with alpha 0: no soft target needed
            return {"loss": ce, "ce": ce}
        terms = self.taught(student, batch, mix, x, progress)
        distilled = terms.pop("loss")
        loss = (crossentropy.combine(distilled, ce, kd.alpha, "scale") if kd.balance == "scale"
                else self.ce_weight * ce + distilled)
        return {"loss": loss, "ce": ce, **terms}

    def taught(self, student: Outputs, batch: ViewBatch, mix: tricks.Mix | None, x: torch.Tensor | None,
               progress: Progress) -> dict[str, torch.Tensor]:
        """The logit method's terms: the head it teaches (z-scored with kd.logit_standardization) against the
        teacher's log-probabilities at T."""
        kd = self.cfg
        head = standardize(student.taught) if kd.logit_standardization else student.taught
        return self.method(head, self._teacher(batch, mix, x), batch, kd, progress.epoch)

    def _teacher(self, batch: ViewBatch, mix: tricks.Mix | None, x: torch.Tensor | None) -> torch.Tensor:
        """The teacher's log-probabilities at T for each sample as the student sees it (mixed like its input)."""
        kd = self.cfg
        log_q = self.teacher.log_probs(batch, x, kd.temperature, kd.logit_standardization)
        if self.teacher.sees_mixed_input or mix is None:
            return log_q
        return logspace.mix(log_q, mix.lam, mix.perm.to(log_q.device))


class LogitObjective(StudentObjective):
    """The student answers its logits (a tensor): CE and the (logit) method both read them."""

    def outputs(self, out: torch.Tensor) -> Outputs:
        return Outputs(logits=out, taught=out)


class TokenObjective(StudentObjective):
    """A student with a distillation head (kd.token) answers (class head, distillation head) in training: CE on the
    first, the method on the second (DeiT); evaluated as their mean, outside the objective."""

    def outputs(self, out: tuple[torch.Tensor, torch.Tensor]) -> Outputs:
        class_head, distillation_head = out
        return Outputs(logits=class_head, taught=distillation_head)


class FeatureObjective(StudentObjective):
    """The student (models.FeatureStudent) answers {"logits": its training output, "feature": its projected pooled
    feature}. A feature method (Method.kind) is handed that feature and the teacher's pooled feature; with
    kd.feature_weight > 0, kd.feature_weight * kd.feature_loss (mse | cosine, timm's feature task) between the two
    is added, as term `feature`, to whatever the method adds. With kd.token, `logits` is the two heads' pair."""

    def outputs(self, out: dict[str, torch.Tensor]) -> Outputs:
        logits = out["logits"]
        class_head, taught = logits if self.cfg.token is not None else (logits, logits)
        return Outputs(logits=class_head, taught=taught, feature=out["feature"])

    def terms(self, student: Outputs, batch: ViewBatch, mix: tricks.Mix | None, x: torch.Tensor | None,
              progress: Progress) -> dict[str, torch.Tensor]:
        kd = self.cfg
        terms = super().terms(student, batch, mix, x, progress)
        if kd.feature_weight > 0:
            taught = self._teacher_feature(batch, mix, x)
            term = feature.feature_loss(student.feature, taught, kd.feature_loss)
            terms = terms | {"feature": term, "loss": terms["loss"] + kd.feature_weight * term}
        return terms

    def taught(self, student: Outputs, batch: ViewBatch, mix: tricks.Mix | None, x: torch.Tensor | None,
               progress: Progress) -> dict[str, torch.Tensor]:
        """A feature method's terms (the student's projected feature against the teacher's), else the logit
        method's."""
        if self.method.kind != "feature":
            return super().taught(student, batch, mix, x, progress)
        return self.method(student.feature, self._teacher_feature(batch, mix, x), batch, self.cfg, progress.epoch)

    def _teacher_feature(self, batch: ViewBatch, mix: tricks.Mix | None, x: torch.Tensor | None) -> torch.Tensor:
        """The teacher's pooled feature for each sample as the student sees it (cached ones mixed like its input)."""
        taught = self.teacher.feature(batch, x)
        if self.teacher.sees_mixed_input or mix is None:
            return taught
        return feature.mix_features(taught, mix.lam, mix.perm.to(taught.device))


def objective_for(kd: KDCfg, num_classes: int, label_smoothing: float, teacher) -> StudentObjective:
    """The student's objective for the kd section `kd`, its kind chosen here once: features when the student learns
    the teacher's (methods.reads_features), else a distillation head with kd.token, else logits."""
    kind = (FeatureObjective if methods.reads_features(kd) else TokenObjective if kd.token is not None
            else LogitObjective)
    return kind(kd, num_classes, label_smoothing, teacher)
