"""Checks that need the libraries but no work: run before the first stage, so that a bad model name or tracker
stops the run in one line instead of after the teacher trained and the cache was built."""
from __future__ import annotations

import difflib

import timm

from distill.training import models  # also registers the CIFAR ResNets, so their names are timm names
from distill.config import Config, teacher_sections
from distill.errors import ConfigError


def check_model(name: str, key: str, pretrained: bool = False) -> None:
    """`name` must be a timm model; with `pretrained`, one that timm has hub weights for (nothing is fetched).
    Names timm resolves when loading (`hf-hub:...`, `local-dir:...`) are left to the load."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else "; see timm.list_models()"
        raise ConfigError(f"{key}: '{name}' is not a timm model name{hint}")
    if pretrained and not timm.list_pretrained(name if "." in name else name + ".*"):
        raise ConfigError(f"{key}: timm has no pretrained weights for '{name}'; set teacher.checkpoint=FILE, or "
                          "teacher.source=train")


def check_tracker(name: str | None) -> None:
    """A tracker asked for must be installed: accelerate would otherwise warn once and log nothing."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    if name is None or name == "all":
        return
    if name not in LOGGER_TYPE_TO_CLASS:
        raise ConfigError(f"log_with: '{name}' is not an accelerate tracker ({', '.join(LOGGER_TYPE_TO_CLASS)})")
    if name not in get_available_trackers():
        extra = " (or pip install -e '.[tensorboard]')" if name == "tensorboard" else ""
        raise ConfigError(f"log_with: the {name} tracker is not installed; pip install {name}{extra}")


def before_data(cfg: Config) -> None:
    for key, teacher in teacher_sections(cfg).items():  # the teacher, or each of an ensemble
        hub_weights = teacher.source == "timm" and teacher.pretrained and not teacher.checkpoint
        check_model(teacher.model, f"{key}.model", hub_weights)
    check_model(cfg.student.model, "student.model")
    if cfg.kd.token and not models.has_distillation_head(cfg.student.model, cfg.student.model_args):
        raise ConfigError(f"kd.token: student.model={cfg.student.model} has no distillation head; timm's models "
                          f"with one: {', '.join(models.distilled_models())}")
    check_features(cfg)
    check_tracker(cfg.log_with)
    if cfg.export.hub_repo and cfg.stage in ("export", "all"):  # found before the pipeline, not after it
        from distill.stages import export
        problem = export.hub_problem()
        if problem:
            raise ConfigError(f"export.hub_repo: {problem}; fix that, or drop export.hub_repo (checked before any "
                              "work)")


def _pooled_problem(name: str, model_args: dict | None = None) -> str | None:
    """Why timm cannot give the pooled pre-logit feature of model `name` (None: it can, or the name is one timm
    resolves only when loading, which the cache stage checks)."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return None
    return models.feature_problem(models.architecture(name, 2, model_args))


def check_features(cfg: Config) -> None:
    """Feature distillation needs the pooled feature of the student and of the teacher (timm's forward_features
    and forward_head(pre_logits=True)); a feature cache, the teacher's."""
    wanted = {}
    if cfg.kd.feature_weight > 0:
        wanted["kd.feature_weight"] = [("student.model", cfg.student.model, cfg.student.model_args)]
    if cfg.kd.feature_weight > 0 or cfg.cache.features:
        key = "kd.feature_weight" if cfg.kd.feature_weight > 0 else "cache.features"
        wanted.setdefault(key, []).extend((f"{k}.model", t.model, None) for k, t in teacher_sections(cfg).items())
    for key, found in wanted.items():
        for which, name, args in found:
            problem = _pooled_problem(name, args)
            if problem:
                raise ConfigError(f"{key}: timm cannot give the pooled pre-logit feature of {which}={name} "
                                  f"({problem}); feature distillation needs forward_features and "
                                  "forward_head(pre_logits=True)")


def after_data(cfg: Config, num_images: int, num_classes: int) -> None:
    """Checks that need the data's size but no work: a cache over cache.max_gb stops before the teacher trains."""
    from distill.stages import cache

    if cfg.stage == "teacher" or (cfg.kd.teacher == "online" and cfg.stage != "cache"):
        return  # no cache is made
    dtype = cache.record_dtype(cfg, num_classes)
    for key, teacher in teacher_sections(cfg).items():
        width = None
        if cfg.cache.features:
            if teacher.model.startswith(("hf-hub:", "local-dir:")):
                continue  # its width is known once loaded: the cache stage checks it then
            width = models.feature_width(models.architecture(teacher.model, num_classes))
        problem = cache.too_big(cfg, num_images, dtype, width, key.split(".", 1)[-1])
        if problem:
            raise ConfigError(problem)
