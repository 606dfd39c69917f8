"""The soft-label cache's format: the record, the shard files, the manifest, and the memory-mapped reader.

The only module that reads or writes a cache folder (the cache stage computes records and hands them here). Its
typed records: CacheIdentity (what the bytes depend on; its hash names the folder), LogitsKept (dense or top-k,
and the label temperature: decided there alone), CacheManifest and its ShardEntry list; a string key of theirs
appears only in their to_json/from_json.

    shard-00000.npy     fixed-size records (numpy structured array, one row per image), read through mmap
    features-00000.npy  with cache.features: each view's pooled teacher feature, [rows, V, width] fp16, written
                        before the records
    shard-00000.json    that shard's rows and each file's sha256, the cache's fingerprint and the record layout,
                        sealed, written after them: the shard's commit marker
    manifest.json       written last, by the main process after a barrier: the whole cache's commit marker (sealed)

Each file goes to a temporary name, is fsynced, then renamed, so a killed writer leaves either the old state or
the new one, and a rerun keeps every shard whose checksum verifies and whose sidecar names this cache's fingerprint
and layout: a shard of another cache (a folder renamed or moved) is recomputed, never adopted. A sealed sidecar or
manifest changed by hand stops the run in one line naming it (files.read_sealed's rule).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import faults, files
from distill.data import views
from distill.data.identity import DataIdentity
from distill.errors import DataError
from distill.methods.common.standardize import standardize

log = logging.getLogger("distill")

FORMAT_VERSION = 6  # 2: one view per teacher forward (growable); 3: + true-class logit, logit mean/std, lse of
# z-scores; 4: the tail's own logsumexps (classes outside the top k and the view's classes), so that a reader never
# forms 1 - sum(q), which cancels for a confident teacher; 5: the inputs name cache.features also when false (its
# caches say 4: the number was not raised with it); 6: sidecars and manifest sealed, each sidecar names the cache's
# fingerprint and record layout

MIX_FIELDS = ("partner", "partner_view", "lam", "box")
FEATURE_DTYPE = "<f2"
VIEWS = "cache.views"  # the setting a cache grows along (cache_to_grow_from)


@dataclass(frozen=True)
class LogitsKept:
    """What a cache keeps of each view's logits, and the one place that says dense or top-k: every logit when
    `topk` >= `num_classes` (dense: stored with their logsumexp at T = 1, so the student may use any T), else the
    top `topk` with the tail's logsumexps at `kd_temperature` (the student's T must be that one)."""
    topk: int  # cache.topk, or a cache's stored k read back (the same verdict)
    num_classes: int
    kd_temperature: float

    @property
    def dense(self) -> bool:
        return self.topk >= self.num_classes

    @property
    def k(self) -> int:
        """The logits stored per view."""
        return self.num_classes if self.dense else self.topk

    @property
    def temperature(self) -> float:
        """The label temperature: the T of the stored logsumexps."""
        return 1.0 if self.dense else self.kd_temperature


@dataclass(frozen=True)
class CacheIdentity:
    """Everything a cache's bytes depend on (fingerprints.cache_identity builds it, RunContext once per teacher):
    its JSON's hash names the cache folder (`folder_name`), and its manifest holds that JSON (`inputs`). Not the
    data's identity (DataIdentity), which it holds. Settings are as the bytes use them: `kept` normalises
    cache.topk and kd.temperature, so that caches that would be byte-identical share one folder; `precision`, among
    the settings, is the one that runs (run.py sets it)."""
    teacher_sha256: str  # the teacher's weights
    data: DataIdentity
    normalization: Any  # the Normalization (store/records.py), hashed as its JSON
    kept: LogitsKept
    settings: dict[str, Any]  # every other setting tagged `cache` (config.py), by dotted key: a new one joins by tag
    format_version: int = FORMAT_VERSION

    @property
    def views(self) -> int:
        return self.settings[VIEWS]

    def to_json(self) -> dict[str, Any]:
        """What is hashed and stored: every key and value as distill has always written them (a change here renames
        every cache folder)."""
        return {"format_version": self.format_version, "teacher_sha256": self.teacher_sha256,
                "data": self.data.to_json(), "normalization": files.as_json(self.normalization), **self.settings,
                "cache.topk": self.kept.k, "kd.temperature": self.kept.temperature}

    def folder_name(self) -> str:
        return files.fingerprint(self.to_json())

    def grows_from(self, inputs: dict[str, Any]) -> bool:
        """Whether the cache made from `inputs` (an identity's JSON, as a manifest holds it) has fewer views than
        this one and is otherwise the same: its views are this cache's first ones, bit for bit."""
        mine, theirs = files.as_json(self.to_json()), dict(inputs)
        views, their_views = mine.pop(VIEWS), theirs.pop(VIEWS, None)
        return their_views is not None and their_views < views and theirs == mine

    def differs_in(self, inputs: dict[str, Any]) -> str:
        """What makes the cache made from `inputs` (an identity's JSON, of any format; {} when unknown) another
        than this one: "teacher", "data", or "settings"."""
        if inputs and inputs.get("teacher_sha256") != self.teacher_sha256:
            return "teacher"
        if inputs and inputs.get("data") != files.as_json(self.data):
            return "data"
        return "settings"


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a complete cache, as its manifest lists it: its records' file, first image and rows, each
    file's sha256 (with cache.features, its features file too)."""
    file: str
    start: int
    rows: int
    sha256: str | None
    features_file: str | None = None
    features_sha256: str | None = None

    def files(self) -> list[tuple[str, str | None]]:
        """(file, sha256) of its records, and of its features when the cache has them."""
        out = [(self.file, self.sha256)]
        return out + [(self.features_file, self.features_sha256)] if self.features_file else out

    def to_json(self) -> dict[str, Any]:
        out = {"file": self.file, "start": self.start, "rows": self.rows, "sha256": self.sha256}
        if self.features_file:
            out |= {"features_file": self.features_file, "features_sha256": self.features_sha256}
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any], file: str | None = None) -> "ShardEntry":
        """The entry `to_json` wrote, or (with `file`: its records' file name) the one a shard's sidecar says."""
        return cls(file or obj["file"], obj.get("start", 0), obj.get("rows", 0), obj.get("sha256"),
                   obj.get("features_file"), obj.get("features_sha256"))


