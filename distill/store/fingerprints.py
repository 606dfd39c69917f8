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
from distill.store.records import Normalization
from distill.config import Config
from distill.data.identity import DataIdentity
from distill.store.softlabels import CacheIdentity, LogitsKept


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
    """The settings that change `output`, by dotted key; a `when_set` one (fields.setting) only when not at its
    default."""
    defaults = {key: f.default for key, f, _ in config.leaves() if f.metadata.get("when_set")}
    return {key: _get(cfg, key) for key, outputs in tags().items() if outputs and output in outputs
            and not (key in defaults and _get(cfg, key) == defaults[key])}


def parts(inputs: dict) -> dict[str, str]:
    """Each part of a fingerprint's inputs hashed alone: stored beside the fingerprint (meta.json's `inputs`), so
    that an output the current settings would not make can say which part differs (freshness.py)."""
    return {part: files.fingerprint(value) for part, value in inputs.items()}


def teacher_inputs(cfg: Config, identity: DataIdentity, norm: Normalization) -> dict:
    """What the teacher's fingerprint hashes: its settings, the data's identity and the normalization."""
    inputs = settings(cfg, "teacher")
    if cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).is_file():  # what the file holds, not its path
        inputs["teacher.checkpoint"] = files.sha256(Path(cfg.teacher.checkpoint))
    return {"settings": inputs, "data": identity.to_json(), "norm": norm.to_json()}


def teacher(cfg: Config, identity: DataIdentity, norm: Normalization) -> str:
    return files.fingerprint(teacher_inputs(cfg, identity, norm))


def kept(cfg: Config, num_classes: int) -> LogitsKept:
    """What the cache these settings make keeps of each view's logits (dense or top-k, the label temperature)."""
    return LogitsKept(cfg.cache.topk, num_classes, cfg.kd.temperature)


def cache_identity(cfg: Config, identity: DataIdentity, norm: Normalization, num_classes: int,
                   teacher_sha256: str) -> CacheIdentity:
    """Everything the cached bytes depend on (its hash names the cache folder): the teacher's weights, the data,
    the normalization and the settings tagged `cache`, cache.topk and kd.temperature as the bytes use them."""
    normalised = {"cache.topk", "kd.temperature"}  # held by `kept`, written by CacheIdentity.to_json
    others = {key: value for key, value in settings(cfg, "cache").items() if key not in normalised}
    return CacheIdentity(teacher_sha256, identity, norm, kept(cfg, num_classes), others)


def student_source(sources: list[str]) -> str:
    """A KD student's `source` from what each teacher gives (its cache folder's name, or its weights' sha256), as
    the student's fingerprint hashes it: one teacher's as it is, several teachers' the hash of their list."""
    return sources[0] if len(sources) == 1 else files.fingerprint(sources)


def student_inputs(cfg: Config, identity: DataIdentity, norm: Normalization, source: str, baseline: bool) -> dict:
    """What a student's fingerprint hashes. `source`: the cache's fingerprint or the teacher's weights (KD student;
    an ensemble's: the hash of its teachers' list); empty for the CE baseline."""
    return {"settings": settings(cfg, "baseline" if baseline else "student"), "data": identity.to_json(),
            "norm": norm.to_json(), "source": source}


def student(cfg: Config, identity: DataIdentity, norm: Normalization, source: str, baseline: bool) -> str:
    return files.fingerprint(student_inputs(cfg, identity, norm, source, baseline))
