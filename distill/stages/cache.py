"""Stage 2, cache: run the teacher once over V recorded views of every training image and store its top-k logits
(and, with cache.features, its pooled pre-logit feature of each view, from the same forward).

Shards are fixed ranges of dataset indices (`cache.shard_size`), assigned round-robin to processes, and batches
never cross a shard boundary, so every file's bytes are the same whatever the process count; a rerun keeps the
shards whose checksum verifies and computes the rest, which yields the same bytes as an uninterrupted run. The
files and their format belong to softlabels.py.

A cache grows: view v of image i is drawn from (seed, i, v) and each teacher forward is one view of a fixed run of
`cache.batch_size` images from the shard's start, so the first V views of a V'-view cache are a V-view cache's
views, bit for bit. A V'-view cache whose settings match a complete V-view one (V < V') copies those V views and
runs the teacher on the V' - V new ones only.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from distill import data, faults
from distill.config import Config, DataCfg, MixCfg
from distill.data import transforms, views
from distill.registry import STAGES
from distill.store import artifacts, fingerprints, layout, softlabels
from distill.store.records import CacheRun
from distill.training import models, tricks
from distill.training.context import RunContext
from distill.training.teachers import published as published_teacher
from distill.errors import ConfigError, DataError

log = logging.getLogger("distill")


@functools.lru_cache(maxsize=4)
def _blank_jpeg(size: int) -> np.ndarray:
    """A black JPEG of the input size: what an image left out (on_bad_image=skip) decodes to on the device path."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size)).save(buf, format="JPEG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


