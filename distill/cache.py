"""Stage 2, cache: run the teacher once over V recorded views of every training image and store its top-k logits.

Layout of `<cache.root>/<fingerprint>/`:
    shard-00000.npy   fixed-size records (numpy structured array, one row per image), read through mmap
    shard-00000.json  that shard's rows and sha256, written after the shard: the shard's commit marker
    manifest.json     written last, by the main process after a barrier: the whole cache's commit marker

Shards are fixed ranges of dataset indices (`cache.shard_size`), assigned round-robin to processes, and batches
never cross a shard boundary, so every file's bytes are the same whatever the process count. Each file goes to a
temporary name, is fsynced, then renamed; a rerun keeps the shards whose checksum verifies and computes the rest,
which yields the same bytes as an uninterrupted run.

A cache grows: view v of image i is drawn from (seed, i, v) and each teacher forward is one view of a fixed run of
`cache.batch_size` images from the shard's start, so the first V views of a V'-view cache are a V-view cache's
views, bit for bit. A V'-view cache whose settings match a complete V-view one (V < V') copies those V views and
runs the teacher on the V' - V new ones only.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from distill import artifacts, data, models, teacher, transforms, tricks, views
from distill.config import Config, DataCfg, MixCfg
from distill.errors import DataError

log = logging.getLogger("distill")

FORMAT_VERSION = 2  # 2: one view per teacher forward, a fixed run of images (growable)


MIX_FIELDS = ("partner", "partner_view", "lam", "box")

# The most uses per cached view (student epochs / V) at which cached KD stayed within 0.3 points of online KD's
# top-1 (mean of two seeds): V = 8 over 40 epochs, -0.10 points; V = 2 (20 uses) lost 1.69 points. Measured by
# tools/views_experiment.sh (README, "How many views").
MAX_USES_PER_VIEW = 5.0


def views_for(epochs: int) -> int:
    """The fewest cached views that keep `epochs` of student training within the rule (MAX_USES_PER_VIEW); at
    least 2, the fewest measured (view 0 is the un-augmented eval view)."""
    return max(2, math.ceil(epochs / MAX_USES_PER_VIEW))


def replay_warning(epochs: int, num_views: int, images: int) -> str | None:
    """One line when a student replays each cached view more often than the rule allows: the V that meets it and
    what labelling the missing views costs (the cache grows: only the new views are labelled)."""
    if epochs / num_views <= MAX_USES_PER_VIEW:
        return None
    need = views_for(epochs)
    return (f"cache: {epochs} epochs over {num_views} cached views replay each view {epochs / num_views:g} times, "
            f"more than the {MAX_USES_PER_VIEW:g} at which cached KD measured within 0.3 points of online KD; "
            f"cache.views={need} meets it, labelling {need - num_views} more views per image "
            f"({(need - num_views) * images:,} teacher forwards, once)")


def record_dtype(num_views: int, k: int, num_classes: int, mixed: bool = False) -> np.dtype:
    """One row per image: for each view its parameters, top-k logits (fp16) and classes, the logsumexp of all
    logits / T (fp32), and the teacher's top-1 class and whether it is right. Mixed views add the partner's index
    and view, lambda and the cutmix box (all-zero box: mixup)."""
    cls = "<i2" if num_classes <= 2**15 else "<i4"
    v = num_views
    fields = [("view", "<i2", (v, views.WIDTH)), ("logits", "<f2", (v, k)), ("classes", cls, (v, k)),
              ("lse", "<f4", (v,)), ("top1", cls, (v,)), ("correct", "u1", (v,))]
    if mixed:
        fields += [("partner", "<i4", (v,)), ("partner_view", "<i2", (v, views.WIDTH)), ("lam", "<f4", (v,)),
                   ("box", "<i2", (v, 4))]
    return np.dtype(fields)


# ---------------------------------------------------------------- fingerprint

def fingerprint_inputs(cfg: Config, bundle: data.DataBundle, norm: dict, teacher_digest: str,
                       precision: str) -> dict:
    """Everything the cached bytes depend on; the hash of this names the cache folder."""
    d = cfg.data
    geometry = {k: getattr(d, k) for k in ("image_size", "transform", "padding", "flip", "scale", "crop_pct",
                                           "per_image_norm")}
    c = cfg.cache
    return {"format_version": FORMAT_VERSION, "teacher_sha256": teacher_digest, "data": bundle.identity,
            "geometry": geometry, "normalization": norm, "views": c.views, "eval_view": c.eval_view,
            "topk": min(c.topk, bundle.num_classes), "temperature": c.temperature, "seed": cfg.seed,
            "mix": dataclasses.asdict(c.mix),
            "shard_size": c.shard_size, "batch_size": c.batch_size, "precision": precision}


# ---------------------------------------------------------------- the images the teacher labels

class ViewItems(Dataset):
    """Item i: views `first_view` .. V-1 of training image i, drawn from (seed, i, v), applied (uint8).

    With `mix`, a train view may be mixed with a partner image (its index, its own crop/flip, and lambda or the
    cutmix box are drawn from the same generator and stored), so the teacher labels the mixed image itself."""

    def __init__(self, bundle: data.DataBundle, cfg: DataCfg, norm: dict, num_views: int, eval_view: bool,
                 seed: int, mix: MixCfg | None = None):
        self.images, self.cfg, self.num_views, self.eval_view, self.seed = (bundle.images["train"], cfg, num_views,
                                                                            eval_view, seed)
        self.skip_bad = cfg.on_bad_image == "skip"  # an image that fails to decode is left out, as every stage does
        self.mix = mix if mix is not None and (mix.mixup_alpha > 0 or mix.cutmix_alpha > 0) else None
        self.finish = transforms.finish(cfg, norm["mean"], norm["std"])
        self.first_view = 0  # > 0 when growing a cache: views below it are already labelled

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int, with_label: bool = False):
        """The decoded uint8 CHW image, before any view (and its label); None for an image that fails to decode
        when data.on_bad_image=skip."""
        try:
            img = self.images.image(i)
        except DataError as e:
            if not self.skip_bad:
                raise DataError(f"{e}; set data.on_bad_image=skip to leave it out of every stage") from None
            img = None
        return (img, int(self.images.labels[i])) if with_label else img

    def draw(self, i: int, img: torch.Tensor, load) -> dict[str, np.ndarray]:
        """The stored parameters of views `first_view` .. V-1 of image i (the record fields other than the
        teacher's), row 0 being view `first_view`; `load(j)` gives partner image j."""
        first, s = self.first_view, self.cfg.image_size
        n = self.num_views - first
        out = {"view": np.tile(views.EVAL_VIEW, (n, 1))}
        if self.mix:
            out |= {"partner": np.full(n, -1, np.int32), "partner_view": np.tile(views.EVAL_VIEW, (n, 1)),
                    "lam": np.ones(n, np.float32), "box": np.zeros((n, 4), np.int16)}
        for v in range(max(first, 1 if self.eval_view else 0), self.num_views):
            rng, r = views.rng_for(self.seed, i, v), v - first
            out["view"][r] = views.draw(self.cfg, rng, tuple(img.shape[-2:]))
            drawn = tricks.draw_lam(rng, self.mix, s, s) if self.mix else None
            if drawn is not None:
                j = int(rng.integers(len(self.images)))
                partner = load(j)
                out["partner_view"][r] = views.draw(self.cfg, rng, tuple(partner.shape[-2:]) if partner is not None
                                                    else (s, s))
                if partner is not None:  # a partner that fails to decode (skipped) leaves the view unmixed
                    out["partner"][r] = j
                    out["lam"][r], out["box"][r] = drawn[0], drawn[1] or (0, 0, 0, 0)
        return out

    def to_input(self, images: torch.Tensor, partner_images: torch.Tensor | None = None, lam=None,
                 box=None) -> torch.Tensor:
        """uint8 views [N, C, s, s] -> the network input: normalised (batched, on any device), then blended with
        the partner views where a partner is given (lam < 1 or a non-empty box)."""
        x = self.finish(images)
        if partner_images is None:
            return x
        y = self.finish(partner_images)
        lam, box = np.asarray(lam, dtype=np.float32).reshape(-1), np.asarray(box).reshape(-1, 4)
        for r in np.flatnonzero((lam < 1) | (box[:, 2] * box[:, 3] > 0)):
            b = tuple(int(v) for v in box[r])
            x[r] = tricks.blend(x[r], y[r], float(lam[r]), b if b[2] * b[3] else None)
        return x

    def render(self, img: torch.Tensor, rec, v: int, partner: torch.Tensor | None = None) -> torch.Tensor:
        """The network input of view v, replayed from the stored parameters `rec` (a record or `draw`'s dict)."""
        x = views.apply(img, rec["view"][v], self.cfg)[None]
        if partner is None:
            return self.to_input(x)[0]
        y = views.apply(partner, rec["partner_view"][v], self.cfg)[None]
        return self.to_input(x, y, rec["lam"][v], rec["box"][v])[0]

    def __getitem__(self, i: int) -> dict:
        """uint8 views of image i (and of its partners, for mixed views) with their stored parameters; `bad` marks
        an image left out (its views are rendered from a blank image and its records cleared)."""
        (img, label), decoded = self.image(i, with_label=True), {}
        bad = img is None
        if bad:
            img = torch.zeros(3, self.cfg.image_size, self.cfg.image_size, dtype=torch.uint8)

        def load(j: int) -> torch.Tensor:  # each partner decoded once per item
            if j not in decoded:
                decoded[j] = self.image(j)
            return decoded[j]

        rec = self.draw(i, img, load)
        item = {"images": views.apply_all(img, rec["view"], self.cfg), "label": label, "index": i, "bad": bad,
                **{k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in rec.items()}}
        if self.mix:
            blank = torch.zeros_like(item["images"][0])
            item["partner_images"] = torch.stack([
                views.apply(load(int(j)), rec["partner_view"][v], self.cfg) if j >= 0 else blank
                for v, j in enumerate(rec["partner"])])
        return item


# ---------------------------------------------------------------- writing

def _write_npy(path: Path, records: np.ndarray) -> str:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, records)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return artifacts.sha256(path)


