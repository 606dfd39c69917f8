"""Loss functions (pure): cross-entropy against a target distribution, KL, DKD, DIST, logit standardization."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target_c * log softmax(logits)_c; target rows sum to 1."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def kl_probs(student_logits: torch.Tensor, q: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(q || p_student_T) per sample, for a target distribution q given as probabilities."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return (torch.xlogy(q, q) - q * log_s).sum(1)


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each row z-scored: (z - mean) / (std + eps), std unbiased (logit standardization, Sun et al. 2024)."""
    z = logits.float()
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + eps)


def dkd(student_logits: torch.Tensor, q: torch.Tensor, target: torch.Tensor,
        temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD (Zhao et al. 2022), per sample, without the T^2 factor: TCKD, the KL between the binary
    distributions (target class, all others) of teacher q and student, and NCKD, the KL between their
    distributions over the non-target classes alone (each renormalised without the target). With two classes the
    non-target distribution is one class with probability 1, so NCKD is 0."""
    z = student_logits.float() / temperature
    t = target.view(-1, 1)
    lse = torch.logsumexp(z, 1, keepdim=True)
    on_target = torch.zeros_like(z, dtype=torch.bool).scatter_(1, t, True)
    others = z.masked_fill(on_target, float("-inf"))
    lse_others = torch.logsumexp(others, 1, keepdim=True)
    log_bs = torch.cat([z.gather(1, t) - lse, lse_others - lse], 1)  # log [p_t, 1 - p_t] of the student
    q_t = q.gather(1, t)
    bt = torch.cat([q_t, (1.0 - q_t).clamp_min(0.0)], 1)
    tckd = (torch.xlogy(bt, bt) - bt * log_bs).sum(1)
    log_ps_rest = (others - lse_others).masked_fill(on_target, 0.0)
    q_rest = (q.masked_fill(on_target, 0.0) / (1.0 - q_t).clamp_min(1e-12))
    nckd = (torch.xlogy(q_rest, q_rest) - q_rest * log_ps_rest).sum(1)
    return tckd, nckd


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - the mean over rows of the Pearson correlation between rows of a and b."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return 1.0 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)).mean()


def dist(p_student: torch.Tensor, p_teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DIST (Huang et al. 2022) on two batches of class distributions: the inter-class relation (1 - Pearson
    correlation of each sample's distribution, averaged over samples) and the intra-class relation (the same over
    each class's column of the batch). Without the tau^2 factor."""
    return _pearson_distance(p_student, p_teacher), _pearson_distance(p_student.t(), p_teacher.t())


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) against a target distribution: -sum_c t_c a_c (1 - p_c)^gamma log p_c;
    gamma = 0 and no alpha is the cross-entropy."""
    log_p = F.log_softmax(logits.float(), dim=1)
    weight = (1.0 - log_p.exp()).pow(gamma)
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