class ViewItems(Dataset):
    """Item i: views `first_view` .. V-1 of training image i, drawn from (seed, i, v), applied (uint8).

    With `mix`, a train view may be mixed with a partner image (its index, its own crop/flip, and lambda or the
    cutmix box are drawn from the same generator and stored), so the teacher labels the mixed image itself.
    With `given` (the folder of a complete cache of these images, V views, mixed when `mix` is), the views are
    not drawn: each is that cache's recorded view, every parameter as stored, and the images it leaves out are
    left out here too (a published cache's, for the local teachers of its ensemble)."""

    def __init__(self, images: data.Images, cfg: DataCfg, num_views: int, eval_view: bool, seed: int,
                 mix: MixCfg | None = None, first_view: int = 0, given: Path | None = None):
        self.images, self.cfg, self.num_views, self.eval_view, self.seed = images, cfg, num_views, eval_view, seed
        self.skip_bad = cfg.on_bad_image == "skip"  # an image that fails to decode is left out, as every stage does
        self.mix = mix if mix is not None and mix.on else None
        self.first_view = first_view  # > 0 when growing a cache: views below it are already labelled
        self.given, self._given = given, None

    def __len__(self) -> int:
        return len(self.images)

    def __getstate__(self):
        return self.__dict__ | {"_given": None}  # each loader worker maps the given cache itself

    @property
    def given_views(self) -> softlabels.SoftLabels:
        """The cache whose recorded views these are (`given`), memory-mapped on first use."""
        if self._given is None:
            self._given = softlabels.SoftLabels(self.given)
        return self._given

    def left_out(self, i: int) -> bool:
        """Whether image i is left out because the cache whose views these are (`given`) leaves it out."""
        return self.given is not None and i in self.given_views.skipped

    def draw(self, i: int, hw: tuple[int, int], partner_hw) -> dict[str, np.ndarray]:
        """The stored parameters of views `first_view` .. V-1 of image i, of size `hw` (the record fields other
        than the teacher's), row 0 being view `first_view`; `partner_hw(j)` is partner j's size, None for an
        image left out. With `given`: that cache's recorded parameters of these views, as stored."""
        first, s = self.first_view, self.cfg.image_size
        if self.given is not None:
            rec = self.given_views.row(i)
            return {name: np.array(rec[name][first:]) for name in self.given_views.view_fields()}
        n = self.num_views - first
        out = {"view": np.tile(views.EVAL_VIEW, (n, 1))}
        if self.mix:
            out |= {"partner": np.full(n, -1, np.int32), "partner_view": np.tile(views.EVAL_VIEW, (n, 1)),
                    "lam": np.ones(n, np.float32), "box": np.zeros((n, 4), np.int16)}
        for v in range(max(first, 1 if self.eval_view else 0), self.num_views):
            rng, r = views.rng_for(self.seed, i, v), v - first
            out["view"][r] = views.draw(self.cfg, rng, hw)
            drawn = tricks.draw_lam(rng, self.mix, s, s) if self.mix else None
            if drawn is not None:
                j = int(rng.integers(len(self.images)))
                size = partner_hw(j)
                out["partner_view"][r] = views.draw(self.cfg, rng, size or (s, s))
                if size is not None:  # a partner that fails to decode (skipped) leaves the view unmixed
                    out["partner"][r] = j
                    out["lam"][r], out["box"][r] = drawn[0], drawn[1] or (0, 0, 0, 0)
        return out

    def __getitem__(self, i: int) -> dict:
        """uint8 views of image i (and of its partners, for mixed views) with their stored parameters; `bad` marks
        an image left out (its views are rendered from a blank image and its records cleared). With
        data.renderer=device, the parameters only: the views are rendered per batch on the device."""
        if self.cfg.renderer == "device":
            return self._params_only(i)
        img, decoded = None if self.left_out(i) else self.images.fetch(i, self.skip_bad), {}
        bad = img is None
        if bad:
            img = torch.zeros(3, self.cfg.image_size, self.cfg.image_size, dtype=torch.uint8)

        def load(j: int) -> torch.Tensor | None:  # each partner decoded once per item
            if j not in decoded:
                decoded[j] = self.images.fetch(j, self.skip_bad)
            return decoded[j]

        rec = self.draw(i, tuple(img.shape[-2:]), lambda j: None if load(j) is None else tuple(load(j).shape[-2:]))
        item = {"image": views.apply_all(img, rec["view"], self.cfg), **self._fields(i, bad, rec)}
        if self.mix:
            blank = torch.zeros_like(item["image"][0])
            item["mixed"]["image"] = torch.stack([
                views.apply(load(int(j)), rec["partner_view"][v], self.cfg) if j >= 0 and not self.left_out(i)
                else blank  # a left-out image's given record is cleared: its partner is no image to load
                for v, j in enumerate(rec["partner"])])
        return item

    @staticmethod
    def _fields(i: int, bad: bool, rec: dict[str, np.ndarray]) -> dict:
        """The fields of a data.CacheBatch item from `draw`'s parameters (the record fields named as the batch's)."""
        tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in rec.items()}
        item = {"index": i, "bad": bad, "view": tensors["view"]}
        if "partner" in rec:
            item["mixed"] = {"index": tensors["partner"], "view": tensors["partner_view"], "lam": tensors["lam"],
                             "box": tensors["box"]}
        return item

    def _params_only(self, i: int) -> dict:
        if self.mix and self.images.pixels is None:
            raise DataError("cache.mix: mixed views with data.renderer=device need the split decoded into memory "
                            "(data.decode_mb); use data.renderer=cpu")
        size = self.cfg.image_size
        source = None if self.left_out(i) else self.images.view_source_or_skip(i, self.skip_bad)
        bad = source is None
        if bad:  # as the CPU path: views of a blank image, records cleared
            source = (size, size), (_blank_jpeg(size) if self.images.pixels is None else None)
        hw, jpeg = source
        # a partner is only drawn for mixed views, which need a decoded split: every image has its size
        rec = self.draw(i, hw, lambda j: None if j in self.images.bad else tuple(self.images.pixels.shape[1:3]))
        item = self._fields(i, bad, rec)
        return item if jpeg is None else item | {"jpeg": jpeg}