@dataclass(frozen=True)
class CacheManifest:
    """A complete cache's manifest.json, sealed: its commit marker, written last (write_manifest) and read back
    only of this format (read_manifest)."""
    fingerprint: str  # the folder's name: the hash of `inputs`
    layout: dict[str, Any]  # the records' layout (shard_layout)
    inputs: dict[str, Any]  # the CacheIdentity's JSON it was made from
    num_images: int
    class_names: list[str]
    views: int
    kept: LogitsKept
    shard_size: int
    record: dict[str, list]  # each record field's dtype and shape
    record_bytes: int
    feature_dim: int | None  # the width of the pooled features it stores (None: none)
    teacher_view_top1: float  # the teacher's top-1 over the cached views
    skipped: list[int]  # images left out (failed to decode): no soft labels
    shards: list[ShardEntry] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return self.kept.num_classes

    def to_json(self) -> dict[str, Any]:
        features = None if self.feature_dim is None else {
            "dim": self.feature_dim, "dtype": FEATURE_DTYPE, "bytes_per_view": self.feature_dim * 2}
        return {"format_version": self.format_version, "fingerprint": self.fingerprint, "layout": self.layout,
                "inputs": self.inputs, "num_images": self.num_images, "num_classes": self.num_classes,
                "class_names": self.class_names, "views": self.views, "topk": self.kept.k, "dense": self.kept.dense,
                "temperature": self.kept.temperature, "shard_size": self.shard_size, "record": self.record,
                "record_bytes": self.record_bytes, "features": features, "teacher_view_top1": self.teacher_view_top1,
                "skipped": self.skipped, "shards": [sh.to_json() for sh in self.shards]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "CacheManifest":
        """The manifest `to_json` wrote (this format's)."""
        return cls(obj["fingerprint"], obj["layout"], obj["inputs"], obj["num_images"], obj["class_names"],
                   obj["views"], LogitsKept(obj["topk"], obj["num_classes"], obj["temperature"]), obj["shard_size"],
                   obj["record"], obj["record_bytes"], (obj["features"] or {}).get("dim"), obj["teacher_view_top1"],
                   obj["skipped"], [ShardEntry.from_json(sh) for sh in obj["shards"]], obj["format_version"])

def record_dtype(num_views: int, k: int, num_classes: int, mixed: bool = False) -> np.dtype:
    """One row per image: for each view its parameters, top-k logits (fp16) and classes, and in fp32 the logsumexp
    of all logits / T, the true class's logit, the mean and (unbiased) std of all logits, and the logsumexps / T of
    the logits and of their z-scores over the tail: the classes outside the top k and the view's own classes (what
    KD, DKD and logit standardization need beyond the top k); then the teacher's top-1 class and whether it is
    right. Mixed views add the partner's index and view, lambda, the cutmix box (all-zero: mixup) and the logit of
    the partner's class (one of the view's own classes)."""
    cls = "<i2" if num_classes <= 2**15 else "<i4"
    v = num_views
    fields = [("view", "<i2", (v, views.WIDTH)), ("logits", "<f2", (v, k)), ("classes", cls, (v, k)),
              ("lse", "<f4", (v,)), ("target", "<f4", (v,)), ("mean", "<f4", (v,)), ("std", "<f4", (v,)),
              ("lse_rest", "<f4", (v,)), ("lse_std_rest", "<f4", (v,)), ("top1", cls, (v,)), ("correct", "u1", (v,))]
    if mixed:
        fields += [("partner", "<i4", (v,)), ("partner_view", "<i2", (v, views.WIDTH)), ("lam", "<f4", (v,)),
                   ("box", "<i2", (v, 4)), ("partner_target", "<f4", (v,))]
    return np.dtype(fields)


LABEL_SCALARS = ("target", "mean", "std", "lse_rest", "lse_std_rest")  # a view's soft label beyond its top k
TEACHER_FIELDS = ("logits", "classes", "lse", "target", "mean", "std", "lse_rest", "lse_std_rest", "top1", "correct",
                  "partner_target")  # what the teacher wrote (cleared for an image left out)


def teacher_fields(logits: torch.Tensor, labels: torch.Tensor, partner_classes: torch.Tensor | None, k: int,
                   temperature: float) -> dict[str, torch.Tensor]:
    """What the cache stores of one view for a batch of teacher logits [b, C] (float32): the record's teacher
    fields (`top1` included, `correct` left to the caller). The tail (`lse_rest`, `lse_std_rest`) is every class
    outside the top k, the label and (mixed views) the partner's class; empty, -inf, when they cover every class."""
    values, classes = logits.topk(k, dim=-1)
    z = standardize(logits)
    known = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, classes, True).scatter_(1, labels.view(-1, 1), True)
    out = {"logits": values.half(), "classes": classes, "lse": torch.logsumexp(logits / temperature, 1),
           "target": logits.gather(1, labels.view(-1, 1))[:, 0], "mean": logits.mean(1), "std": logits.std(1),
           "top1": logits.argmax(-1)}
    if partner_classes is not None:
        known.scatter_(1, partner_classes.view(-1, 1), True)
        out["partner_target"] = logits.gather(1, partner_classes.view(-1, 1))[:, 0]
    out["lse_rest"] = torch.logsumexp((logits / temperature).masked_fill(known, float("-inf")), 1)
    out["lse_std_rest"] = torch.logsumexp((z / temperature).masked_fill(known, float("-inf")), 1)
    return out


