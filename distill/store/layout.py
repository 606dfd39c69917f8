"""Where each stage writes and the next one reads: the run folder, and the cache root shared by fingerprint.

    <run_root>/<name>/            the run (or a sweep point's folder)
        teacher/                  stage teacher (or teacher.dir, shared between runs)
        student/  baseline/       stage student
        teachers/NAME/            an ensemble's teacher NAME (teachers=[...]; or its own dir)
        cache.json                which cache folder this run used (cache-NAME.json: teacher NAME's)
        data_stats.json           the training split's channel mean/std, when the recipe gives none
    <cache.root>/<fingerprint>/   stage cache: soft labels, shared by every run with the same settings
"""
from __future__ import annotations

import logging
from pathlib import Path

from distill import data, files
from distill.config import Config, DataCfg
from distill.errors import DataError
from distill.store.softlabels import CacheIdentity
from distill.store.records import CacheRun, Meta, Normalization

log = logging.getLogger("distill")


ONE_TEACHER = "teacher"  # the name of the one teacher (the `teacher` section); an ensemble's are named in `teachers`


def named(output: str, teacher: str, sep: str = "-") -> str:
    """Teacher `teacher`'s `output` as the report, the records, the logs and the errors name it: `output` for the
    one teacher, output<sep>NAME for an ensemble's teacher NAME (teacher-a, cache-a, "teacher a")."""
    return output if teacher == ONE_TEACHER else f"{output}{sep}{teacher}"


def distilled(rows) -> str | None:
    """Of the report's rows (their names), the one of what the student learns from: its teachers combined. That is
    the `ensemble` row, scored for several teachers; one teacher's combination is that teacher (its own row, as
    targets.Ensemble passes it through). None when the row is not shown (a teacher not current)."""
    combined = ["ensemble"] if "ensemble" in rows else [name for name in rows if name.startswith("teacher")]
    return combined[0] if len(combined) == 1 else None


def teacher_dir(cfg: Config, run_dir: Path) -> Path:
    """The folder of `cfg.teacher`: its `dir` (a teacher's context always names it, RunContext.teachers; runs may
    share one), else <run>/teacher."""
    return Path(cfg.teacher.dir) if cfg.teacher.dir else run_dir / "teacher"


def default_teacher_dir(run_dir: Path, teacher: str) -> Path:
    """Where teacher `teacher` trains when its section names no `dir`: <run>/teacher for the one teacher,
    <run>/teachers/NAME for an ensemble's teacher NAME."""
    return run_dir / "teacher" if teacher == ONE_TEACHER else run_dir / "teachers" / teacher


def student_dir(run_dir: Path, baseline: bool = False) -> Path:
    return run_dir / ("baseline" if baseline else "student")


def require_trained(folder: Path, needed_by: str, what: str) -> Meta:
    """The meta.json of the model stage `what` trained into `folder`; a missing one stops the run in one line
    naming the stage that makes it, one changed since it was written in one line saying so."""
    meta = Meta.in_folder(folder)
    if meta is None:
        raise DataError(f"{needed_by}: no trained {what} in {folder}; run stage={what} first")
    if not meta.sealed:
        raise DataError(files.changed(needed_by, folder / "meta.json", f"delete {folder} and run stage={what} to "
                                      "remake it"))
    return meta


def cache_record(teacher: str) -> str:
    """The file beside the run that says which cache teacher `teacher` labelled for it: cache.json for the one
    teacher, cache-NAME.json for an ensemble's teacher NAME."""
    return named("cache", teacher) + ".json"


def read_cache_record(record: Path) -> CacheRun | None:
    """A run's record of its cache (cache_record), sealed; None when there is none."""
    return CacheRun.read(record, "cache", "delete it and run stage=cache to write it again")


def cache_dir(cfg: Config, identity: CacheIdentity) -> Path:
    """The folder of the cache with this identity (whether or not it exists yet): named by its hash."""
    return Path(cfg.cache.root) / identity.folder_name()


def normalization(cfg: DataCfg, bundle: data.DataBundle, record: Path | None = None) -> Normalization:
    """Mean/std from the recipe, or computed once from the training split (eval view, first `stats_images`
    images) and recorded in `record`, keyed by the split's identity (content and rows) so a later run reads it back."""
    if cfg.per_image_norm:
        return Normalization(per_image=True)
    if cfg.mean is not None:
        return Normalization(tuple(cfg.mean), tuple(cfg.std))
    key = files.fingerprint([bundle.identity.content, bundle.identity.train, cfg.image_size, cfg.transform,
                             cfg.crop_pct, cfg.stats_images])
    saved = files.read_sealed(record, "data", "delete it to compute the statistics again") if record else None
    if saved and saved.get("key") == key:
        return Normalization.from_json(saved["normalization"])
    subset = bundle.images["train"].subset(min(cfg.stats_images, len(bundle.train)))
    ds = data.ImageDataset(subset, cfg, train=False, skip_bad=True, pixels=True)
    mean, std = data.channel_stats(data.make_loader(ds, 256, False, cfg.num_workers, 0))
    norm = Normalization(tuple(mean), tuple(std))
    log.info(f"data: computed mean {mean} std {std} from {len(subset)} training images")
    if record:
        record.parent.mkdir(parents=True, exist_ok=True)
        files.write_sealed(record, {"key": key, "normalization": norm.to_json()})
    return norm
