"""teacher.source=train: the teacher trained from scratch (a timm architecture, initialised by teacher.init)."""
from __future__ import annotations

from torch import nn

from distill.config import TeacherCfg
from distill.registry import TEACHER_SOURCES
from distill.training import models


@TEACHER_SOURCES.register("train", help="from scratch")
def build(teacher: TeacherCfg, num_classes: int, key: str) -> tuple[nn.Module, int, float]:
    """The untrained model, to train teacher.epochs at teacher.optim.lr. `key`: the teacher's section (unused)."""
    model = models.create(teacher.model, num_classes, teacher.drop_rate)
    models.init_weights(model, teacher.init, teacher.zero_gamma)
    return model, teacher.epochs, teacher.optim.lr
