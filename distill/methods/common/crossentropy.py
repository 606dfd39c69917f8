"""The hard-label losses the objectives add to a distillation method: cross-entropy against a (smoothed, mixed)
target distribution, focal loss, and `kd.balance=scale`'s combination of the KD and CE terms (pure functions)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