# ---------------------------------------------------------------- writing

def _shard(folder: Path, s: int, suffix: str, kind: str = "shard") -> Path:
    return folder / f"{kind}-{s:05d}.{suffix}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    """`array` to `path` in one step: written beside it, flushed to disk, renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    files.fsync_rename(tmp, path)


def shard_layout(dtype: np.dtype, features: bool) -> dict:
    """What a shard's bytes are laid out as (as JSON reads it back): the record's numpy dtype descr, its views and
    top k, and whether a features file comes with it. Every sidecar and the manifest record it."""
    return json.loads(json.dumps({"record": dtype.descr, "views": dtype["logits"].shape[0],
                                  "topk": dtype["logits"].shape[1], "features": features}))


def _redo(folder: Path) -> str:
    return f"delete {folder} to recompute the cache"


def _read(path: Path, folder: Path) -> dict | None:
    """A sidecar or the manifest: None when missing or unreadable; one of another format as it is (its reader
    recomputes or refuses it); one of this format changed since it was written raises one line naming it."""
    obj = files.read_json(path)
    if obj is None or obj.get("format_version") != FORMAT_VERSION:
        return obj
    if not files.is_sealed(obj):
        raise DataError(files.changed("cache", path, _redo(folder)))
    return obj


def _ours(obj: dict, fp: str, layout: dict) -> bool:
    """Whether a sidecar or manifest is of this format and names the cache `fp` with this record layout."""
    return (obj.get("format_version"), obj.get("fingerprint"), obj.get("layout")) == (FORMAT_VERSION, fp, layout)


