"""Which stage outputs on disk the current settings would make: the report, summary.json, the test scores, the
ensemble's row and the model card show those alone. Every other output found in the run's folders is named stale,
with what differs and the stage that refreshes it, and no number of it is shown or compared.

A model is current when its meta.json is sealed (not edited since it was written) and its fingerprint is the one the
current settings give (fingerprints.py); a cache when this run's record of it (cache.json) names the folder the
current teacher and cache settings give, and that folder is complete; a student when, besides, its teachers are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from distill import files
from distill.stages import student
from distill.store import fingerprints, layout, softlabels
from distill.store.records import CacheRun, Meta
from distill.training.context import RunContext

_PARTS = {"settings": "with other {what} settings", "data": "with other data", "norm": "with another normalization"}


@dataclass(frozen=True)
class Output:
    """One output found on disk: its folder, its record (a model's meta.json; a cache's record beside the run) and
    why the current settings would not make it, with the stage that refreshes it (None: they would)."""
    folder: Path
    record: Meta | CacheRun
    stale: str | None = None


@dataclass
class Survey:
    """The run's outputs: `models` by their names in the report (layout.named: teacher or teacher-NAME; student,
    baseline), `caches` by teacher name (only when the current settings use a cache), and whether every teacher the
    current settings name is on disk and current."""
    models: dict[str, Output] = field(default_factory=dict)
    caches: dict[str, Output] = field(default_factory=dict)
    teachers_current: bool = True

    def current_models(self) -> dict[str, Output]:
        return {name: o for name, o in self.models.items() if o.stale is None}

    def current_caches(self) -> dict[str, Output]:
        return {name: o for name, o in self.caches.items() if o.stale is None}

    def stale(self) -> dict[str, Output]:
        """Every output the current settings would not make by its name in the report (a cache: cache or
        cache-NAME), models first."""
        caches = {layout.named("cache", teacher): o for teacher, o in self.caches.items()}
        return {name: o for name, o in (self.models | caches).items() if o.stale is not None}


def uses_cache(ctx: RunContext) -> bool:
    """Whether the current settings make a cache (cached KD, or stage=cache asked for one)."""
    return ctx.cfg.kd.teacher == "cached" or ctx.cfg.stage == "cache"


def survey(ctx: RunContext) -> Survey:
    """Every teacher, cache, student and baseline of the run found on disk, each marked current or stale."""
    cfg, out = ctx.cfg, Survey()
    for teacher_ctx in ctx.teachers():
        name = teacher_ctx.teacher_name
        published = teacher_ctx.cfg.teacher.source == "published"  # no model: its cache is the teacher
        found = None if published else _model(teacher_ctx.teacher_dir, teacher_ctx.teacher_inputs, "teacher",
                                              "stage=teacher")
        if found is not None:
            out.models[layout.named("teacher", name)] = found
        current = published or found is not None and found.stale is None
        out.teachers_current &= current
        record = layout.read_cache_record(ctx.run_dir / layout.cache_record(name))
        if uses_cache(ctx) and record is not None:
            out.caches[name] = Output(Path(record.folder), record, _cache_stale(teacher_ctx, record, current))
    folder = layout.student_dir(ctx.run_dir)
    if out.teachers_current:
        inputs = fingerprints.student_inputs(cfg, ctx.data.identity, ctx.norm, student.source(ctx), baseline=False)
        found = _model(folder, inputs, "student", "stage=student",
                       source="from another cache" if cfg.kd.teacher == "cached" else "from another teacher")
    else:
        found = _model(folder, None, "student", "stage=student")
    if found is not None:
        out.models["student"] = found
    inputs = fingerprints.student_inputs(cfg, ctx.data.identity, ctx.norm, "", baseline=True)
    found = _model(layout.student_dir(ctx.run_dir, baseline=True), inputs, "baseline",
                   "stage=student student.baseline=true")
    if found is not None:
        out.models["baseline"] = found
    return out


def _model(folder: Path, inputs: dict | None, what: str, refresh: str, source: str = "") -> Output | None:
    """The model in `folder` (None: none there), stale unless its meta.json is sealed and made from `inputs`
    (None: its teacher is not current, so no such model can be)."""
    meta = Meta.in_folder(folder)
    if meta is None:
        return None
    if not meta.sealed:
        return Output(folder, meta, f"{folder / 'meta.json'} was changed after it was written; delete {folder} and "
                                    f"run {refresh} to remake it")
    if inputs is None:
        return Output(folder, meta, f"made from a teacher the current settings do not make; run {refresh} to "
                                    "refresh")
    if meta.fingerprint == files.fingerprint(inputs):
        return Output(folder, meta)
    had, want = meta.inputs, fingerprints.parts(inputs)
    phrases = [source if part == "source" else _PARTS[part].format(what=what)
               for part in want if part in had and had[part] != want[part]]
    why = " and ".join(phrases) or "with other settings"
    return Output(folder, meta, f"made {why}; run {refresh} to refresh")


def _cache_stale(teacher_ctx: RunContext, record: CacheRun, teacher_current: bool) -> str | None:
    """Why the cache this run recorded for the teacher of `teacher_ctx` is not the one the current settings make
    (None: it is)."""
    refresh = "run stage=cache to refresh"
    if not teacher_current:
        return f"made from a teacher the current settings do not make; {refresh}"
    want = teacher_ctx.cache_dir  # the run's identities, computed once (RunContext)
    if Path(record.folder) == want:
        complete = softlabels.read_manifest(want) is not None
        return None if complete else f"{want} is missing or incomplete; {refresh}"
    differs = teacher_ctx.cache_identity.differs_in(softlabels.inputs_of(Path(record.folder)))
    return {"teacher": f"made from another teacher; {refresh}", "data": f"made with other data; {refresh}",
            "settings": f"made with other cache settings; {refresh}"}[differs]
