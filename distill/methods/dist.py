"""DIST (Huang et al., NeurIPS 2022), `kd.loss=dist`: match relations, not values, between the student's and the
teacher's class distributions at tau = T (p = softmax(student / T), q = softmax(teacher / T)):

    inter = (1 - mean over samples of pearson(p_i, q_i)) * T^2     (each sample's distribution over the classes)
    intra = (1 - mean over classes of pearson(p_:c, q_:c)) * T^2   (each class's column over the batch)
    loss  = beta * inter + gamma * intra.

The Pearson correlation is the authors' (cosine of the centred vectors, 1e-8 added to the product of norms). It
takes probabilities, which a confident teacher does not spoil (no 1 - q). In the student's objective: w_ce * CE +
loss, w_ce = kd.ce_weight (null: 1). The authors' CIFAR-100 setting (beta = gamma = 2, tau = 4, CE weight 1) is
kd.dist.beta=2 kd.dist.gamma=2 kd.temperature=4; ImageNet: beta = gamma = 1, tau = 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.fields import MAX_WEIGHT, STUDENT, setting
from distill.methods import Method
from distill.methods.common.logspace import log_softmax_at
from distill.registry import METHODS


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - the mean over rows of the Pearson correlation between rows of a and b."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return 1.0 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)).mean()


def from_log_probs(student_logits: torch.Tensor, log_q: torch.Tensor, temperature: float):
    """(inter, intra), without T^2; log_q: the teacher's log-probabilities at T."""
    p, q = log_softmax_at(student_logits, temperature).exp(), log_q.exp()
    return _pearson_distance(p, q), _pearson_distance(p.t(), q.t())


def _terms(student_logits, log_q, temperature: float, beta: float, gamma: float) -> dict[str, torch.Tensor]:
    inter, intra = from_log_probs(student_logits, log_q, temperature)
    inter, intra = inter * temperature ** 2, intra * temperature ** 2
    return {"inter": inter, "intra": intra, "loss": beta * inter + gamma * intra}


def dist(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, beta: float,
         gamma: float) -> dict[str, torch.Tensor]:
    """DIST's two relations: {"inter", "intra"} (each times T^2; inter averages over the batch's samples, intra
    over the classes) and "loss" = beta * inter + gamma * intra. No CE term (add your own)."""
    return _terms(student_logits, log_softmax_at(teacher_logits, temperature), temperature, beta, gamma)


@dataclass
class DISTSettings:
    """kd.dist: DIST's own settings (tau is kd.temperature)."""
    beta: float = setting(2.0, doc="weight of the inter-class relation (DIST's CIFAR setting 2; tau is "
                                   "kd.temperature, 4 on CIFAR)", ge=0, le=MAX_WEIGHT, changes=STUDENT)
    gamma: float = setting(2.0, doc="weight of the intra-class relation (DIST's CIFAR setting 2)", ge=0,
                           le=MAX_WEIGHT, changes=STUDENT)


@METHODS.register("dist")
class DIST(Method, standardizable=False, settings=DISTSettings, cite="Huang et al. 2022",
           help="w_ce * CE + (kd.dist.beta * inter + kd.dist.gamma * intra) * T^2, Pearson relations"):
    """kd.loss=dist: the module docstring gives the formula and the authors' settings; reads the teacher's
    distribution at T."""
    def card_line(self, kd_cfg) -> str:
        return f"DIST ({self.cite}), beta {kd_cfg.dist.beta}, gamma {kd_cfg.dist.gamma}"

    def __call__(self, student_logits, log_q, batch, kd_cfg, epoch) -> dict[str, torch.Tensor]:
        return _terms(student_logits, log_q, kd_cfg.temperature, kd_cfg.dist.beta, kd_cfg.dist.gamma)
