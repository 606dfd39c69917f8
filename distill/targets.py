"""Where the soft target comes from: the cache or a live teacher, behind one interface.

`probs(batch, x, temperature, standardized)` gives the teacher's distribution over the classes for each sample of
the batch, as dense probabilities. From a live teacher it is the softmax of its logits on the student's very input
`x`. From the cache it is the distribution the cache represents, built exactly: every logit when the cache keeps
them all; otherwise the top k, the true class (and a mixed view's partner class) at their exact probability, and
the remaining mass spread evenly over the other classes. Every loss then works on dense probabilities, so KD, DKD
and logit standardization are exact on that distribution.
"""
from __future__ import annotations

import torch

from distill import losses


class CachedTeacher:
    """Soft labels read with each sample (`ReplayItems`); `temperature` is the T of the cache's logsumexp."""

    sees_mixed_input = False  # the engine's own mixing is folded in by mixing these distributions

    def __init__(self, num_classes: int, dense: bool, temperature: float):
        self.num_classes, self.dense, self.temperature = num_classes, dense, temperature

    def probs(self, batch: dict, x: torch.Tensor | None, temperature: float, standardized: bool) -> torch.Tensor:
        values, classes = batch["kd_logits"].float(), batch["kd_classes"]
        if self.dense:  # every logit is in the cache: any T, standardised or not
            logits = torch.zeros(values.shape[0], self.num_classes, device=values.device).scatter_(1, classes, values)
            return torch.softmax((losses.standardize(logits) if standardized else logits) / temperature, 1)
        if temperature != self.temperature:
            raise ValueError(f"a top-k cache holds T={self.temperature}, not {temperature}")
        known = [(classes, values), (batch["label"].view(-1, 1), batch["kd_target"].float().view(-1, 1))]
        if "kd_partner_target" in batch:
            known.append((batch["partner_label"].view(-1, 1), batch["kd_partner_target"].float().view(-1, 1)))
        mean, std = batch["kd_mean"].float().view(-1, 1), batch["kd_std"].float().view(-1, 1)
        lse = (batch["kd_lse_std"] if standardized else batch["kd_lse"]).float().view(-1, 1)
        q = torch.zeros(values.shape[0], self.num_classes, device=values.device)
        mask = torch.zeros_like(q, dtype=torch.bool)
        for cls, z in known:
            if standardized:
                z = (z - mean) / (std + 1e-7)
            q.scatter_(1, cls, (z / temperature - lse).exp())
            mask.scatter_(1, cls, True)
        rest = (~mask).sum(1, keepdim=True)
        residual = (1.0 - q.sum(1, keepdim=True)).clamp_min(0.0) / rest.clamp_min(1)
        return torch.where(mask, q, residual.expand_as(q))


class LiveTeacher:
    """The teacher run on the student's exact (already mixed) input every step."""

    sees_mixed_input = True

    def __init__(self, model: torch.nn.Module, autocast):
        self.model, self.autocast = model, autocast

    def probs(self, batch: dict, x: torch.Tensor, temperature: float, standardized: bool) -> torch.Tensor:
        with torch.no_grad(), self.autocast():  # no_grad, not inference_mode: the result enters the loss graph
            logits = self.model(x).float()
        return torch.softmax((losses.standardize(logits) if standardized else logits) / temperature, 1)
