"""Hard-label distillation (DeiT's hard distillation, Touvron et al. 2021, for any student), `kd.loss=hard`: the
cross-entropy against the teacher's top-1 class on each view, optionally smoothed.

    hard = CE(p, smooth_eps(argmax_c q_c)), eps = kd.hard.smoothing (the student's logits at T = 1: the
           teacher's class does not depend on T, so T plays no part);
    loss = kd.alpha * hard.

In the student's objective: kd.alpha * hard + w_ce * CE on the true label, w_ce = kd.ce_weight (null: 1 - kd.alpha).
The authors' settings (DeiT's hard distillation averages the two cross-entropies): kd.alpha=0.5, no smoothing. From
the cache the teacher's class is exact at any cache.topk (the top one is always stored). With the student's own
mixup/cutmix of plain cached views the class is the argmax of the mixed distribution (an approximation of the
teacher's answer on the mixed image; exact online, or with mixed views in the cache).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.fields import STUDENT, setting
from distill.methods.kd import KD
from distill.registry import METHODS


def from_log_probs(student_logits: torch.Tensor, log_q: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The batch mean of CE(student, the teacher's top-1 class) smoothed by `smoothing`; q as log-probabilities."""
    return F.cross_entropy(student_logits.float(), log_q.argmax(1), label_smoothing=smoothing)


def hard(student_logits: torch.Tensor, teacher_logits: torch.Tensor, smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """DeiT's hard-distillation term: {"hard", "loss"}, both the batch mean of the cross-entropy against the
    teacher's top-1 class (label-smoothed by `smoothing`). No CE on the true labels: add your own."""
    term = from_log_probs(student_logits, teacher_logits.float(), smoothing)
    return {"hard": term, "loss": term}


@dataclass
class HardSettings:
    """kd.hard: hard-label distillation's own settings."""
    smoothing: float = setting(0.0, doc="label smoothing of the teacher's top-1 class (DeiT: 0)", ge=0, lt=1,
                               changes=STUDENT)


@METHODS.register("hard")
class Hard(KD, balanceable=True, standardizable=False, settings=HardSettings, target="class",
           token="hard", cite="DeiT, Touvron et al. 2021",
           help="kd.alpha * CE(p, teacher's top-1 class) + w_ce * CE, hard-label distillation"):
    """kd.loss=hard (and the distillation head's method under kd.token=hard): the module docstring gives the
    formula; kd.alpha, its CE weight and checks are KD's."""
    def card_line(self, kd_cfg) -> str:
        return f"hard-label distillation ({self.cite}), alpha {kd_cfg.alpha}, smoothing {kd_cfg.hard.smoothing}"

    def __call__(self, student_logits, log_q, batch, kd_cfg, epoch) -> dict[str, torch.Tensor]:
        term = from_log_probs(student_logits, log_q, kd_cfg.hard.smoothing)
        return {"hard": term, "loss": kd_cfg.alpha * term}
