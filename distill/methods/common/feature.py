"""Feature distillation on pooled pre-logit features (timm's feature task, FeatureDistillationTask): the student's
pooled feature, through a learned linear projection when its width differs from the teacher's, is pulled to the
teacher's. Not a `kd.loss`: it is added to any of them with its own weight (`kd.feature_weight`), so this file
registers no method (methods/__init__.py lists it among the helpers).

    mse:    mean over batch and feature dimensions of (s - t)^2       (timm's F.mse_loss)
    cosine: mean over the batch of 1 - s.t / (|s| |t|)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FEATURE_LOSSES = ("mse", "cosine")


def feature_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the (projected) student features and the teacher's, [B, D] each."""
    return F.mse_loss(student.float(), teacher.float())


def feature_cosine(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean of 1 - cosine similarity per sample (scale-free: only the feature's direction is taught)."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=1, eps=eps)).mean()


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """`kind` (mse | cosine) between the student's projected features and the teacher's."""
    if kind == "mse":
        return feature_mse(student, teacher)
    if kind == "cosine":
        return feature_cosine(student, teacher)
    raise ValueError(f"feature loss {kind!r} is not one of {', '.join(FEATURE_LOSSES)}")


def mix_features(features: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """lam * f + (1 - lam) * f[perm]: the student's mixup/cutmix applied to cached features (an approximation of
    the teacher's feature of the mixed image, as for cached logits; exact with online or cache.mix)."""
    if lam >= 1.0:
        return features
    return lam * features + (1.0 - lam) * features[perm]
