"""Where each stage writes and the next one reads: the run folder, and the cache root shared by fingerprint.

    <run_root>/<name>/            the run (or a sweep point's folder)
        teacher/                  stage teacher (or teacher.dir, shared between runs)
        student/  baseline/       stage student
        cache.json                which cache folder this run used
    <cache.root>/<fingerprint>/   stage cache: soft labels, shared by every run with the same settings
"""
from __future__ import annotations

from pathlib import Path

from distill import artifacts, fingerprints
from distill.config import Config


def teacher_dir(cfg: Config, run_dir: Path) -> Path:
    """<run>/teacher, or teacher.dir when runs share one teacher."""
    return Path(cfg.teacher.dir) if cfg.teacher.dir else run_dir / "teacher"


def student_dir(run_dir: Path, baseline: bool = False) -> Path:
    return run_dir / ("baseline" if baseline else "student")


def cache_identity(cfg: Config, bundle, norm: dict, run_dir: Path, precision: str) -> dict:
    """The cache's fingerprint inputs, given the teacher the teacher stage wrote."""
    digest = artifacts.sha256(teacher_dir(cfg, run_dir) / "model.safetensors")
    return fingerprints.cache_identity(cfg, bundle.identity, norm, bundle.num_classes, digest, precision)


def cache_dir(cfg: Config, identity: dict) -> Path:
    """The folder of the cache with these fingerprint inputs (whether or not it exists yet)."""
    return Path(cfg.cache.root) / artifacts.fingerprint(identity)
