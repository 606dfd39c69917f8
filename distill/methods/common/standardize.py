"""Logit standardization (Sun et al., CVPR 2024), `kd.logit_standardization=true`: not a method of its own but a
transform of teacher and student logits before any method that allows it (`Method.standardizable`).

Each row is z-scored, `(z - mean) / (std + 1e-7)` with the unbiased std, as the authors' code does; T is then the
"base temperature" (their CIFAR setting: 2). The authors' KD + standardization on CIFAR-100 (`--logit-stand
--base-temp 2 --kd-weight 9` on mdistiller's KD, whose CE weight is 0.1) is `kd.logit_standardization=true
kd.temperature=2 kd.alpha=9 kd.ce_weight=0.1` here.
"""
from __future__ import annotations

import torch


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each row z-scored: (z - mean) / (std + eps), std unbiased; float32 at least."""
    z = logits.float()
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + eps)
