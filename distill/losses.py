"""The public loss API: call these from your own training loop, as you would timm's or torchdistill's losses.

    kd(student_logits, teacher_logits, temperature)
    dkd(student_logits, teacher_logits, labels, temperature, alpha, beta)
    dist(student_logits, teacher_logits, temperature, beta, gamma)
    hard(student_logits, teacher_logits, smoothing)   # DeiT's hard distillation: CE to the teacher's top-1 class
    standardize(logits)                      # logit standardization's z-score (Sun et al. 2024)
    feature_mse(student, teacher)            # feature distillation (timm's), on pooled features [B, D]
    feature_cosine(student, teacher)         # 1 - cosine similarity, batch mean

Each distillation function (kd, dkd, dist, hard) returns a dict of scalar tensors: the method's terms as its paper
defines them (batch means; kd's, dkd's and dist's already multiplied by T^2) and `loss`, their weighted sum, with no
CE term and no warm-up. feature_mse and feature_cosine return one scalar tensor, standardize the z-scored logits.
They are the same functions the stages train with (one implementation per method, in distill/methods/), computed in
log space so that they stay exact for a teacher of any confidence. Also here: the hard-label losses the objectives
use.
"""
from __future__ import annotations

from distill.methods.dist import dist
from distill.methods.dkd import dkd
from distill.methods.common.feature import feature_cosine, feature_mse
from distill.methods.hard import hard
from distill.methods.common.crossentropy import combine, focal, soft_cross_entropy
from distill.methods.kd import kd
from distill.methods.common.standardize import standardize

__all__ = ["kd", "dkd", "dist", "hard", "standardize", "feature_mse", "feature_cosine", "soft_cross_entropy", "focal",
           "combine"]