def write_shard(folder: Path, s: int, start: int, records: np.ndarray, skipped: list[int],
                features: np.ndarray | None = None, *, fp: str) -> None:
    """The shard's records (and, with cache.features, its features file: [rows, V, width] fp16), then its sealed
    sidecar (the cache's fingerprint `fp` and the layout, rows, each file's sha256, images left out): the sidecar
    commits the shard."""
    side = {"format_version": FORMAT_VERSION, "fingerprint": fp,
            "layout": shard_layout(records.dtype, features is not None), "shard": s, "start": start,
            "rows": len(records)}
    if features is not None:
        path = _shard(folder, s, "npy", "features")
        _save_npy(path, features)
        side |= {"features_file": path.name, "features_sha256": files.sha256(path)}
        faults.point("cache_features", s + 1)  # tests: killed with shard s's features written, its records not
    path = _shard(folder, s, "npy")
    _save_npy(path, records)
    files.write_sealed(_shard(folder, s, "json"), side | {"sha256": files.sha256(path), "skipped": skipped})


def shard_done(folder: Path, s: int, fp: str, layout: dict) -> bool:
    """Shard s is written by the cache `fp` with this layout, and its bytes match its sealed sidecar's checksums."""
    side = _read(_shard(folder, s, "json"), folder)
    if side is None or not _ours(side, fp, layout) or not _shard(folder, s, "npy").exists():
        return False
    bad = _failing_files(ShardEntry.from_json(side, file=_shard(folder, s, "npy").name), folder)
    if bad:
        log.warning(f"cache: {_fault(folder / bad[0])}; recomputing shard {s}")
        return False
    return True


def _failing_files(sh: ShardEntry, folder: Path) -> list[str]:
    """The files of one shard entry that are missing or fail their checksum."""
    return [name for name, sha in sh.files() if not (folder / name).exists() or files.sha256(folder / name) != sha]


def _fault(path: Path) -> str:
    """What is wrong with a file `_failing_files` named."""
    return f"{path} {'fails its checksum' if path.exists() else 'is missing'}"


def failing(shards: list[ShardEntry], folder: Path) -> list[ShardEntry]:
    """The shard entries with a file missing or failing its checksum."""
    return [sh for sh in shards if _failing_files(sh, folder)]


MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> CacheManifest | None:
    """The cache's manifest, or None while it is incomplete or when it is of another format: the one way this
    module reads it. One of this format changed since it was written raises one line naming it."""
    obj = _read(Path(folder) / MANIFEST, Path(folder))
    return CacheManifest.from_json(obj) if obj is not None and obj.get("format_version") == FORMAT_VERSION else None


def inputs_of(folder: Path) -> dict[str, Any]:
    """The identity's JSON (CacheIdentity.to_json) that the cache in `folder` was made from, whatever its format;
    {} when it has no manifest."""
    return (_read(Path(folder) / MANIFEST, Path(folder)) or {}).get("inputs") or {}


def _remove_shard(folder: Path, sh: ShardEntry) -> None:
    """A shard's files (records, features) and its sidecar."""
    for name, _ in sh.files():
        (folder / name).unlink(missing_ok=True)
    (folder / sh.file.replace(".npy", ".json")).unlink(missing_ok=True)


def reusable_or_cleared(folder: Path, fp: str, layout: dict) -> CacheManifest | None:
    """The manifest when the cache in `folder` is complete, names `fp` and `layout`, and every shard checks out;
    otherwise clear what must not be trusted (temporary files, a stale manifest, shards that fail their checksum,
    shards of another cache or format) and return None. A manifest or sidecar changed by hand raises."""
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob("*.tmp"):  # left by a killed writer: never complete
        tmp.unlink()
    found = _read(folder / MANIFEST, folder)
    if found is not None and not _ours(found, fp, layout):
        log.warning(f"cache: {folder}/manifest.json is from format {found.get('format_version')} or another "
                    "cache; recomputing")
        (folder / MANIFEST).unlink()
        found = None
    if found is not None:
        manifest = CacheManifest.from_json(found)
        bad = [(sh, names) for sh in manifest.shards if (names := _failing_files(sh, folder))]
        if not bad:
            return manifest
        for sh, names in bad:
            log.warning(f"cache: {_fault(folder / names[0])}; recomputing it")
            _remove_shard(folder, sh)
        (folder / MANIFEST).unlink()
    _clear_foreign(folder, fp, layout)
    return None


