"""The soft-label cache's format: the record, the shard files, the manifest, and the memory-mapped reader.

The only module that reads or writes a cache folder (the cache stage computes records and hands them here):

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
from pathlib import Path

import numpy as np
import torch

from distill import faults, files
from distill.data import views
from distill.errors import DataError
from distill.methods.common.standardize import standardize

log = logging.getLogger("distill")

FORMAT_VERSION = 6  # 2: one view per teacher forward (growable); 3: + true-class logit, logit mean/std, lse of
# z-scores; 4: the tail's own logsumexps (classes outside the top k and the view's classes), so that a reader never
# forms 1 - sum(q), which cancels for a confident teacher; 5: the inputs name cache.features also when false (its
# caches say 4: the number was not raised with it); 6: sidecars and manifest sealed, each sidecar names the cache's
# fingerprint and record layout

MIX_FIELDS = ("partner", "partner_view", "lam", "box")

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
    bad = _failing_files({"file": _shard(folder, s, "npy").name} | side, folder)
    if bad:
        log.warning(f"cache: {_fault(folder / bad[0])}; recomputing shard {s}")
        return False
    return True


def _shard_files(sh: dict) -> list[tuple[str, str]]:
    """(file, sha256) of each file of one shard entry: its records, and its features when the cache has them."""
    out = [(sh["file"], sh["sha256"])]
    return out + [(sh["features_file"], sh["features_sha256"])] if "features_file" in sh else out


def _failing_files(sh: dict, folder: Path) -> list[str]:
    """The files of one shard entry that are missing or fail their checksum."""
    return [name for name, sha in _shard_files(sh)
            if not (folder / name).exists() or files.sha256(folder / name) != sha]


def _fault(path: Path) -> str:
    """What is wrong with a file `_failing_files` named."""
    return f"{path} {'fails its checksum' if path.exists() else 'is missing'}"


def failing(shards: list[dict], folder: Path) -> list[dict]:
    """The shard entries ({file, sha256[, features_file, features_sha256]}) with a file missing or failing its
    checksum."""
    return [sh for sh in shards if _failing_files(sh, folder)]


MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> dict | None:
    """The cache's manifest, or None while it is incomplete: the one way this module reads it. One of this format
    changed since it was written raises one line naming it."""
    return _read(Path(folder) / MANIFEST, Path(folder))


def _remove_shard(folder: Path, sh: dict) -> None:
    """A shard's files (records, features) and its sidecar."""
    for name, _ in _shard_files(sh):
        (folder / name).unlink(missing_ok=True)
    (folder / sh["file"].replace(".npy", ".json")).unlink(missing_ok=True)


def reusable_or_cleared(folder: Path, fp: str, layout: dict) -> dict | None:
    """The manifest when the cache in `folder` is complete, names `fp` and `layout`, and every shard checks out;
    otherwise clear what must not be trusted (temporary files, a stale manifest, shards that fail their checksum,
    shards of another cache or format) and return None. A manifest or sidecar changed by hand raises."""
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob("*.tmp"):  # left by a killed writer: never complete
        tmp.unlink()
    manifest = read_manifest(folder)
    if manifest is not None and not _ours(manifest, fp, layout):
        log.warning(f"cache: {folder}/manifest.json is from format {manifest.get('format_version')} or another "
                    "cache; recomputing")
        (folder / MANIFEST).unlink()
        manifest = None
    if manifest is not None:
        bad = [(sh, names) for sh in manifest["shards"] if (names := _failing_files(sh, folder))]
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
            _remove_shard(folder, {"file": path.with_suffix(".npy").name, "sha256": None}
                          | {k: side[k] for k in ("features_file", "features_sha256") if k in side})
            foreign.append(path.name)
    if foreign:
        log.warning(f"cache: {folder}: {', '.join(foreign)} belong to another cache, format or record layout (a "
                    f"folder renamed or moved?); recomputing {'it' if len(foreign) == 1 else 'them'}")


