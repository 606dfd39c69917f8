"""The records a run writes and reads back, typed; every other module passes these objects, never their dicts.

    Normalization   the channel mean/std of the network input (RunContext.norm; data_stats.json, meta.json)
    Scores          a model's scores on the validation split (engine.evaluate)
    Training        one epoch's training figures (the objective's terms, speed, images left out)
    Metrics         what a stage measured of the model it published (meta.json's `metrics`; a metrics.jsonl line)
    StepLine        a line of steps.jsonl (the terms every log_every steps)
    Meta            a trained model's meta.json (sealed: artifacts.save_model)
    HeldOutScore    a model's score on the test split, kept in <model>/test.json (heldout.py)
    EnsembleScore   an ensemble's own scores, kept in <run>/ensemble.json (ensemble.py)
    CacheRun        the run's record of the cache it used, cache.json beside the run (stages/cache.py)
    Row, Stale      a summary.json row, and an output the report lists as stale
    Summary         the run's summary.json (report.py)
    Failure         a sweep point's failed.json (sweep.py)
    ExportRecord    export.json: the export's fingerprint, its checks and each file's sha256 (stages/export.py)

(Training progress, progress.json, is store/checkpoint.py's Progress.) Each record's `to_json()` gives exactly the
dict its file holds (and a fingerprint hashes: the same dict as before the records were typed, so no folder name
changes), and `from_json()` reads it back: a string key appears in this module's (de)serializers only. Each fact
derived from a record is a property here. The sealed ones read, write and seal themselves (files.Sealed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from distill import files

_TEST = ("test_top1", "test_top5", "test_count")  # a test score as a row (and the ensemble's record) holds it


def _tuple(values: Sequence | None) -> tuple | None:
    return None if values is None else tuple(values)


def _given(obj: dict) -> dict:
    """The entries of `obj` that are not None (a record's optional keys are left out of its file when unset)."""
    return {k: v for k, v in obj.items() if v is not None}


@dataclass(frozen=True)
class Normalization:
    """The channel mean and std every network input is normalised with (the recipe's, or measured on the training
    split: layout.normalization); `per_image`: each image by its own statistics instead (data.per_image_norm),
    and then no mean or std. Fingerprints hash `to_json()`."""
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    per_image: bool = False

    def to_json(self) -> dict:
        return {"per_image": self.per_image, "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}

    @classmethod
    def from_json(cls, obj: dict) -> Normalization:
        return cls(_tuple(obj["mean"]), _tuple(obj["std"]), obj["per_image"])


@dataclass(frozen=True)
class Scores:
    """A model's scores on the validation split (engine.evaluate): top-1 and top-5 accuracy (%), the mean CE loss
    and the number of images scored."""
    top1: float
    top5: float
    val_loss: float | None = None
    val_count: int | None = None

    def to_json(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "val_loss": self.val_loss, "val_count": self.val_count}

    @classmethod
    def from_json(cls, obj: dict) -> Scores:
        return cls(obj["top1"], obj["top5"], obj.get("val_loss"), obj.get("val_count"))


@dataclass(frozen=True)
class Training:
    """One epoch's training figures: the epoch (1-based) and the optimizer steps done by its end, the learning
    rate then, each objective term's mean over the epoch (`terms`, in the order the objective gives them), images
    per second, the time spent waiting for data (and its share of the epoch), the images left out (failing to
    decode) and the updates skipped for a non-finite loss."""
    epoch: int
    step: int | None = None
    lr: float | None = None
    terms: dict[str, float] = field(default_factory=dict)
    images_per_s: float | None = None
    data_wait_s: float | None = None
    data_wait_share: float | None = None
    skipped_images: int = 0
    nonfinite_skipped: int | None = None

    def to_json(self) -> dict:
        """In metrics.jsonl's order: epoch, step, lr, each term, the terms' names, then the other figures."""
        return {"epoch": self.epoch, "step": self.step, "lr": self.lr, **self.terms, "terms": sorted(self.terms),
                "images_per_s": self.images_per_s, "data_wait_s": self.data_wait_s,
                "data_wait_share": self.data_wait_share, "skipped_images": self.skipped_images,
                "nonfinite_skipped": self.nonfinite_skipped}

    @classmethod
    def from_json(cls, obj: dict) -> Training:
        named = set(obj.get("terms", []))
        terms = {k: v for k, v in obj.items() if k in named}  # in the file's order: the objective's
        return cls(obj["epoch"], obj.get("step"), obj.get("lr"), terms,
                   obj.get("images_per_s"), obj.get("data_wait_s"), obj.get("data_wait_share"),
                   obj.get("skipped_images", 0), obj.get("nonfinite_skipped"))


@dataclass(frozen=True)
class Metrics:
    """What a stage measured of the model it published: its last validation `scores` and, when it trained, the
    last epoch's `training` figures with the stage's totals (training seconds, the best top-1 of any epoch, and the
    wall time of the parts before a resume). A model loaded and not trained has its scores alone."""
    scores: Scores
    training: Training | None = None
    train_wall_s: float = 0.0
    best_top1: float | None = None
    earlier_wall_s: float = 0.0

    def line(self) -> dict:
        """The epoch's line of metrics.jsonl (its training figures, then its scores)."""
        return (self.training.to_json() if self.training else {}) | self.scores.to_json()

    def to_json(self) -> dict:
        """meta.json's `metrics`: the line, and the stage's totals when it trained."""
        if self.training is None:
            return self.line()
        return self.line() | {"train_wall_s": self.train_wall_s, "best_top1": self.best_top1,
                              "earlier_wall_s": self.earlier_wall_s}

    @classmethod
    def from_json(cls, obj: dict) -> Metrics:
        if "epoch" not in obj:
            return cls(Scores.from_json(obj))
        return cls(Scores.from_json(obj), Training.from_json(obj), obj.get("train_wall_s", 0.0), obj.get("best_top1"),
                   obj.get("earlier_wall_s", 0.0))

    @property
    def top1(self) -> float:
        return self.scores.top1

    @property
    def top5(self) -> float:
        return self.scores.top5

    @property
    def val_count(self) -> int | None:
        return self.scores.val_count

    @property
    def epochs(self) -> int:
        """Epochs trained (0: loaded, not trained)."""
        return self.training.epoch if self.training else 0

    @property
    def images_per_s(self) -> float | None:
        """Training images per second in the last epoch (None: not trained)."""
        return self.training.images_per_s if self.training else None

    @property
    def skipped_images(self) -> int:
        """Images left out of the last epoch, failing to decode."""
        return self.training.skipped_images if self.training else 0

    @property
    def loss(self) -> float | None:
        """The objective's mean loss over the last epoch (None: not trained)."""
        return self.training.terms.get("loss") if self.training else None


@dataclass(frozen=True)
class StepLine:
    """A line of steps.jsonl, every log_every optimizer steps: the step, the epoch (1-based), each objective term's
    mean since the last line, and the learning rate."""
    step: int
    epoch: int
    terms: dict[str, float]
    lr: float

    def to_json(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, **self.terms, "lr": self.lr}

    @classmethod
    def from_json(cls, obj: dict) -> StepLine:
        terms = {k: v for k, v in obj.items() if k not in ("step", "epoch", "lr")}
        return cls(obj["step"], obj["epoch"], terms, obj["lr"])

    @property
    def loss(self) -> float | None:
        """The objective's mean loss since the last line."""
        return self.terms.get("loss")


@dataclass(frozen=True)
class Meta(files.Sealed):
    """A trained model's meta.json, written last beside its weights (artifacts.save_model): the stage that made it,
    the architecture, its size and metrics, the fingerprint of what made it (and each part's hash, `inputs`), the
    data's classes and image size, its normalization, the stage's settings (`config`), its wall time and the sha256
    of the weights it scored; a student's also its seed and timm arguments (a teacher's meta holds neither).

    `sealed` is not in the file: read back (in_folder), whether the file is as distill wrote it. One that is not
    holds its fingerprint alone (it is only ever named, never read: its numbers would be shown as measured)."""
    SEAL = "meta_sha256"
    model: str = ""
    stage: str = ""
    params: int = 0
    metrics: Metrics | None = None
    fingerprint: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    num_classes: int | None = None
    class_names: list[str] = field(default_factory=list)
    image_size: int | None = None
    normalization: Normalization | None = None
    config: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None
    weights_sha256: str | None = None
    seed: int | None = None
    model_args: dict[str, Any] | None = None
    sealed: bool = field(default=True, compare=False)

    def to_json(self) -> dict:
        out = {"stage": self.stage, "model": self.model, "params": self.params,
               "metrics": self.metrics.to_json() if self.metrics else None, "fingerprint": self.fingerprint,
               "inputs": self.inputs, "num_classes": self.num_classes, "class_names": self.class_names,
               "image_size": self.image_size, "normalization": self.normalization.to_json() if self.normalization
               else None, "config": self.config, "wall_s": self.wall_s, "weights_sha256": self.weights_sha256}
        if self.seed is not None:  # a student's
            out |= {"model_args": self.model_args, "seed": self.seed}
        return out

    @classmethod
    def from_json(cls, obj: dict) -> Meta:
        metrics, norm = obj.get("metrics"), obj.get("normalization")
        return cls(obj.get("model", ""), obj.get("stage", ""), obj.get("params", 0),
                   Metrics.from_json(metrics) if metrics else None, obj.get("fingerprint"), obj.get("inputs") or {},
                   obj.get("num_classes"), obj.get("class_names", []), obj.get("image_size"),
                   Normalization.from_json(norm) if norm else None, obj.get("config") or {}, obj.get("wall_s"),
                   obj.get("weights_sha256"), obj.get("seed"), obj.get("model_args"))

    @classmethod
    def in_folder(cls, folder: Path) -> Meta | None:
        """The meta.json in `folder` (None: none there, or unreadable); one not sealed as distill wrote it comes
        back with `sealed` False and its fingerprint alone."""
        obj = files.read_json(Path(folder) / "meta.json")
        if obj is None:
            return None
        if not files.is_sealed(obj, cls.SEAL):
            return cls(fingerprint=obj.get("fingerprint") if isinstance(obj, dict) else None, sealed=False)
        return cls.from_json(obj)


class _Kept(files.Sealed):
    """A score kept in a sealed file beside what it scored, with the `key` it was computed from (what it scored:
    another key is scored again)."""

    @classmethod
    def kept(cls, path: Path, key: dict, what: str, advice: str):
        """The score kept at `path` for `key`; None when there is none, or it was computed from another key."""
        obj = files.read_sealed(path, what, advice)
        return cls.from_json(obj["metrics"]) if obj and obj.get("key") == key else None

    def keep(self, path: Path, key: dict) -> None:
        files.write_sealed(path, {"key": key, "metrics": self.to_json()})


@dataclass(frozen=True)
class HeldOutScore(_Kept):
    """A model's score on the test split (heldout.py): top-1, top-5 (%) and the number of images."""
    FILE = "test.json"  # kept in the model's folder
    top1: float
    top5: float
    count: int

    def to_json(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "count": self.count}

    @classmethod
    def from_json(cls, obj: dict) -> HeldOutScore:
        return cls(obj["top1"], obj["top5"], obj["count"])

    @classmethod
    def of(cls, scores: Scores) -> HeldOutScore:
        """engine.evaluate's scores on the test split."""
        return cls(scores.top1, scores.top5, scores.val_count)

    @staticmethod
    def key(meta: Meta, test_identity: dict | None) -> dict:
        """What a model's test score is computed from (the key it is kept with): its weights and the test split."""
        return {"weights_sha256": meta.weights_sha256, "test": test_identity}

    def as_row(self) -> dict:
        """As a row holds it: test_top1, test_top5, test_count."""
        return dict(zip(_TEST, (self.top1, self.top5, self.count)))

    @classmethod
    def from_row(cls, obj: dict) -> HeldOutScore | None:
        return cls(*(obj[k] for k in _TEST)) if _TEST[0] in obj else None


@dataclass(frozen=True)
class EnsembleScore(_Kept):
    """An ensemble's own scores (ensemble.py): what it is (`model`: "N teachers"), its teachers' parameters in
    all, the rule that combines them, its validation scores and, when there is a test split, its test score."""
    model: str
    params: int
    rule: str
    top1: float
    top5: float
    val_count: int
    test: HeldOutScore | None = None

    def to_json(self) -> dict:
        return ({"top1": self.top1, "top5": self.top5, "val_count": self.val_count}
                | (self.test.as_row() if self.test else {}) | {"model": self.model, "params": self.params,
                                                                "rule": self.rule})

    @classmethod
    def from_json(cls, obj: dict) -> EnsembleScore:
        return cls(obj["model"], obj["params"], obj["rule"], obj["top1"], obj["top5"], obj["val_count"],
                   HeldOutScore.from_row(obj))


@dataclass(frozen=True)
class PublishedTeacher:
    """A published cache as the teacher, as the report and the model card name it: its Hub id or folder, the Hub
    snapshot's revision (None: a local folder), the teacher it was labelled by and that teacher's published score."""
    path: str
    revision: str | None
    teacher_model: str
    teacher_top1: float | None
    scored_on: str

    def to_json(self) -> dict:
        return {"path": self.path, "revision": self.revision, "teacher_model": self.teacher_model,
                "teacher_top1": self.teacher_top1, "scored_on": self.scored_on}

    @classmethod
    def from_json(cls, obj: dict) -> PublishedTeacher:
        return cls(obj["path"], obj["revision"], obj["teacher_model"], obj["teacher_top1"], obj["scored_on"])

    @property
    def line(self) -> str:
        """The one line naming it as the teacher."""
        at = f"@{self.revision[:12]}" if self.revision else ""
        score = f"{self.teacher_top1:.2f}%" if self.teacher_top1 is not None else "not given"
        return (f"the published cache {self.path}{at} (teacher {self.teacher_model}, top-1 {score} on its "
                f"{self.scored_on})")


@dataclass(frozen=True)
class CacheRun(files.Sealed):
    """cache.json beside the run (cache-NAME.json: teacher NAME's): the cache folder the run used, whether it was
    reused, the images left out of it (failing to decode) and, when this run (or an earlier one, with the same
    folder) labelled it, how long that took (`wall_s`), how many images and how fast."""
    folder: str
    reused: bool = False
    skipped_images: int = 0
    wall_s: float | None = None
    images: int | None = None
    images_per_s: float | None = None
    published: PublishedTeacher | None = None  # when the cache came from a published one: what it names

    def to_json(self) -> dict:
        return {"folder": self.folder, "reused": self.reused, "skipped_images": self.skipped_images} | _given(
            {"wall_s": self.wall_s, "images": self.images, "images_per_s": self.images_per_s,
             "published": self.published.to_json() if self.published else None})

    @classmethod
    def from_json(cls, obj: dict) -> CacheRun:
        return cls(obj["folder"], obj.get("reused", False), obj.get("skipped_images", 0), obj.get("wall_s"),
                   obj.get("images"), obj.get("images_per_s"),
                   PublishedTeacher.from_json(obj["published"]) if obj.get("published") else None)

    @property
    def timed(self) -> bool:
        """Whether the record says how long labelling took."""
        return self.wall_s is not None


@dataclass(frozen=True)
class Row:
    """One model's row of summary.json: architecture, validation top-1/top-5, size, training speed and wall time
    (None: an ensemble's, or not trained), the validation image count; a trained model's epochs and images left
    out; the ensemble's rule; and the test score when a test split was scored."""
    model: str
    top1: float
    top5: float
    params: int
    train_images_per_s: float | None = None
    wall_s: float | None = None
    val_count: int | None = None
    epochs: int | None = None
    skipped_images: int | None = None
    rule: str | None = None
    test: HeldOutScore | None = None

    def to_json(self) -> dict:
        return ({"model": self.model, "top1": self.top1, "top5": self.top5, "params": self.params,
                 "train_images_per_s": self.train_images_per_s, "wall_s": self.wall_s, "val_count": self.val_count}
                | _given({"epochs": self.epochs, "skipped_images": self.skipped_images, "rule": self.rule})
                | (self.test.as_row() if self.test else {}))

    @classmethod
    def from_json(cls, obj: dict) -> Row:
        return cls(obj["model"], obj["top1"], obj["top5"], obj["params"], obj.get("train_images_per_s"),
                   obj.get("wall_s"), obj.get("val_count"), obj.get("epochs"), obj.get("skipped_images"),
                   obj.get("rule"), HeldOutScore.from_row(obj))

    @property
    def test_top1(self) -> float | None:
        return self.test.top1 if self.test else None


@dataclass(frozen=True)
class Stale:
    """An output the current settings would not make: its folder, and why (with the stage that refreshes it)."""
    folder: str
    why: str

    def to_json(self) -> dict:
        return {"folder": self.folder, "why": self.why}

    @classmethod
    def from_json(cls, obj: dict) -> Stale:
        return cls(obj["folder"], obj["why"])


@dataclass(frozen=True)
class Summary:
    """The run's summary.json (report.py): a row per current model by its name in the report (teachers first, then
    the ensemble, the student and the baseline), each teacher's cache record by teacher name, and the stale outputs
    by name. The KD gains and the teacher-below-baseline flag derive from the rows (properties), written too."""
    FORMAT_VERSION = 2  # 2: `caches` by teacher name for one teacher too (1: `cache` or `caches`)
    run: str
    models: dict[str, Row]
    caches: dict[str, CacheRun] = field(default_factory=dict)
    stale: dict[str, Stale] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"format_version": self.FORMAT_VERSION, "run": self.run,
               "models": {name: row.to_json() for name, row in self.models.items()}}
        if self.caches:
            out["caches"] = {teacher: c.sealed_json() for teacher, c in self.caches.items()}
        if self.stale:
            out["stale"] = {name: s.to_json() for name, s in self.stale.items()}
        return out | _given({"kd_gain_top1": self.kd_gain_top1, "kd_gain_test_top1": self.kd_gain_test_top1,
                             "teacher_below_baseline": self.teacher_below_baseline})

    @classmethod
    def from_json(cls, obj: dict) -> Summary:
        return cls(obj["run"], {name: Row.from_json(r) for name, r in obj["models"].items()},
                   {t: CacheRun.from_json(c) for t, c in obj.get("caches", {}).items()},
                   {name: Stale.from_json(s) for name, s in obj.get("stale", {}).items()})

    @classmethod
    def read(cls, path: Path) -> Summary | None:
        """The summary.json at `path` (None: none, unreadable, or of another format version)."""
        obj = files.read_json(path)
        return cls.from_json(obj) if isinstance(obj, dict) and obj.get("format_version") == cls.FORMAT_VERSION \
            else None

    def _gain(self, top1: str) -> float | None:
        rows = [self.models.get(name) for name in ("student", "baseline")]
        values = [getattr(r, top1) if r else None for r in rows]
        return None if None in values else values[0] - values[1]

    @property
    def kd_gain_top1(self) -> float | None:
        """The KD student's validation top-1 minus the CE baseline's (None: either is not shown)."""
        return self._gain("top1")

    @property
    def kd_gain_test_top1(self) -> float | None:
        """The same on the test split (None: no test score for either)."""
        return self._gain("test_top1") if self.kd_gain_top1 is not None else None

    @property
    def distilled(self) -> str | None:
        """The row of what the student learns from: the ensemble's, else the one teacher's (None: neither is
        shown)."""
        teachers = [name for name in self.models if name.startswith("teacher")]
        return "ensemble" if "ensemble" in self.models else teachers[0] if len(teachers) == 1 else None

    @property
    def teacher_below_baseline(self) -> bool | None:
        """Whether what the student learns from scores below the CE baseline (None: either is not shown)."""
        if self.distilled is None or "baseline" not in self.models:
            return None
        return self.models[self.distilled].top1 < self.models["baseline"].top1


@dataclass(frozen=True)
class Failure:
    """A sweep point's failed.json (sweep.py; tools/sweep_table.py lists it): the one-line reason, the error's type,
    the point's overrides and its values of the swept keys, and, for an unexpected error (a bug), the file beside
    it that holds the traceback."""
    reason: str
    error: str
    overrides: list[str]
    settings: dict[str, str]
    traceback: str | None = None

    def to_json(self) -> dict:
        return {"reason": self.reason, "error": self.error, "overrides": self.overrides,
                "settings": self.settings} | _given({"traceback": self.traceback})

    @classmethod
    def from_json(cls, obj: dict) -> Failure:
        return cls(obj["reason"], obj["error"], obj["overrides"], obj["settings"], obj.get("traceback"))


@dataclass(frozen=True)
class ExportChecks:
    """What the export checked: the ONNX opset asked for, the batch it was checked on, the PyTorch model's images
    per second on this CPU and, when model.onnx was written, its largest difference from PyTorch and on how many
    images."""
    opset: int
    batch: int
    cpu_images_per_s: float
    onnx_max_abs_diff: float | None = None
    onnx_images: int | None = None

    def to_json(self) -> dict:
        return {"opset": self.opset, "batch": self.batch, "cpu_images_per_s": self.cpu_images_per_s} | _given(
            {"onnx_max_abs_diff": self.onnx_max_abs_diff, "onnx_images": self.onnx_images})

    @classmethod
    def from_json(cls, obj: dict) -> ExportChecks:
        return cls(obj["opset"], obj["batch"], obj["cpu_images_per_s"], obj.get("onnx_max_abs_diff"),
                   obj.get("onnx_images"))


@dataclass(frozen=True)
class ExportRecord:
    """export.json: the export's fingerprint (what a rerun compares to reuse it), the student weights it holds, its
    checks, and each file it wrote with its sha256."""
    fingerprint: str
    student_weights_sha256: str
    checks: ExportChecks
    sha256: dict[str, str]

    def to_json(self) -> dict:
        return {"fingerprint": self.fingerprint, "student_weights_sha256": self.student_weights_sha256,
                "checks": self.checks.to_json(), "files": self.files, "sha256": self.sha256}

    @classmethod
    def from_json(cls, obj: dict) -> ExportRecord:
        sums = obj.get("sha256", {name: None for name in obj.get("files", [])})  # an older export: names only
        return cls(obj.get("fingerprint"), obj.get("student_weights_sha256"), ExportChecks.from_json(obj["checks"]),
                   sums)

    @classmethod
    def read(cls, path: Path) -> ExportRecord | None:
        """The export.json at `path` (None: none, unreadable, or not one distill wrote: the export is rebuilt)."""
        obj = files.read_json(path)
        try:
            return cls.from_json(obj)
        except (AttributeError, KeyError, TypeError):
            return None

    @property
    def files(self) -> list[str]:
        return sorted(self.sha256)