def _clear_foreign(folder: Path, fp: str, layout: dict) -> None:
    """Remove the shards whose sidecar names another cache, format or layout (one warning line naming them): their
    checksums hold, but they are another cache's bytes."""
    foreign = []
    for path in sorted(folder.glob("shard-*.json")):
        side = _read(path, folder)
        if side is not None and not _ours(side, fp, layout):
            _remove_shard(folder, ShardEntry.from_json(side, file=path.with_suffix(".npy").name))
            foreign.append(path.name)
    if foreign:
        log.warning(f"cache: {folder}: {', '.join(foreign)} belong to another cache, format or record layout (a "
                    f"folder renamed or moved?); recomputing {'it' if len(foreign) == 1 else 'them'}")


def write_manifest(folder: Path, identity: CacheIdentity, *, num_images: int, class_names: list[str],
                   shard_size: int, dtype: np.dtype, feature_dim: int | None = None) -> CacheManifest:
    """The whole cache's commit marker (named by its folder, the hash of `identity`), from the shards' sidecars,
    with the teacher's top-1 over the views; `feature_dim`: the width of the pooled features it stores (None:
    none)."""
    shards, correct, views_total, skipped = [], 0, 0, []
    layout = shard_layout(dtype, feature_dim is not None)
    for s in range(math.ceil(num_images / shard_size)):
        side = _read(_shard(folder, s, "json"), folder)
        if side is None or not _ours(side, folder.name, layout):
            raise DataError(f"cache: shard {s} is missing after every process finished; rerun stage=cache")
        shards.append(ShardEntry.from_json(side, file=_shard(folder, s, "npy").name))
        correct += int(np.load(folder / shards[-1].file, mmap_mode="r")["correct"].sum())
        skipped += side.get("skipped", [])
        views_total += (side["rows"] - len(side.get("skipped", []))) * identity.views
    manifest = CacheManifest(
        folder.name, layout, identity.to_json(), num_images, class_names, identity.views, identity.kept, shard_size,
        {name: [dtype[name].base.str, list(dtype[name].shape)] for name in dtype.names}, dtype.itemsize, feature_dim,
        100.0 * correct / max(views_total, 1), skipped, shards)
    return CacheManifest.from_json(files.write_sealed(folder / MANIFEST, manifest.to_json()))


def cache_to_grow_from(root: Path, identity: CacheIdentity) -> tuple[Path, CacheManifest] | None:
    """The complete cache under `root` with the most views below `identity`'s and otherwise the same inputs: the
    one to grow from. Its checksums are verified; a cache that fails them is passed over."""
    found = []
    for path in root.glob(f"*/{MANIFEST}"):
        manifest = read_manifest(path.parent)
        if manifest is not None and identity.grows_from(manifest.inputs):
            found.append((manifest.views, path.parent, manifest))
    for _, folder, manifest in sorted(found, key=lambda f: -f[0]):
        if not failing(manifest.shards, folder):
            return folder, manifest
        log.warning(f"cache: {folder} fails its checksums; not growing from it")
    return None


def shard_records(folder: Path, s: int) -> np.ndarray:
    """Shard s of a complete cache, memory-mapped."""
    return np.load(_shard(folder, s, "npy"), mmap_mode="r")


def shard_features(folder: Path, s: int) -> np.ndarray:
    """The features of shard s of a complete cache that stores them ([rows, V, width] fp16), memory-mapped."""
    return np.load(_shard(folder, s, "npy", "features"), mmap_mode="r")


def cache_bytes(num_images: int, views: int, dtype: np.dtype, feature_dim: int | None) -> int:
    """What a cache's files take on disk (to within the .npy headers and the sidecars): one record per image, and
    2 bytes x feature_dim per view when it stores features."""
    return num_images * (dtype.itemsize + (views * feature_dim * 2 if feature_dim else 0))


# ---------------------------------------------------------------- reading

