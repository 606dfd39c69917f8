"""Where the soft target comes from: the cache or a live teacher, behind one interface.

`log_probs(batch, x, temperature, standardized)` gives the teacher's log-probabilities over the classes at T for
each sample of the batch; every method takes its target in log space (distill/methods/), so no probability near 1
is ever subtracted from 1. From a live teacher it is the log softmax of its logits on the student's very input `x`.
From the cache it is the distribution the cache represents, built exactly from what it stores: every logit when the
cache keeps them all; otherwise the top k, the true class (and a mixed view's partner class) at their exact
probability, and the tail's mass, stored as its own logsumexp, spread evenly over the other classes. The teachers,
one or several, are one `Ensemble`, which combines their log-probabilities in log space.
"""
from __future__ import annotations

import torch

from distill.data.batch import BatchError, ReplayBatch, TeacherRecord, ViewBatch
from distill.methods.common.logspace import ensemble, log_softmax_at
from distill.methods.common.standardize import standardize

STD_EPS = 1e-7  # standardize()'s epsilon, applied here to the stored mean and std


class CachedTeacher:
    """Soft labels read with each sample (`ReplayItems`, a data.ReplayBatch's `teachers`); `temperature` is the T of
    a top-k cache's logsumexps."""

    sees_mixed_input = False  # the engine's own mixing is folded in by mixing these distributions

    def __init__(self, num_classes: int, dense: bool, temperature: float, index: int = 0,
                 feature_dim: int | None = None):
        self.num_classes, self.dense, self.temperature = num_classes, dense, temperature
        self.index = index  # which of the batch's teacher records is this teacher's (an ensemble's order)
        self.feature_dim = feature_dim  # the width of the cached pooled features (None: the cache has none)

    def record(self, batch: ReplayBatch) -> TeacherRecord:
        """This teacher's soft labels of the batch's views; raises BatchError when the batch carries none."""
        if not isinstance(batch, ReplayBatch) or self.index >= len(batch.teachers):
            raise BatchError(f"cached teacher {self.index} needs its soft labels in the batch, which carries "
                             f"{len(getattr(batch, 'teachers', []))} teachers' (a ReplayBatch of student.ReplayItems)")
        return batch.teachers[self.index]

    def feature(self, batch: ReplayBatch, x: torch.Tensor | None) -> torch.Tensor:
        """The teacher's pooled feature of each sample's view, read from the cache with the sample (fp16 stored);
        raises BatchError when the batch carries none (ReplayItems without features)."""
        taught = self.record(batch).feature
        if taught is None:
            raise BatchError(f"cached teacher {self.index}'s soft labels carry no pooled feature (ReplayItems with "
                             "features=True reads them)")
        return taught.float()

    def log_probs(self, batch: ReplayBatch, x: torch.Tensor | None, temperature: float,
                  standardized: bool) -> torch.Tensor:
        """The teacher's log-probabilities at T per sample, rebuilt from the record each sample brought along."""
        record = self.record(batch)
        values, classes = record.logits.float(), record.classes
        if self.dense:  # every logit is in the cache: any T, standardised or not
            logits = torch.zeros(values.shape[0], self.num_classes, device=values.device).scatter_(1, classes, values)
            return log_softmax_at(standardize(logits) if standardized else logits, temperature)
        if temperature != self.temperature:
            raise ValueError(f"a top-k cache holds T={self.temperature}, not {temperature}")
        z = torch.zeros(values.shape[0], self.num_classes, device=values.device).scatter_(1, classes, values)
        own = [(batch.label, record.target)]  # fp32, written over their fp16 copy when in the top k
        if batch.mixed is not None:  # a ReplayBatch's mixed views come with every record's partner_target
            own.append((batch.mixed.label, record.partner_target))
        for cls, logit in own:
            z.scatter_(1, cls.view(-1, 1), logit.float().view(-1, 1))
        known = torch.zeros_like(z, dtype=torch.bool).scatter_(1, classes, True)
        for cls, _ in own:
            known.scatter_(1, cls.view(-1, 1), True)
        if standardized:  # with every class stored, z-score the stored values themselves (as a dense cache does);
            # otherwise with the teacher's fp32 mean and std, fp16's error on a logit growing by |z| / std
            complete = known.all(1, keepdim=True)
            mean = torch.where(complete, z.mean(1, keepdim=True), record.mean.float().view(-1, 1))
            std = torch.where(complete, z.std(1, keepdim=True), record.std.float().view(-1, 1))
            z = (z - mean) / (std + STD_EPS)
        a = (z / temperature).masked_fill(~known, float("-inf"))
        tail = (record.lse_std_rest if standardized else record.lse_rest).float().view(-1, 1)
        log_total = torch.logaddexp(torch.logsumexp(a, 1, keepdim=True), tail)
        per_tail_class = tail - torch.log((~known).sum(1, keepdim=True).clamp_min(1).float())
        return torch.where(known, a, per_tail_class) - log_total