def _shard_ok(folder: Path, s: int) -> bool:
    side = artifacts.read_json(folder / f"shard-{s:05d}.json")
    npy = folder / f"shard-{s:05d}.npy"
    if side is None or not npy.exists():
        return False
    if artifacts.sha256(npy) != side["sha256"]:
        log.warning(f"cache: shard {s} of {folder} fails its checksum; recomputing it")
        return False
    return True


@torch.inference_mode()
def _label_shard(model, items: ViewItems, start: int, stop: int, cfg: Config, acc: Accelerator, bar,
                 dtype: np.dtype, base: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
    """The records of images [start, stop): views `items.first_view` .. V-1 labelled by the teacher, the views
    below copied from `base` (this shard of a smaller cache). Each forward is one view of the next
    `cache.batch_size` images counted from the shard's start, whatever V is, so a view's logits are the same bits
    in a grown cache as in a fresh one. Also returns the images left out (data.on_bad_image=skip)."""
    c, first = cfg.cache, items.first_view
    n_new, k, run = c.views - first, dtype["logits"].shape[1], c.batch_size
    records = np.zeros(stop - start, dtype=dtype)
    if base is not None:
        for name in dtype.names:
            records[name][:, :first] = base[name]
    bad = np.zeros(stop - start, dtype=bool)
    loader = DataLoader(Subset(items, range(start, stop)), batch_size=max(1, run // n_new), shuffle=False,
                        num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available())

    def label(x: torch.Tensor, row: int) -> None:  # x: network inputs [b, n_new, C, s, s] of images row ..
        out = records[row:row + len(x)]
        for j in range(n_new):
            with acc.autocast():
                logits = model(x[:, j].contiguous(memory_format=torch.channels_last)).float()
            values, classes = logits.topk(k, dim=-1)
            out["logits"][:, first + j] = values.half().cpu().numpy()
            out["classes"][:, first + j] = classes.cpu().numpy()
            out["lse"][:, first + j] = torch.logsumexp(logits / c.temperature, dim=-1).cpu().numpy()
            out["top1"][:, first + j] = logits.argmax(-1).cpu().numpy()
        bar.update(len(x))

    pending, loaded, labelled = [], 0, 0
    for batch in loader:
        b = batch["images"].shape[0]
        got = records[loaded:loaded + b]
        for name in ("view",) + (MIX_FIELDS if "partner" in batch else ()):
            got[name][:, first:] = batch[name].numpy()
        bad[loaded:loaded + b] = batch["bad"].numpy()
        loaded += b
        images = batch["images"].flatten(0, 1).to(acc.device, non_blocking=True)
        if "partner_images" in batch:
            x = items.to_input(images, batch["partner_images"].flatten(0, 1).to(acc.device), batch["lam"].numpy(),
                               batch["box"].numpy())
        else:
            x = items.to_input(images)
        pending.append(x.view(b, n_new, *x.shape[1:]))
        while loaded - labelled >= run or (loaded == len(records) and loaded > labelled):
            x = torch.cat(pending)
            label(x[:run], labelled)
            labelled += len(x[:run])
            pending = [x[run:]]
    records["correct"][:, first:] = records["top1"][:, first:] == items.images.labels[start:stop, None]
    for name in ("logits", "classes", "lse", "top1", "correct"):  # the teacher saw a blank: keep nothing of it
        records[name][bad] = 0
    return records, (np.flatnonzero(bad) + start).tolist()


def run(cfg: Config, acc: Accelerator, bundle: data.DataBundle, norm: dict, run_dir: Path) -> dict | None:
    if cfg.kd.teacher == "online" and cfg.stage != "cache":
        log.info("cache: skipped (kd.teacher=online runs the teacher every step)")
        return None
    start_all = time.perf_counter()
    c = cfg.cache
    tdir = teacher.folder(cfg, run_dir)
    tmeta = artifacts.read_json(tdir / "meta.json")
    if tmeta is None:
        raise DataError(f"cache: no teacher in {tdir}; run stage=teacher first")
    inputs = fingerprint_inputs(cfg, bundle, norm, artifacts.sha256(tdir / "model.safetensors"), acc.mixed_precision)
    fp = artifacts.fingerprint(inputs)
    folder = Path(c.root) / fp
    n, k = len(bundle.train), inputs["topk"]
    n_shards = math.ceil(n / c.shard_size)
    mixed = c.mix.mixup_alpha > 0 or c.mix.cutmix_alpha > 0
    dtype = record_dtype(c.views, k, bundle.num_classes, mixed)

    status = [None]
    if acc.is_main_process:
        status = [_existing(folder, fp)]
    status = broadcast_object_list(status) if acc.num_processes > 1 else status
    if status[0] == "complete":
        log.info(f"cache: reusing {folder}")
        manifest = artifacts.read_json(folder / "manifest.json")
        _record_run(acc, run_dir, folder, manifest, None)
        return manifest
    acc.wait_for_everyone()

    model = models.create(tmeta["model"], bundle.num_classes)
    model.load_state_dict(artifacts.load_weights(tdir))
    model = models.frozen(model, acc.device)
    items = ViewItems(bundle, cfg.data, norm, c.views, c.eval_view, cfg.seed, c.mix)
    mine = [s for s in range(n_shards) if s % acc.num_processes == acc.process_index]
    todo = [s for s in mine if not _shard_ok(folder, s)]
    total = sum(min((s + 1) * c.shard_size, n) - s * c.shard_size for s in todo)
    base = _smaller_cache(Path(c.root), inputs) if todo else None
    log.info(f"cache: {n} images x {c.views} views, top-{k} at T={c.temperature}, {n_shards} shards "
             f"({len(mine) - len(todo)} of this process's {len(mine)} already done) -> {folder}")
    if base is not None:
        items.first_view = base[1]["views"]
        log.info(f"cache: growing {base[0]} ({items.first_view} views): the teacher labels the "
                 f"{c.views - items.first_view} new views of each image ({total * (c.views - items.first_view)} "
                 f"forwards), the first {items.first_view} are copied")
    start_t = time.perf_counter()
    with tqdm(total=total, desc="cache", unit="img", disable=not acc.is_main_process, dynamic_ncols=True) as bar:
        for s in todo:
            lo, hi = s * c.shard_size, min((s + 1) * c.shard_size, n)
            old = np.load(base[0] / f"shard-{s:05d}.npy", mmap_mode="r") if base is not None else None
            records, skipped = _label_shard(model, items, lo, hi, cfg, acc, bar, dtype, old)
            digest = _write_npy(folder / f"shard-{s:05d}.npy", records)
            artifacts.write_json(folder / f"shard-{s:05d}.json", {"shard": s, "start": lo, "rows": hi - lo,
                                                                  "sha256": digest, "skipped": skipped})
    elapsed = time.perf_counter() - start_t
    acc.wait_for_everyone()
    manifest = None
    if acc.is_main_process:
        manifest = _write_manifest(folder, fp, inputs, n, n_shards, dtype, bundle)
        if total:
            labelled = total * (c.views - items.first_view)
            log.info(f"cache: labelled {total} images ({labelled} views) in {elapsed:.1f} s "
                     f"({total / max(elapsed, 1e-9):.0f} img/s on the main process); teacher top-1 on the cached "
                     f"views {manifest['teacher_view_top1']:.2f}%")
    acc.wait_for_everyone()
    manifest = manifest or artifacts.read_json(folder / "manifest.json")
    _record_run(acc, run_dir, folder, manifest, {"wall_s": time.perf_counter() - start_all, "images": total,
                                                 "images_per_s": total / max(elapsed, 1e-9)})
    return manifest


def _record_run(acc: Accelerator, run_dir: Path, folder: Path, manifest: dict, timing: dict | None) -> None:
    """This run's view of the cache (which folder, how long it took) beside the run; never inside the cache,
    whose bytes must not depend on who computed them."""
    if acc.is_main_process:
        previous = artifacts.read_json(run_dir / "cache.json") or {}
        keep = previous if previous.get("folder") == str(folder) else {}
        artifacts.write_json(run_dir / "cache.json", keep | {"folder": str(folder), "reused": timing is None,
                                                             "skipped_images": len(manifest.get("skipped", []))}
                             | (timing or {}))


def _failing_shards(folder: Path, manifest: dict) -> list[dict]:
    """The manifest's shard entries whose file is missing or fails its sha256."""
    return [sh for sh in manifest["shards"] if not (folder / sh["file"]).exists()
            or artifacts.sha256(folder / sh["file"]) != sh["sha256"]]


def _smaller_cache(root: Path, inputs: dict) -> tuple[Path, dict] | None:
    """The complete cache under `root` with the most views below ours and otherwise the same inputs (teacher,
    data, geometry, k, T, seed, shards, batch, precision, format): the one to grow from. Its checksums are
    verified; a cache that fails them is passed over."""
    same = json.loads(json.dumps({k: v for k, v in inputs.items() if k != "views"}))  # as the manifest holds it
    found = []
    for path in root.glob("*/manifest.json"):
        m = artifacts.read_json(path)
        theirs = (m or {}).get("inputs") or {}
        if theirs.get("views", inputs["views"]) < inputs["views"] and \
                {k: v for k, v in theirs.items() if k != "views"} == same:
            found.append((theirs["views"], path.parent, m))
    for _, folder, m in sorted(found, key=lambda f: -f[0]):
        if not _failing_shards(folder, m):
            return folder, m
        log.warning(f"cache: {folder} fails its checksums; not growing from it")
    return None


def _existing(folder: Path, fp: str) -> str:
    """'complete' when the manifest and every shard check out; otherwise clear what must not be trusted."""
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob("*.tmp"):  # left by a killed writer: never complete
        tmp.unlink()
    manifest = artifacts.read_json(folder / "manifest.json")
    if manifest is None:
        return "partial"
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("fingerprint") != fp:
        log.warning(f"cache: {folder}/manifest.json is from format {manifest.get('format_version')} or another "
                    "fingerprint; recomputing")
        (folder / "manifest.json").unlink()
        return "partial"
    bad = _failing_shards(folder, manifest)
    if not bad:
        return "complete"
    for sh in bad:
        log.warning(f"cache: {folder / sh['file']} fails its checksum; recomputing it")
        (folder / sh["file"]).unlink(missing_ok=True)
        (folder / sh["file"].replace(".npy", ".json")).unlink(missing_ok=True)
    (folder / "manifest.json").unlink()
    return "partial"


def _write_manifest(folder: Path, fp: str, inputs: dict, n: int, n_shards: int, dtype: np.dtype,
                    bundle: data.DataBundle) -> dict:
    shards, correct, views_total, skipped = [], 0, 0, []
    for s in range(n_shards):
        side = artifacts.read_json(folder / f"shard-{s:05d}.json")
        if side is None:
            raise DataError(f"cache: shard {s} is missing after every process finished; rerun stage=cache")
        shards.append({"file": f"shard-{s:05d}.npy", "start": side["start"], "rows": side["rows"],
                       "sha256": side["sha256"]})
        correct += int(np.load(folder / shards[-1]["file"], mmap_mode="r")["correct"].sum())
        skipped += side.get("skipped", [])
        views_total += (side["rows"] - len(side.get("skipped", []))) * inputs["views"]
    manifest = {"format_version": FORMAT_VERSION, "fingerprint": fp, "inputs": inputs, "num_images": n,
                "num_classes": bundle.num_classes, "class_names": bundle.class_names, "views": inputs["views"],
                "topk": inputs["topk"], "dense": inputs["topk"] >= bundle.num_classes,
                "temperature": inputs["temperature"], "shard_size": inputs["shard_size"],
                "record": {name: [dtype[name].base.str, list(dtype[name].shape)] for name in dtype.names},
                "record_bytes": dtype.itemsize, "teacher_view_top1": 100.0 * correct / max(views_total, 1),
                "skipped": skipped, "shards": shards}
    artifacts.write_json(folder / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------- reading

class SoftLabels:
    """Read side: shards memory-mapped (never read whole into RAM), rows gathered per batch."""

    def __init__(self, folder: str | Path, verify: bool = False):
        self.folder = Path(folder)
        manifest = artifacts.read_json(self.folder / "manifest.json")
        if manifest is None:
            raise DataError(f"cache: {self.folder} has no manifest.json: it is incomplete; rerun stage=cache")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"cache: {self.folder} is format {manifest.get('format_version')}, this distill reads "
                            f"{FORMAT_VERSION}; rerun stage=cache to rebuild it")
        self.manifest = manifest
        self.shard_size, self.num_classes = manifest["shard_size"], manifest["num_classes"]
        self.views, self.topk, self.temperature = manifest["views"], manifest["topk"], manifest["temperature"]
        self.skipped = set(manifest.get("skipped", []))  # images left out (failed to decode): no soft labels
        self.shards = []
        for sh in manifest["shards"]:
            path = self.folder / sh["file"]
            if verify and artifacts.sha256(path) != sh["sha256"]:
                raise DataError(f"cache: {path} fails its checksum; rerun stage=cache to recompute it")
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:  # missing, truncated or not a numpy file
                raise DataError(f"cache: {path} cannot be read ({str(e).splitlines()[0]}); rerun stage=cache to "
                                "recompute it") from None
            if len(arr) != sh["rows"]:
                raise DataError(f"cache: {path} holds {len(arr)} rows, the manifest says {sh['rows']}")
            self.shards.append(arr)

    def __len__(self) -> int:
        return self.manifest["num_images"]

    def row(self, index: int) -> np.void:
        """One image's record (all views): the per-sample read of the training loader."""
        shard, offset = divmod(int(index), self.shard_size)
        return self.shards[shard][offset]

    @staticmethod
    def view_label(rec: np.void, v: int) -> dict[str, torch.Tensor]:
        """View v's soft label out of one record (`row`): top-k logits (float32), classes, logsumexp at T; the
        per-sample read that travels with each training sample (`student.ReplayItems`)."""
        return {"kd_logits": torch.from_numpy(rec["logits"][v].astype(np.float32)),
                "kd_classes": torch.from_numpy(rec["classes"][v].astype(np.int64)),
                "kd_lse": torch.tensor(float(rec["lse"][v]))}

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """The full records of these images (all views), in the order given."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty(len(indices), dtype=self.shards[0].dtype)
        shard, offset = np.divmod(indices, self.shard_size)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self.shards[s][offset[sel]]
        return out

    def gather(self, indices, view_ids) -> dict[str, torch.Tensor]:
        """For each (image, view): view parameters, top-k logits (float32), classes, logsumexp at T."""
        rec = self.rows(indices)
        r = np.arange(len(rec))
        v = np.asarray(view_ids, dtype=np.int64)
        return {"view": torch.from_numpy(rec["view"][r, v].astype(np.int64)),
                "logits": torch.from_numpy(rec["logits"][r, v].astype(np.float32)),
                "classes": torch.from_numpy(rec["classes"][r, v].astype(np.int64)),
                "lse": torch.from_numpy(rec["lse"][r, v])}

    def nbytes(self) -> int:
        return sum((self.folder / sh["file"]).stat().st_size for sh in self.manifest["shards"])


def folder_for(cfg: Config, bundle: data.DataBundle, norm: dict, run_dir: Path, precision: str) -> Path:
    """Where the cache for this config lives (whether or not it exists yet)."""
    digest = artifacts.sha256(teacher.folder(cfg, run_dir) / "model.safetensors")
    return Path(cfg.cache.root) / artifacts.fingerprint(fingerprint_inputs(cfg, bundle, norm, digest, precision))