def write_manifest(folder: Path, fp: str, identity: dict, *, num_images: int, num_classes: int,
                   class_names: list[str], views: int, topk: int, temperature: float, shard_size: int,
                   dtype: np.dtype, feature_dim: int | None = None) -> dict:
    """The whole cache's commit marker, from the shards' sidecars, with the teacher's top-1 over the views;
    `feature_dim`: the width of the pooled features it stores (None: none)."""
    shards, correct, views_total, skipped = [], 0, 0, []
    layout = shard_layout(dtype, feature_dim is not None)
    for s in range(math.ceil(num_images / shard_size)):
        side = _read(_shard(folder, s, "json"), folder)
        if side is None or not _ours(side, fp, layout):
            raise DataError(f"cache: shard {s} is missing after every process finished; rerun stage=cache")
        shards.append({"file": _shard(folder, s, "npy").name, "start": side["start"], "rows": side["rows"],
                       "sha256": side["sha256"]}
                      | {k: side[k] for k in ("features_file", "features_sha256") if k in side})
        correct += int(np.load(folder / shards[-1]["file"], mmap_mode="r")["correct"].sum())
        skipped += side.get("skipped", [])
        views_total += (side["rows"] - len(side.get("skipped", []))) * views
    manifest = {"format_version": FORMAT_VERSION, "fingerprint": fp, "layout": layout, "inputs": identity,
                "num_images": num_images,
                "num_classes": num_classes, "class_names": class_names, "views": views, "topk": topk,
                "dense": topk >= num_classes, "temperature": temperature, "shard_size": shard_size,
                "record": {name: [dtype[name].base.str, list(dtype[name].shape)] for name in dtype.names},
                "record_bytes": dtype.itemsize, "features": None if feature_dim is None else {
                    "dim": feature_dim, "dtype": FEATURE_DTYPE, "bytes_per_view": feature_dim * 2},
                "teacher_view_top1": 100.0 * correct / max(views_total, 1),
                "skipped": skipped, "shards": shards}
    return files.write_sealed(folder / MANIFEST, manifest)


def cache_to_grow_from(root: Path, identity: dict) -> tuple[Path, dict] | None:
    """The complete cache under `root` with the most views below `identity`'s and otherwise the same inputs: the
    one to grow from. Its checksums are verified; a cache that fails them is passed over."""
    views_key = "cache.views"
    same = json.loads(json.dumps({k: v for k, v in identity.items() if k != views_key}))  # as the manifest holds it
    found = []
    for path in root.glob(f"*/{MANIFEST}"):
        manifest = read_manifest(path.parent)
        theirs = (manifest or {}).get("inputs") or {}
        fewer = theirs.get(views_key, identity[views_key]) < identity[views_key]
        if fewer and {k: v for k, v in theirs.items() if k != views_key} == same:
            found.append((theirs[views_key], path.parent, manifest))
    for _, folder, manifest in sorted(found, key=lambda f: -f[0]):
        if not failing(manifest["shards"], folder):
            return folder, manifest
        log.warning(f"cache: {folder} fails its checksums; not growing from it")
    return None


def shard_records(folder: Path, s: int) -> np.ndarray:
    """Shard s of a complete cache, memory-mapped."""
    return np.load(_shard(folder, s, "npy"), mmap_mode="r")


def shard_features(folder: Path, s: int) -> np.ndarray:
    """The features of shard s of a complete cache that stores them ([rows, V, width] fp16), memory-mapped."""
    return np.load(_shard(folder, s, "npy", "features"), mmap_mode="r")


FEATURE_DTYPE = "<f2"


def cache_bytes(num_images: int, views: int, dtype: np.dtype, feature_dim: int | None) -> int:
    """What a cache's files take on disk (to within the .npy headers and the sidecars): one record per image, and
    2 bytes x feature_dim per view when it stores features."""
    return num_images * (dtype.itemsize + (views * feature_dim * 2 if feature_dim else 0))


# ---------------------------------------------------------------- reading

