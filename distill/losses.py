"""The public loss API: call these from your own training loop, as you would timm's or torchdistill's losses.

    kd(student_logits, teacher_logits, temperature)
    dkd(student_logits, teacher_logits, labels, temperature, alpha, beta)
    dist(student_logits, teacher_logits, temperature, beta, gamma)
    standardize(logits)                      # logit standardization's z-score (Sun et al. 2024)

Each distillation function returns a dict of scalar tensors: the method's terms as its paper defines them (batch
mean, each already multiplied by T^2) and `loss`, their weighted sum, with no CE term and no warm-up. They are the
same functions the stages train with (one implementation per method, in distill/methods/), computed in log space so
that they stay exact for a teacher of any confidence. Also here: the hard-label losses the objectives use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.methods.dist import dist
from distill.methods.dkd import dkd
from distill.methods.kd import kd
from distill.methods.standardize import standardize

__all__ = ["kd", "dkd", "dist", "standardize", "soft_cross_entropy", "focal", "combine"]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target_c * log softmax(logits)_c; target rows sum to 1."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) against a target distribution: -sum_c t_c a_c (1 - p_c)^gamma log p_c;
    gamma = 0 and no alpha is the cross-entropy."""
    log_p = F.log_softmax(logits.float(), dim=1)
    weight = (-torch.expm1(log_p)).pow(gamma)  # 1 - p without cancelling for a confident prediction
    if alpha is not None:
        weight = weight * alpha.to(weight)[None]
    return -(target * weight * log_p).sum(1).mean()


def combine(kd_term: torch.Tensor, ce_term: torch.Tensor, alpha: float, balance: str = "fixed") -> torch.Tensor:
    """alpha * KD + (1 - alpha) * CE. `scale`: each term divided by its own detached value first, so both
    contribute gradients of the same scale whatever their magnitudes (the value is then alpha + (1 - alpha))."""
    if balance == "scale":
        kd_term = kd_term / kd_term.detach().clamp_min(1e-12)
        ce_term = ce_term / ce_term.detach().clamp_min(1e-12)
    if alpha == 1.0:
        return kd_term
    if alpha == 0.0:
        return ce_term
    return alpha * kd_term + (1.0 - alpha) * ce_term
