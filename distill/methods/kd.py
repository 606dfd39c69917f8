"""KD (Hinton et al. 2015), `kd.loss=kd`: the KL divergence from the teacher's distribution at T to the student's.

    kd   = KL(q_T || p_T) * T^2, the batch mean of each sample's KL (PyTorch's `batchmean`), T^2 keeping the
           gradient's scale independent of T;
    loss = kd.

In the student's objective: kd.alpha * kd + w_ce * CE, w_ce = kd.ce_weight (null: 1 - kd.alpha). The common CIFAR
settings (CRD, mdistiller: T 4, KD weight 0.9, CE weight 0.1) are kd.temperature=4 kd.alpha=0.9; mdistiller's KD
config (CE 0.1, KD 9) is kd.alpha=9 kd.ce_weight=0.1.
"""
from __future__ import annotations

import torch

from distill.errors import ConfigError
from distill.methods import Method
from distill.methods.common.logspace import kl_rows, log_softmax_at
from distill.registry import METHODS


def from_log_probs(student_logits: torch.Tensor, log_q: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(q || p_student_T) per sample, q given as log-probabilities (no T^2)."""
    return kl_rows(log_q, log_softmax_at(student_logits, temperature))


def kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """Hinton's KD term: {"kd", "loss"}, both the batch mean of KL(softmax(teacher / T) || softmax(student / T))
    times T^2. No CE term: add your own, weighted as you like."""
    term = from_log_probs(student_logits, log_softmax_at(teacher_logits, temperature), temperature).mean()
    term = term * temperature ** 2
    return {"kd": term, "loss": term}


@METHODS.register("kd")
class KD(Method, balanceable=True, cite="Hinton et al. 2015",
         help="kd.alpha * KL(q_T || p_T) * T^2 + w_ce * CE"):
    """kd.loss=kd: the module docstring gives the formula and the authors' settings. No settings section of its
    own: kd.alpha, kd.ce_weight and kd.temperature are the generic kd keys."""
    def card_line(self, kd_cfg) -> str:
        return f"KD ({self.cite}), alpha {kd_cfg.alpha}"

    def active(self, kd_cfg) -> bool:
        """With kd.alpha 0 there is nothing to distil: CE alone, no teacher asked."""
        return kd_cfg.alpha > 0

    def ce_weight(self, kd_cfg) -> float:
        """Hinton's 1 - alpha."""
        return 1.0 - kd_cfg.alpha

    def check(self, kd_cfg) -> None:
        """kd.alpha above 1 needs an explicit kd.ce_weight (1 - alpha would be negative); then the common checks."""
        if kd_cfg.alpha > 1 and kd_cfg.ce_weight is None:
            raise ConfigError(f"kd.ce_weight: needed when kd.alpha ({kd_cfg.alpha}) is above 1 (its default is "
                              "1 - alpha)")
        super().check(kd_cfg)

    def __call__(self, student_logits, log_q, batch, kd_cfg, epoch) -> dict[str, torch.Tensor]:
        temperature = kd_cfg.temperature
        term = from_log_probs(student_logits, log_q, temperature).mean() * temperature ** 2
        return {"kd": term, "loss": kd_cfg.alpha * term}