class SoftLabels:
    """Read side: shards memory-mapped (never read whole into RAM), one image's record read per sample; with
    `features`, the shards' feature files too (the cache must store them)."""

    def __init__(self, folder: str | Path, verify: bool = False, features: bool = False,
                 fingerprint: str | None = None):
        """`verify`: every shard's checksums and sidecar checked (one of another cache refused); `fingerprint`: the
        cache these settings make, which the manifest must name (a folder renamed or moved is refused)."""
        self.folder = Path(folder)
        self.manifest = manifest = self._manifest(fingerprint)
        self.shard_size, self.num_classes = manifest["shard_size"], manifest["num_classes"]
        self.views, self.topk, self.temperature = manifest["views"], manifest["topk"], manifest["temperature"]
        self.dense = self.topk >= self.num_classes
        self.skipped = set(manifest.get("skipped", []))  # images left out (failed to decode): no soft labels
        self.shards = [self._open(sh, verify) for sh in manifest["shards"]]
        self.feature_dim = (manifest.get("features") or {}).get("dim")
        self.features = self._open_features() if features else None

    def _manifest(self, fingerprint: str | None) -> dict:
        """The folder's manifest: complete, of this format, sealed, and naming `fingerprint` when given."""
        manifest = read_manifest(self.folder)
        if manifest is None:
            what = "is incomplete" if self.folder.is_dir() else "does not exist yet"
            raise DataError(f"cache: {self.folder} {what} (no manifest.json): no soft labels for these settings; "
                            "run stage=cache")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"cache: {self.folder} is format {manifest.get('format_version')}, this distill reads "
                            f"{FORMAT_VERSION}; rerun stage=cache to rebuild it")
        if fingerprint is not None and manifest["fingerprint"] != fingerprint:
            raise DataError(f"cache: {self.folder} holds the cache {manifest['fingerprint']}, not {fingerprint} (a "
                            "folder renamed or moved?); move it back, or rerun stage=cache to recompute it")
        return manifest

    def _open(self, sh: dict, verify: bool) -> np.ndarray:
        """One shard's records, memory-mapped; with `verify`, its files' checksums and its sidecar checked first."""
        path = self.folder / sh["file"]
        if verify and failing([sh], self.folder):  # the records and, with features, their file
            named = " or ".join(name for name, _ in _shard_files(sh))
            raise DataError(f"cache: {self.folder}: {named} fails its checksum; rerun stage=cache to recompute it")
        side = path.with_suffix(".json")
        if verify and not _ours(_read(side, self.folder) or {}, self.manifest["fingerprint"], self.manifest["layout"]):
            raise DataError(f"cache: {side} is missing or belongs to another cache, format or record layout than "
                            f"{self.folder / MANIFEST}; rerun stage=cache to recompute it")
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:  # missing, truncated or not a numpy file
            raise DataError(f"cache: {path} cannot be read ({str(e).splitlines()[0]}); rerun stage=cache to "
                            "recompute it") from None
        if len(arr) != sh["rows"]:
            raise DataError(f"cache: {path} holds {len(arr)} rows, the manifest says {sh['rows']}")
        return arr

    def _open_features(self) -> list[np.ndarray]:
        """Each shard's features, memory-mapped, checked against the manifest's shape (rows, views, width)."""
        if self.feature_dim is None:
            raise DataError(f"cache: {self.folder} stores no features (made with cache.features=false); feature "
                            "distillation from the cache needs cache.features=true")
        out = []
        for sh in self.manifest["shards"]:
            path = self.folder / sh["features_file"]
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"cache: {path} cannot be read ({str(e).splitlines()[0]}); rerun stage=cache to "
                                "recompute it") from None
            if arr.shape != (sh["rows"], self.views, self.feature_dim):
                raise DataError(f"cache: {path} holds features of shape {arr.shape}, the manifest says "
                                f"{(sh['rows'], self.views, self.feature_dim)}")
            out.append(arr)
        return out

    def feature(self, index: int, v: int) -> torch.Tensor:
        """The teacher's pooled feature of view v of image `index` (float32, from fp16)."""
        shard, offset = divmod(int(index), self.shard_size)
        return torch.from_numpy(self.features[shard][offset, v].astype(np.float32))

    def __len__(self) -> int:
        return self.manifest["num_images"]

    def row(self, index: int) -> np.void:
        """One image's record (all views): the per-sample read of the training loader."""
        shard, offset = divmod(int(index), self.shard_size)
        return self.shards[shard][offset]

    @staticmethod
    def view_label(rec: np.void, v: int) -> dict[str, torch.Tensor]:
        """View v's soft label out of one record (`row`), keyed as data.TeacherRecord's fields: top-k logits
        (float32), classes, and the view's scalars (true-class logit, mean, std, the tail's logsumexps at T; a mixed view's partner-class
        logit); it travels with each training sample, so the training step reads nothing from the cache."""
        out = {"logits": torch.from_numpy(rec["logits"][v].astype(np.float32)),
               "classes": torch.from_numpy(rec["classes"][v].astype(np.int64)),
               **{name: torch.tensor(float(rec[name][v]))
                  for name in ("target", "mean", "std", "lse_rest", "lse_std_rest")}}
        if "partner_target" in rec.dtype.names:
            out["partner_target"] = torch.tensor(float(rec["partner_target"][v]))
        return out

    def view_fields(self) -> tuple[str, ...]:
        """The record fields that say which pixels a view is (its crop and flip; a mixed view's partner, lambda
        and box): what every teacher of an ensemble must share."""
        return ("view",) + tuple(n for n in MIX_FIELDS if n in self.shards[0].dtype.names)

    def rows(self, indices) -> np.ndarray:
        """The full records of these images (all views), in the order given."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty(len(indices), dtype=self.shards[0].dtype)
        shard, offset = np.divmod(indices, self.shard_size)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self.shards[s][offset[sel]]
        return out

    def nbytes(self) -> int:
        return sum((self.folder / name).stat().st_size for sh in self.manifest["shards"]
                   for name, _ in _shard_files(sh))


def ensemble_problem(a: SoftLabels, b: SoftLabels, temperature: float) -> str | None:
    """Why the caches of two teachers cannot be combined (None: they can): other images, classes or views, or, for
    either, a top-k cache that holds another temperature than `temperature` (which it cannot serve)."""
    for c in (a, b):
        if not c.dense and c.temperature != temperature:
            return (f"{c.folder} keeps the top {c.topk} logits at T={c.temperature:g} and cannot serve "
                    f"kd.temperature={temperature:g}")
    (n, names), (m, others) = ((c.manifest["num_classes"], c.manifest["class_names"]) for c in (a, b))
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