@dataclass
class _Labeller:
    """The teacher over one process's shards: what stays fixed for the whole stage, and the records of a shard."""
    model: torch.nn.Module
    items: ViewItems
    to_input: transforms.ToInput
    temperature: float
    cfg: Config
    acc: Accelerator
    dtype: np.dtype
    feature_dim: int | None = None  # cache.features: the width of the pooled feature stored per view
    bar: tqdm | None = None

    @torch.inference_mode()
    def shard(self, start: int, stop: int, base: tuple | None = None
              ) -> tuple[np.ndarray, list[int], np.ndarray | None]:
        """The records of images [start, stop): views `items.first_view` .. V-1 labelled by the teacher, the views
        below copied from `base` (this shard of a smaller cache: its records and features). Each forward is one view
        of the next `cache.batch_size` images counted from the shard's start, whatever V is, so a view's logits are
        the same bits in a grown cache as in a fresh one; each view's logsumexp is taken at `temperature`. Also
        returns the images left out (data.on_bad_image=skip) and, with cache.features, the views' pooled teacher
        features ([rows, V, width] fp16)."""
        first, run, labels = self.items.first_view, self.cfg.cache.batch_size, self.items.images.labels
        n_new = self.cfg.cache.views - first
        records, bad = np.zeros(stop - start, dtype=self.dtype), np.zeros(stop - start, dtype=bool)
        features = None if self.feature_dim is None else np.zeros(
            (stop - start, self.cfg.cache.views, self.feature_dim), dtype=softlabels.FEATURE_DTYPE)
        if base is not None:
            for name in self.dtype.names:
                records[name][:, :first] = base[0][name]
            if features is not None:
                features[:, :first] = base[1]
        loader = DataLoader(Subset(self.items, range(start, stop)), batch_size=max(1, run // n_new), shuffle=False,
                            num_workers=data.workers(self.cfg.data, self.items.images),
                            pin_memory=torch.cuda.is_available(), collate_fn=data.collate_cache)
        pending, loaded, labelled = [], 0, 0
        for batch in loader:
            b = batch.view.shape[0]
            got, mixed = records[loaded:loaded + b], batch.mixed
            stored = {"view": batch.view} | ({} if mixed is None else {
                "partner": mixed.index, "partner_view": mixed.view, "lam": mixed.lam, "box": mixed.box})
            for name, value in stored.items():
                got[name][:, first:] = value.numpy()
            bad[loaded:loaded + b] = batch.bad.numpy()
            loaded += b
            x = self.to_input(self._inputs(batch, n_new))
            pending.append(x.view(b, n_new, *x.shape[1:]))
            while loaded - labelled >= run or (loaded == len(records) and loaded > labelled):  # full teacher runs
                x = torch.cat(pending)
                self._label(records, features, x[:run], labelled, start)
                labelled += len(x[:run])
                pending = [x[run:]]
        records["correct"][:, first:] = records["top1"][:, first:] == labels[start:stop, None]
        for name in softlabels.TEACHER_FIELDS:  # the teacher saw a blank: keep nothing of it
            if name in self.dtype.names:
                records[name][bad] = 0
        if features is not None:
            features[bad] = 0
        return records, (np.flatnonzero(bad) + start).tolist(), features

    def _inputs(self, batch: data.CacheBatch, n_new: int) -> data.Views:
        """One loader batch (b images x n_new views) as the flat batch of views ToInput turns into network inputs."""
        dev, b, mixed = self.acc.device, batch.view.shape[0], batch.mixed
        if batch.image is not None:  # rendered in the loader
            flat = {"image": batch.image.flatten(0, 1).to(dev, non_blocking=True)}
            partner = {} if mixed is None else {"image": mixed.image.flatten(0, 1).to(dev)}
        else:  # data.renderer=device: every view of these images rendered by to_input
            flat = {"index": batch.index.repeat_interleave(n_new), "view": batch.view.flatten(0, 1),
                    "split": torch.zeros(b * n_new, dtype=torch.long)}
            if batch.jpeg is not None:  # each file decoded once for its n_new views
                flat |= {"jpeg": batch.jpeg, "jpeg_of": torch.arange(b).repeat_interleave(n_new)}
            partner = {} if mixed is None else {"index": mixed.index.flatten(0, 1), "view": mixed.view.flatten(0, 1)}
        mixed = None if mixed is None else data.MixedView(lam=mixed.lam.flatten(0, 1), box=mixed.box.flatten(0, 1),
                                                          **partner)
        return data.Views(**flat, mixed=mixed)

    def _label(self, records: np.ndarray, features: np.ndarray | None, x: torch.Tensor, row: int, start: int) -> None:
        """The teacher's fields (and features) of every new view of images row .. row + len(x) of the shard
        (x: [b, n_new, ...])."""
        first, k, labels = self.items.first_view, self.dtype["logits"].shape[1], self.items.images.labels
        out, own = records[row:row + len(x)], torch.from_numpy(labels[start + row:start + row + len(x)])
        for j in range(x.shape[1]):
            with self.acc.autocast():
                answer = self.model(x[:, j].contiguous(memory_format=torch.channels_last))
            if features is not None:  # a models.PooledTeacher: (logits, pooled feature)
                answer, pooled = answer
                features[row:row + len(x), first + j] = pooled.float().cpu().numpy().astype(softlabels.FEATURE_DTYPE)
            logits = answer.float().cpu()
            partner_cls = None
            if "partner_target" in self.dtype.names:  # the partner's class (the image's own when unmixed)
                partner = torch.from_numpy(out["partner"][:, first + j].astype(np.int64))
                partner_cls = torch.where(partner >= 0, torch.from_numpy(labels)[partner.clamp_min(0)], own)
            for name, value in softlabels.teacher_fields(logits, own, partner_cls, k, self.temperature).items():
                out[name][:, first + j] = value.numpy()
        if self.bar is not None:
            self.bar.update(len(x))


@STAGES.register("cache", help="the teacher's top-k soft labels of V recorded views of every training image")
def run(ctx: RunContext) -> dict[str, softlabels.CacheManifest] | None:
    """Label the cache of each teacher (RunContext.teachers) with this run's settings, or reuse it when it is
    complete and every checksum holds. Every teacher labels the same views (drawn from the global seed and the cache
    settings), so an added teacher labels its own cache only; in an ensemble that holds published caches, those
    are made first and every local teacher labels their views (RunContext.views_of). {teacher name: its manifest},
    in the teachers' order; None with online KD."""
    if ctx.cfg.kd.teacher == "online" and ctx.cfg.stage != "cache":
        log.info("cache: skipped (kd.teacher=online runs the teacher every step)")
        return None
    teachers = ctx.teachers()
    published = [t for t in teachers if t.cfg.teacher.source == "published"]
    made = {t.teacher_name: _one_teacher(t) for t in published}  # first: their views are the local teachers'
    if 1 < len(published) < len(teachers):  # beside local teachers: one set of views for all
        published_teacher.check_same_views({t.teacher_key: t.cache_dir for t in published}, ctx.cfg.kd.temperature)
    made |= {t.teacher_name: _one_teacher(t) for t in teachers if t.teacher_name not in made}
    return {t.teacher_name: made[t.teacher_name] for t in teachers}


def _one_teacher(ctx: RunContext) -> softlabels.CacheManifest:
    start_all = time.perf_counter()
    published = ctx.cfg.teacher.source == "published"
    if not published:
        layout.require_trained(ctx.teacher_dir, "cache", "teacher")
    folder = ctx.cache_dir  # named by the cache's identity, computed once a run (RunContext)
    # one run labels a cache at a time; the lock beside the folder, whose bytes must not depend on who wrote them
    with artifacts.held(ctx.acc, folder, lock=folder.with_name(f".{folder.name}.lock")):
        return _from_published(ctx, folder) if published else _labelled(ctx, folder, start_all)


def _from_published(ctx: RunContext, folder: Path) -> softlabels.CacheManifest:
    """The native cache of a published one (teacher.source=published) for this data: made once, then reused."""
    made = artifacts.on_main(ctx.acc, lambda: published_teacher.native_cache(ctx.cfg, ctx.data, ctx.norm,
                                                                             ctx.cache_identity, folder))
    manifest = made or softlabels.read_manifest(folder)
    log.info(f"{layout.named('cache', ctx.teacher_name, ' ')}: {folder}, from the published cache "
             f"{ctx.cfg.teacher.path}")
    _record_run(ctx.acc, ctx.run_dir / layout.cache_record(ctx.teacher_name), folder, manifest,
                {"published": published_teacher.described(ctx.cfg.teacher.path)})
    return manifest


def _labelled(ctx: RunContext, folder: Path, start_all: float) -> softlabels.CacheManifest:
    """The complete cache in `folder`: reused when every checksum holds, else labelled (what is missing)."""
    cfg, acc, identity = ctx.cfg, ctx.acc, ctx.cache_identity
    dtype = record_dtype(cfg, ctx.num_classes)
    shard_layout = softlabels.shard_layout(dtype, cfg.cache.features)
    complete = artifacts.on_main(acc, lambda: softlabels.reusable_or_cleared(folder, folder.name, shard_layout))
    if complete is not None:
        log.info(f"{layout.named('cache', ctx.teacher_name, ' ')}: reusing {folder}")
        _record_run(acc, ctx.run_dir / layout.cache_record(ctx.teacher_name), folder, complete, None)
        return complete
    acc.wait_for_everyone()
    settings = cfg.cache
    model, _ = models.load_trained(ctx.teacher_dir, ctx.num_classes, "cache", "teacher")
    feature_dim = None
    if settings.features:
        problem = models.feature_problem(model)
        if problem:
            raise ConfigError(f"cache.features: timm cannot give the pooled feature of the teacher "
                              f"{cfg.teacher.model}: {problem}")
        feature_dim = models.feature_width(model)
    size_problem = too_big(cfg, len(ctx.data.train), dtype, feature_dim, ctx.teacher_name)
    if size_problem:
        raise ConfigError(size_problem)
    total, first, elapsed = _label_mine(ctx, identity, folder, dtype, model, feature_dim)
    acc.wait_for_everyone()
    manifest = None
    if acc.is_main_process:
        manifest = softlabels.write_manifest(folder, identity, num_images=len(ctx.data.train),
                                             class_names=ctx.data.class_names, shard_size=settings.shard_size,
                                             dtype=dtype, feature_dim=feature_dim)
        if total:
            log.info(f"cache: labelled {total} images ({total * (settings.views - first)} views) in {elapsed:.1f} s "
                     f"({total / max(elapsed, 1e-9):.0f} img/s on the main process); teacher top-1 on the cached "
                     f"views {manifest.teacher_view_top1:.2f}%")
    acc.wait_for_everyone()
    manifest = manifest or softlabels.read_manifest(folder)
    _record_run(acc, ctx.run_dir / layout.cache_record(ctx.teacher_name), folder, manifest,
                {"wall_s": time.perf_counter() - start_all, "images": total,
                 "images_per_s": total / max(elapsed, 1e-9)})
    return manifest


def record_dtype(cfg: Config, num_classes: int) -> np.dtype:
    """The record of one image in the cache these settings make."""
    mixed = cfg.cache.mix.on
    return softlabels.record_dtype(cfg.cache.views, fingerprints.kept(cfg, num_classes).k, num_classes, mixed)


def too_big(cfg: Config, num_images: int, dtype: np.dtype, feature_dim: int | None,
            teacher: str = layout.ONE_TEACHER) -> str | None:
    """The one-line refusal of teacher `teacher`'s cache over cache.max_gb (None: it fits), with what it is made
    of."""
    need = softlabels.cache_bytes(num_images, cfg.cache.views, dtype, feature_dim)
    if need <= cfg.cache.max_gb * 1e9:
        return None
    per_view = f" + {2 * feature_dim} B of features per view" if feature_dim else ""
    return (f"cache.max_gb: {layout.named('the cache', teacher, ' of teacher ')} would take {need / 1e9:.1f} GB "
            f"({num_images:,} images x {cfg.cache.views} views: {dtype.itemsize} B of soft labels per image"
            f"{per_view}), more than cache.max_gb={cfg.cache.max_gb:g}; lower cache.views, or raise cache.max_gb")


def _label_mine(ctx: RunContext, identity: softlabels.CacheIdentity, folder: Path, dtype: np.dtype,
                model: torch.nn.Module, feature_dim: int | None) -> tuple[int, int, float]:
    """This process's shards that are not done yet, labelled and written: (images labelled, first new view,
    seconds). Growing a smaller complete cache copies its views and labels only the new ones."""
    cfg, acc, settings = ctx.cfg, ctx.acc, ctx.cfg.cache
    n, temperature = len(ctx.data.train), identity.kept.temperature
    n_shards = math.ceil(n / settings.shard_size)
    mine = [s for s in range(n_shards) if s % acc.num_processes == acc.process_index]
    shard_layout = softlabels.shard_layout(dtype, settings.features)
    todo = [s for s in mine if not softlabels.shard_done(folder, s, folder.name, shard_layout)]
    total = sum(min((s + 1) * settings.shard_size, n) - s * settings.shard_size for s in todo)
    base = softlabels.cache_to_grow_from(Path(settings.root), identity) if todo else None
    first = base[1].views if base is not None else 0
    log.info(f"cache: {n} images x {settings.views} views, top-{identity.kept.k} at T={temperature:g}, "
             f"{n_shards} shards ({len(mine) - len(todo)} of this process's {len(mine)} already done) -> {folder}")
    if base is not None:
        log.info(f"cache: growing {base[0]} ({first} views): the teacher labels the {settings.views - first} new "
                 f"views of each image ({total * (settings.views - first)} forwards), the first {first} are copied")
    items = ViewItems(ctx.data.images["train"], cfg.data, settings.views, settings.eval_view, cfg.seed, settings.mix,
                      first, ctx.views_of.cache_dir if ctx.views_of is not None else None)
    teacher = models.frozen(models.PooledTeacher(model) if feature_dim else model, acc.device)
    labeller = _Labeller(models.compiled(teacher, settings.compile), items, ctx.to_input, temperature, cfg, acc, dtype,
                         feature_dim)
    start = time.perf_counter()
    with tqdm(total=total, desc="cache", unit="img", disable=not acc.is_main_process, dynamic_ncols=True) as bar:
        labeller.bar = bar
        for written, s in enumerate(todo, start=1):
            lo, hi = s * settings.shard_size, min((s + 1) * settings.shard_size, n)
            old = None
            if base is not None:
                old = (softlabels.shard_records(base[0], s),
                       softlabels.shard_features(base[0], s) if feature_dim else None)
            softlabels.write_shard(folder, s, lo, *labeller.shard(lo, hi, old), fp=folder.name)
            faults.point("cache", written)  # tests and chaos runs: an interruption after this shard
    return total, first, time.perf_counter() - start


def _record_run(acc: Accelerator, record: Path, folder: Path, manifest: softlabels.CacheManifest,
                timing: dict | None) -> None:
    """This run's view of the cache (which folder, how long it took) in `record` beside the run; never inside the
    cache, whose bytes must not depend on who computed them."""
    if acc.is_main_process:
        previous = layout.read_cache_record(record)
        kept = previous if previous is not None and previous.folder == str(folder) else CacheRun(str(folder))
        replace(kept, reused=timing is None or "published" in timing, skipped_images=len(manifest.skipped),
                **(timing or {})).write(record)
