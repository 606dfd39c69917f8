"""teacher.source=timm: a timm model with weights, from a local checkpoint file (teacher.checkpoint) or the hub
(teacher.pretrained), fine-tuned for teacher.finetune.epochs (needed when its classes are not the data's)."""
from __future__ import annotations

import logging

from torch import nn

from distill.config import TeacherCfg
from distill.errors import ConfigError
from distill.registry import TEACHER_SOURCES
from distill.training import models

log = logging.getLogger("distill")


@TEACHER_SOURCES.register("timm", help="hub weights or a local checkpoint file")
def build(teacher: TeacherCfg, num_classes: int, key: str) -> tuple[nn.Module, int, float]:
    """The loaded model, to fine-tune teacher.finetune.epochs at teacher.finetune.lr; a model whose classifier was
    reset (other classes than the data's) with no fine-tuning stops in one line naming `key`'s setting."""
    if teacher.checkpoint:
        model, reset = models.load_file(teacher.model, teacher.checkpoint, num_classes, teacher.drop_rate,
                                        f"{key}.checkpoint")
        origin = teacher.checkpoint
    else:
        model = models.create(teacher.model, num_classes, teacher.drop_rate, pretrained=teacher.pretrained)
        reset, origin = model.pretrained_cfg.get("num_classes") != num_classes, f"timm hub ({teacher.model})"
    if reset and teacher.finetune.epochs == 0:
        raise ConfigError(f"{key}.finetune.epochs: the teacher from {origin} has another class count than the "
                          f"data ({num_classes}); its new classifier needs fine-tuning (set teacher.finetune.epochs)")
    log.info(f"teacher: loaded {teacher.model} from {origin}")
    return model, teacher.finetune.epochs, teacher.finetune.lr
