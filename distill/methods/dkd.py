"""DKD, decoupled knowledge distillation (Zhao et al., CVPR 2022), `kd.loss=dkd`.

At T, teacher and student distributions are split at the sample's class t into the binary pair b = [p_t, p_rest]
(p_rest = sum of p_j over j != t) and the distribution over the other classes alone, p^_j = p_j / p_rest (j != t):

    tckd = KL(b_teacher || b_student) * T^2,   nckd = KL(p^_teacher || p^_student) * T^2   (batch means),
    loss = alpha * tckd + beta * nckd.

Everything is computed in log space: p_rest is the logsumexp over the other classes where p_t > 1/2, never
1 - p_t, so the loss stays exact for a teacher whose p_t rounds to 1 in float32 (the label's logit about 17 above
the rest at T = 1, DKD's ImageNet setting); and log1p(-p_t) where p_t <= 1/2, so a small p_t (many classes, high T)
keeps its digits too. With two classes p^ is one class with probability 1 and nckd is 0.

In the student's objective: w_ce * CE + min((epoch + 1) / kd.dkd.warmup, 1) * loss, w_ce = kd.ce_weight (null: 1).
The authors' settings (mdistiller, CFG.DKD.*): CIFAR-100 ALPHA 1, BETA 8, T 4, WARMUP 20 are kd.dkd.alpha=1
kd.dkd.beta=8 kd.temperature=4 kd.dkd.warmup=20; ImageNet ALPHA 0.5, BETA 0.5, T 1, WARMUP 1. mdistiller's warm-up
factor is epoch / WARMUP with 1-based epochs, the same as ours with 0-based ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.fields import MAX_WEIGHT, STUDENT, setting
from distill.methods import Method
from distill.methods.common.logspace import kl_rows, log_rest, log_softmax_at
from distill.registry import METHODS


def per_sample(student_logits: torch.Tensor, log_q: torch.Tensor, labels: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) per sample, without T^2; log_q: the teacher's log-probabilities at T."""
    target = labels.view(-1, 1)
    z = student_logits.float() / temperature
    on_target = torch.zeros_like(z, dtype=torch.bool).scatter_(1, target, True)
    log_p = F.log_softmax(z, 1)
    log_p_rest, log_q_rest = log_rest(log_p, target), log_rest(log_q, target)
    binary_p = torch.cat([log_p.gather(1, target), log_p_rest], 1)  # log [p_t, p_rest]
    binary_q = torch.cat([log_q.gather(1, target), log_q_rest], 1)
    tckd = kl_rows(binary_q, binary_p)
    hat_p = F.log_softmax(z.masked_fill(on_target, float("-inf")), 1)  # log p^ over the other classes
    hat_q = F.log_softmax(log_q.masked_fill(on_target, float("-inf")), 1)
    nckd = kl_rows(hat_q, hat_p)
    return tckd, nckd


def _terms(tckd: torch.Tensor, nckd: torch.Tensor, temperature: float, alpha: float, beta: float) -> dict:
    """Per-sample terms -> their batch means times T^2, and the weighted loss."""
    tckd, nckd = tckd.mean() * temperature ** 2, nckd.mean() * temperature ** 2
    return {"tckd": tckd, "nckd": nckd, "loss": alpha * tckd + beta * nckd}


def dkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
        alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """DKD's two terms: {"tckd", "nckd"} (batch means, each times T^2) and "loss" = alpha * tckd + beta * nckd.
    alpha weighs the target-class term, beta the non-target term; no CE term and no warm-up (add your own)."""
    per = per_sample(student_logits, log_softmax_at(teacher_logits, temperature), labels, temperature)
    return _terms(*per, temperature, alpha, beta)


@dataclass
class DKDSettings:
    """kd.dkd: DKD's own settings (mdistiller's CFG.DKD.*)."""
    alpha: float = setting(1.0, doc="weight of the target-class term TCKD (DKD's CIFAR default 1)", ge=0,
                           le=MAX_WEIGHT, changes=STUDENT)
    beta: float = setting(8.0, doc="weight of the non-target term NCKD (DKD's CIFAR default 8; 2 for resnet56 -> "
                                   "resnet20 and resnet110 -> resnet32)", ge=0, le=MAX_WEIGHT, changes=STUDENT)
    warmup: int = setting(20, doc="epochs over which the DKD term ramps up linearly (DKD's CIFAR default 20)", ge=0,
                          changes=STUDENT)


@METHODS.register("dkd")
class DKD(Method, needs_labels=True, settings=DKDSettings, cite="Zhao et al. 2022",
          help="w_ce * CE + warm-up * (kd.dkd.alpha * TCKD + kd.dkd.beta * NCKD) * T^2, decoupled KD"):
    """kd.loss=dkd: the module docstring gives the formula and the authors' settings; reads the teacher's
    distribution at T and each sample's class."""
    def card_line(self, kd_cfg) -> str:
        return f"DKD ({self.cite}), alpha {kd_cfg.dkd.alpha}, beta {kd_cfg.dkd.beta}"

    def warnings(self, cfg) -> list[str]:
        """A warm-up longer than the student's schedule: the DKD term never reaches its full weight."""
        warmup, epochs = cfg.kd.dkd.warmup, cfg.student.epochs
        if warmup and warmup > epochs:
            return [f"kd.dkd.warmup={warmup} is longer than student.epochs={epochs}: the DKD term reaches only "
                    f"{epochs}/{warmup} of its weight; set kd.dkd.warmup to at most {epochs} for the full weight"]
        return []

    def __call__(self, student_logits, log_q, batch, kd_cfg, epoch) -> dict[str, torch.Tensor]:
        temperature, own = kd_cfg.temperature, kd_cfg.dkd
        tckd, nckd = per_sample(student_logits, log_q, batch.label, temperature)
        if batch.mixed is not None:  # a cached mixed view: its two classes, weighted like the hard labels
            lam = batch.mixed.lam.float()
            tckd_p, nckd_p = per_sample(student_logits, log_q, batch.mixed.label, temperature)
            tckd, nckd = lam * tckd + (1 - lam) * tckd_p, lam * nckd + (1 - lam) * nckd_p
        warm = min((epoch + 1) / own.warmup, 1.0) if own.warmup else 1.0
        return _terms(tckd, nckd, temperature, warm * own.alpha, warm * own.beta)
