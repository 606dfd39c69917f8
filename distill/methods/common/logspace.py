"""Log-space pieces every method shares (pure functions).

A soft target travels as log-probabilities, so that no loss ever forms `1 - q` from a probability near 1: in float32
that difference loses every digit once q rounds to 1 (a label logit about 17 above the rest at T = 1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def log_softmax_at(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T), in float32 at least."""
    return F.log_softmax(logits.float() / temperature, dim=1)


def kl_rows(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per row from log-probabilities; a class with q = 0 (log q = -inf) adds 0, as 0 log 0 = 0."""
    q = log_q.exp()
    gap = torch.where(q > 0, log_q - log_p, torch.zeros_like(q))  # no nan from -inf - -inf, forward or backward
    return (q * gap).sum(1)


def logsumexp_without(log_x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """log sum_{j != c} x_j per row, c = classes[row]: the mass off one class without forming 1 - x_c. [B, 1]."""
    off = torch.zeros_like(log_x, dtype=torch.bool).scatter_(1, classes.view(-1, 1), True)
    return torch.logsumexp(log_x.masked_fill(off, float("-inf")), 1, keepdim=True)


def log_rest(log_x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """log(1 - x_c) = log sum_{j != c} x_j per row (c = classes[row]), exact at any x_c: log1p(-x_c) while
    x_c <= 1/2, and the logsumexp of the other classes above, where 1 - x_c would cancel. [B, 1]."""
    log_c = log_x.gather(1, classes.view(-1, 1))
    small = log_c <= -math.log(2.0)
    safe = torch.where(small, log_c, torch.full_like(log_c, -1.0))  # keeps the unused branch (and its grad) finite
    return torch.where(small, torch.log1p(-safe.exp()), logsumexp_without(log_x, classes))


def mix(log_q: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """log(lam * q + (1 - lam) * q[perm]): mixup/cutmix of per-sample distributions, in log space."""
    if lam >= 1.0:
        return log_q
    if lam <= 0.0:
        return log_q[perm]
    return torch.logaddexp(log_q + math.log(lam), log_q[perm] + math.log1p(-lam))


ENSEMBLE_RULES = ("mean_probs", "mean_logits")


def ensemble(log_qs: torch.Tensor, weights: torch.Tensor, rule: str) -> torch.Tensor:
    """Several teachers' log-probabilities at T ([K, B, C]) combined into one target, in log space. `mean_probs`:
    log sum_k w_k q_k (the average of their distributions); `mean_logits`: log softmax(sum_k w_k z_k / T), which is
    log softmax(sum_k w_k log q_k), each teacher's log-probabilities differing from its z / T by a per-row constant.
    `weights` [K] are normalised to sum to 1; one teacher is returned as it is (bit for bit)."""
    if log_qs.shape[0] == 1:
        return log_qs[0]
    w = (weights / weights.sum()).to(log_qs).view(-1, 1, 1)
    if rule == "mean_probs":  # a teacher of weight 0 adds exp(-inf) = 0
        return torch.logsumexp(log_qs + w.log(), 0)
    if rule == "mean_logits":
        finite = torch.where(w > 0, log_qs, torch.zeros_like(log_qs))  # 0 * -inf would be nan
        return F.log_softmax((w * finite).sum(0), dim=1)
    raise ValueError(f"unknown ensemble rule {rule!r}; one of {', '.join(ENSEMBLE_RULES)}")