class SoftLabels:
    """Read side: shards memory-mapped (never read whole into RAM); a batch's records read at once (`rows`, one
    gather per shard; `view_labels`, `features_of`), or one image's (`row`, `view_label`, `feature`); with
    `features`, the shards' feature files too (the cache must store them)."""

    def __init__(self, folder: str | Path, verify: bool = False, features: bool = False,
                 fingerprint: str | None = None):
        """`verify`: every shard's checksums and sidecar checked (one of another cache refused); `fingerprint`: the
        cache these settings make, which the manifest must name (a folder renamed or moved is refused)."""
        self.folder = Path(folder)
        self.manifest = manifest = self._manifest(fingerprint)
        self.shard_size, self.num_classes, self.views = manifest.shard_size, manifest.num_classes, manifest.views
        self.topk, self.temperature, self.dense = manifest.kept.k, manifest.kept.temperature, manifest.kept.dense
        self.skipped = set(manifest.skipped)  # images left out (failed to decode): no soft labels
        self.shards = [self._open(sh, verify) for sh in manifest.shards]
        self.feature_dim = manifest.feature_dim
        self.features = self._open_features() if features else None

    def _manifest(self, fingerprint: str | None) -> CacheManifest:
        """The folder's manifest: complete, of this format, sealed, and naming `fingerprint` when given."""
        found = _read(self.folder / MANIFEST, self.folder)
        if found is None:
            what = "is incomplete" if self.folder.is_dir() else "does not exist yet"
            raise DataError(f"cache: {self.folder} {what} (no manifest.json): no soft labels for these settings; "
                            "run stage=cache")
        if found.get("format_version") != FORMAT_VERSION:
            raise DataError(f"cache: {self.folder} is format {found.get('format_version')}, this distill reads "
                            f"{FORMAT_VERSION}; rerun stage=cache to rebuild it")
        manifest = CacheManifest.from_json(found)
        if fingerprint is not None and manifest.fingerprint != fingerprint:
            raise DataError(f"cache: {self.folder} holds the cache {manifest.fingerprint}, not {fingerprint} (a "
                            "folder renamed or moved?); move it back, or rerun stage=cache to recompute it")
        return manifest

    def _open(self, sh: ShardEntry, verify: bool) -> np.ndarray:
        """One shard's records, memory-mapped; with `verify`, its files' checksums and its sidecar checked first."""
        path = self.folder / sh.file
        if verify and failing([sh], self.folder):  # the records and, with features, their file
            named = " or ".join(name for name, _ in sh.files())
            raise DataError(f"cache: {self.folder}: {named} fails its checksum; rerun stage=cache to recompute it")
        side = path.with_suffix(".json")
        if verify and not _ours(_read(side, self.folder) or {}, self.manifest.fingerprint, self.manifest.layout):
            raise DataError(f"cache: {side} is missing or belongs to another cache, format or record layout than "
                            f"{self.folder / MANIFEST}; rerun stage=cache to recompute it")
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:  # missing, truncated or not a numpy file
            raise DataError(f"cache: {path} cannot be read ({str(e).splitlines()[0]}); rerun stage=cache to "
                            "recompute it") from None
        if len(arr) != sh.rows:
            raise DataError(f"cache: {path} holds {len(arr)} rows, the manifest says {sh.rows}")
        return arr

    def _open_features(self) -> list[np.ndarray]:
        """Each shard's features, memory-mapped, checked against the manifest's shape (rows, views, width)."""
        if self.feature_dim is None:
            raise DataError(f"cache: {self.folder} stores no features (made with cache.features=false); feature "
                            "distillation from the cache needs cache.features=true")
        out = []
        for sh in self.manifest.shards:
            path = self.folder / sh.features_file
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"cache: {path} cannot be read ({str(e).splitlines()[0]}); rerun stage=cache to "
                                "recompute it") from None
            if arr.shape != (sh.rows, self.views, self.feature_dim):
                raise DataError(f"cache: {path} holds features of shape {arr.shape}, the manifest says "
                                f"{(sh.rows, self.views, self.feature_dim)}")
            out.append(arr)
        return out

    def feature(self, index: int, v: int) -> torch.Tensor:
        """The teacher's pooled feature of view v of image `index` (float32, from fp16)."""
        shard, offset = divmod(int(index), self.shard_size)
        return torch.from_numpy(self.features[shard][offset, v].astype(np.float32))

    def features_of(self, indices, view_ids) -> np.ndarray:
        """The teacher's pooled features of view view_ids[j] of image indices[j], for a whole batch at once (float32
        [b, width], from fp16; one gather per shard): `feature` of each, stacked."""
        view_ids = np.asarray(view_ids, dtype=np.int64)
        out = np.empty((len(view_ids), self.feature_dim), dtype=np.float32)
        for s, sel, offset in self._by_shard(indices):
            out[sel] = self.features[s][offset, view_ids[sel]]
        return out

    def __len__(self) -> int:
        return self.manifest.num_images

    def row(self, index: int) -> np.void:
        """One image's record (all views): the per-sample read of the training loader."""
        shard, offset = divmod(int(index), self.shard_size)
        return self.shards[shard][offset]

    @staticmethod
    def view_label(rec: np.void, v: int) -> dict[str, torch.Tensor]:
        """View v's soft label out of one record (`row`), keyed as data.TeacherRecord's fields: top-k logits
        (float32), classes, and the view's scalars (true-class logit, mean, std, the tail's logsumexps at T; a mixed
        view's partner-class logit); it travels with each training sample, so the training step reads nothing from
        the cache."""
        batch = SoftLabels.view_labels(np.asarray(rec)[None], [v])  # one definition of the fields: the batch read's
        return {name: torch.from_numpy(values[0]) if values.ndim > 1 else torch.tensor(values[0])
                for name, values in batch.items()}

    @staticmethod
    def view_labels(records: np.ndarray, view_ids) -> dict[str, np.ndarray]:
        """The soft labels of a whole batch at once: view view_ids[j] of records[j] (`rows`), picked vectorized, as
        numpy arrays with a leading batch dimension (what the loader's collate stacks them into). The one definition
        of the fields and their dtypes: `view_label` is this of one record."""
        pick = np.arange(len(records)), np.asarray(view_ids, dtype=np.int64)
        scalars = LABEL_SCALARS + (("partner_target",) if "partner_target" in records.dtype.names else ())
        return {"logits": records["logits"][pick].astype(np.float32),
                "classes": records["classes"][pick].astype(np.int64),
                **{name: records[name][pick].astype(np.float32) for name in scalars}}

    def view_fields(self) -> tuple[str, ...]:
        """The record fields that say which pixels a view is (its crop and flip; a mixed view's partner, lambda
        and box): what every teacher of an ensemble must share."""
        return ("view",) + tuple(n for n in MIX_FIELDS if n in self.shards[0].dtype.names)

    def rows(self, indices) -> np.ndarray:
        """The full records of these images (all views), in the order given: one gather per shard."""
        out = np.empty(len(indices), dtype=self.shards[0].dtype)
        for s, sel, offset in self._by_shard(indices):
            out[sel] = self.shards[s][offset]
        return out

    def _by_shard(self, indices):
        """For each shard that `indices` fall in: the shard, which of them fall in it (a mask) and their rows in it;
        one gather per shard reads them."""
        shard, offset = np.divmod(np.asarray(indices, dtype=np.int64), self.shard_size)
        for s in np.unique(shard):
            sel = shard == s
            yield int(s), sel, offset[sel]

    def nbytes(self) -> int:
        return sum((self.folder / name).stat().st_size for sh in self.manifest.shards for name, _ in sh.files())


