"""The fingerprint of each output (teacher, cache, student, baseline), built from the schema's `changes` tags.

Every schema field names the outputs it changes (config.py); an output's fingerprint holds exactly the settings
that name it, plus what is not a setting (the data's identity, the normalization, the teacher's weights). A new
setting therefore enters every fingerprint it should the moment it is declared; tests/test_config.py fails when
a field has no tag.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distill import config, files
from distill.store import softlabels
from distill.store.records import Normalization
from distill.config import Config


def tags() -> dict[str, tuple | None]:
    """Every settable key -> the outputs it changes (None: the field has no tag). A field tagged OWNER changes
    what its nearest enclosing section with its own tag changes (the trick set under `teacher` changes the teacher)."""
    out = {}
    for key, f, sections in config.leaves():
        changes = f.metadata.get("changes")
        for section in sections:  # innermost first
            if changes != config.OWNER:
                break
            changes = section.metadata.get("changes")
        out[key] = None if changes is None or changes == config.OWNER else tuple(changes)
    return out


def _get(cfg: Config, key: str) -> Any:
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def settings(cfg: Config, output: str) -> dict[str, Any]:
    """The settings that change `output`, by dotted key."""
    return {key: _get(cfg, key) for key, outputs in tags().items() if outputs and output in outputs}


def parts(inputs: dict) -> dict[str, str]:
    """Each part of a fingerprint's inputs hashed alone: stored beside the fingerprint (meta.json's `inputs`), so
    that an output the current settings would not make can say which part differs (freshness.py)."""
    return {part: files.fingerprint(value) for part, value in inputs.items()}


def teacher_inputs(cfg: Config, identity: dict, norm: Normalization) -> dict:
    """What the teacher's fingerprint hashes: its settings, the data's identity and the normalization."""
    inputs = settings(cfg, "teacher")
    if cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).is_file():  # what the file holds, not its path
        inputs["teacher.checkpoint"] = files.sha256(Path(cfg.teacher.checkpoint))
    return {"settings": inputs, "data": identity, "norm": norm.to_json()}


def teacher(cfg: Config, identity: dict, norm: Normalization) -> str:
    return files.fingerprint(teacher_inputs(cfg, identity, norm))


def label_temperature(cfg: Config, num_classes: int) -> float:
    """The T at which the cache stores each view's logsumexp: the KD temperature when it keeps only the top k
    (then the student's T must be this one), 1 when it keeps every logit (then the student may use any T)."""
    return 1.0 if cfg.cache.topk >= num_classes else cfg.kd.temperature


def cache_identity(cfg: Config, identity: dict, norm: Normalization, num_classes: int, teacher_sha256: str,
                   precision: str) -> dict:
    """Everything the cached bytes depend on (its hash names the cache folder). Settings are normalised to what
    the bytes use, so that caches that would be byte-identical share one folder."""
    inputs = settings(cfg, "cache") | {"cache.topk": min(cfg.cache.topk, num_classes),
                                  "kd.temperature": label_temperature(cfg, num_classes)}
    return {"format_version": softlabels.FORMAT_VERSION, "teacher_sha256": teacher_sha256, "data": identity,
            "normalization": norm.to_json(), "precision": precision, **inputs}


def student_inputs(cfg: Config, identity: dict, norm: Normalization, source: str, baseline: bool) -> dict:
    """What a student's fingerprint hashes. `source`: the cache's fingerprint or the teacher's weights (KD student;
    an ensemble's: the hash of its teachers' list); empty for the CE baseline."""
    return {"settings": settings(cfg, "baseline" if baseline else "student"), "data": identity,
            "norm": norm.to_json(), "source": source}


def student(cfg: Config, identity: dict, norm: Normalization, source: str, baseline: bool) -> str:
    return files.fingerprint(student_inputs(cfg, identity, norm, source, baseline))
