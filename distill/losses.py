"""Loss functions (pure): cross-entropy against a per-sample target distribution."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target_c * log softmax(logits)_c; target rows sum to 1."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def kl_topk(student_logits: torch.Tensor, topk_logits: torch.Tensor, topk_classes: torch.Tensor,
            teacher_lse: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(q || p_student_T), `batchmean`, where q is the teacher's distribution known from its top-k logits and
    the logsumexp of all its logits at T: q_i = exp(z_i / T - lse) on the top k, and the residual mass
    r = 1 - sum(q_topk) spread evenly over the other C - k classes. Costs one logsumexp of
    the student per row, like dense KD. With k = C it is the dense KL."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    num_classes, k = log_s.shape[1], topk_classes.shape[1]
    log_q = topk_logits.float() / temperature - teacher_lse.float()[:, None]
    q = log_q.exp()
    log_s_top = log_s.gather(1, topk_classes)
    kl = (q * (log_q - log_s_top)).sum(1)
    if k < num_classes:
        r = (1.0 - q.sum(1)).clamp_min(0.0)
        per_class = r / (num_classes - k)
        rest_log_s = log_s.sum(1) - log_s_top.sum(1)
        kl = kl + torch.xlogy(r, per_class) - per_class * rest_log_s
    return kl.mean()


def topk_to_probs(topk_logits: torch.Tensor, topk_classes: torch.Tensor, teacher_lse: torch.Tensor,
                  temperature: float, num_classes: int) -> torch.Tensor:
    """The distribution `kl_topk` stands for, written out: exact top-k probabilities at T, the residual mass
    spread evenly over the other classes. Used where two such distributions must be mixed."""
    q_top = (topk_logits.float() / temperature - teacher_lse.float()[:, None]).exp()
    k = topk_classes.shape[1]
    rest = (1.0 - q_top.sum(1, keepdim=True)).clamp_min(0.0) / max(num_classes - k, 1)
    q = rest.expand(-1, num_classes).clone() if k < num_classes else torch.zeros_like(q_top.expand(-1, num_classes))
    return q.scatter_(1, topk_classes, q_top)


def kl_probs(student_logits: torch.Tensor, q: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(q || p_student_T), `batchmean`, for a target distribution q given as probabilities."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return (torch.xlogy(q, q) - q * log_s).sum(1).mean()


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