def ensemble_problem(a: SoftLabels, b: SoftLabels, temperature: float) -> str | None:
    """Why the caches of two teachers cannot be combined (None: they can): other images, classes or views, or, for
    either, a top-k cache that holds another temperature than `temperature` (which it cannot serve)."""
    for c in (a, b):
        if not c.dense and c.temperature != temperature:
            return (f"{c.folder} keeps the top {c.topk} logits at T={c.temperature:g} and cannot serve "
                    f"kd.temperature={temperature:g}")
    (n, names), (m, others) = ((c.num_classes, c.manifest.class_names) for c in (a, b))
    if n != m:
        return f"their class counts differ ({n} and {m})"
    if names != others:
        first = next(i for i, (x, y) in enumerate(zip(names, others)) if x != y)
        return f"their class names differ (class {first}: {names[first]!r} and {others[first]!r})"
    if (len(a), a.views, a.shard_size) != (len(b), b.views, b.shard_size) or a.skipped != b.skipped:
        return f"they hold {len(a)} images x {a.views} views and {len(b)} images x {b.views} views"
    if a.view_fields() != b.view_fields():
        return "one holds mixed views (cache.mix), the other not"
    for s, (x, y) in enumerate(zip(a.shards, b.shards)):
        for name in a.view_fields():
            if not np.array_equal(x[name], y[name]):
                return f"their recorded views differ (field '{name}' in shard {s})"
    return None
