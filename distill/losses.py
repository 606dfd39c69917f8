"""Loss functions (pure): cross-entropy against a per-sample target distribution."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target_c * log softmax(logits)_c; target rows sum to 1."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