class LiveTeacher:
    """The teacher run on the student's exact (already mixed) input every step."""

    sees_mixed_input = True

    def __init__(self, model: torch.nn.Module, autocast, feature_dim: int | None = None):
        self.model, self.autocast = model, autocast
        self.feature_dim = feature_dim  # set when `model` is a models.PooledTeacher: it answers (logits, feature)
        self._last = None  # with features, (input, answer): a step's logits and feature come from one forward

    def _answer(self, x: torch.Tensor):
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        with torch.no_grad(), self.autocast():  # no_grad, not inference_mode: the result enters the loss graph
            answer = self.model(x)
        self._last = (x, answer) if self.feature_dim else None  # logits only: nothing kept past the step
        return answer

    def log_probs(self, batch: ViewBatch, x: torch.Tensor, temperature: float, standardized: bool) -> torch.Tensor:
        """The teacher's log-probabilities at T on the student's very input `x`."""
        answer = self._answer(x)
        logits = (answer[0] if self.feature_dim else answer).float()
        return log_softmax_at(standardize(logits) if standardized else logits, temperature)

    def feature(self, batch: ViewBatch, x: torch.Tensor) -> torch.Tensor:
        """The teacher's pooled pre-logit feature of the student's very input `x`."""
        return self._answer(x)[1].float()


class Ensemble:
    """The teachers (CachedTeacher or LiveTeacher each, one or several) as the one target the student learns: their
    log-probabilities at T combined per sample by `rule` with `weights` (logspace.ensemble: mean_probs or
    mean_logits). The combination of one teacher is that teacher's own, passed through bit for bit."""

    def __init__(self, teachers: list, weights: list[float] | None, rule: str):
        self.teachers, self.rule = teachers, rule
        self.weights = torch.tensor(weights if weights is not None else [1.0] * len(teachers), dtype=torch.float64)
        self.sees_mixed_input = teachers[0].sees_mixed_input

    @property
    def feature_dim(self) -> int | None:
        """The width of the teacher's pooled feature (None: it gives none). Feature distillation learns one
        teacher's feature: config.py refuses kd.feature_weight with several."""
        return self.teachers[0].feature_dim

    def feature(self, batch: ViewBatch, x: torch.Tensor | None) -> torch.Tensor:
        """The teacher's pooled feature of each sample's view (feature_dim: one teacher's)."""
        return self.teachers[0].feature(batch, x)

    def log_probs(self, batch: ViewBatch, x: torch.Tensor | None, temperature: float,
                  standardized: bool) -> torch.Tensor:
        """The combined target's log-probabilities at T."""
        parts = [t.log_probs(batch, x, temperature, standardized) for t in self.teachers]
        if len(parts) == 1:  # one distribution combined is itself: logspace.ensemble would round it
            return parts[0]
        return ensemble(torch.stack(parts), self.weights, self.rule)
