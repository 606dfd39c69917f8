"""stage=publish: each teacher's cache as a Hugging Face dataset folder (store/published.py's format) in
<run>/published/ (an ensemble's teacher NAME: <run>/published-NAME/: each teacher's own distribution, not their
combination), pushed to the Hub with publish.hub_repo.

Run only when asked (registry.STAGES' on_request), alone: it reads the teacher and the cache the other stages wrote
and refuses, before any work, when either is missing, or when its folder holds anything but an earlier publish of
the same cache.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

import distill
from distill.data import content
from distill.errors import DataError
from distill.registry import STAGES
from distill.store import hub, layout, published, softlabels
from distill.store.records import Meta
from distill.training.context import RunContext

log = logging.getLogger("distill")

REPLAY_RULE = {
    "cifar": "resize the decoded RGB image to image_size x image_size (antialiased bilinear; skipped when it has that "
             "size), zero-pad it by `padding` pixels on every side, and take the image_size x image_size window at "
             "(top, left) of the padded image (kind 0, the eval view: the unpadded image); flip=1 mirrors it "
             "left-right",
    "imagenet": "kind 1: crop the box (top, left, height, width) of the decoded RGB image in source pixels and resize "
                "it to image_size x image_size (antialiased bilinear); kind 0 (the eval view): resize the shorter "
                "side to round(image_size / crop_pct) and take the centre image_size x image_size; flip=1 mirrors it "
                "left-right",
}
MIX_RULE = ("A mixed view (partner_key not null) is mixed with the partner image's own view (partner_kind ... "
            "partner_flip, replayed alike): cutmix when box (y0, x0, y1, x1) is not all zero (the box's pixels are "
            "the partner's), else mixup: lam * view + (1 - lam) * partner view, in float, before normalization.")


@STAGES.register("publish", help="write each teacher's cache as a Hugging Face dataset folder (parquet and a dataset "
                                 "card); publish.hub_repo pushes it")
def run(ctx: RunContext) -> dict[str, dict]:
    """Every teacher's cache published (checked for all of them first, before any is written): by teacher name,
    its folder, rows, shards, and bytes per view published and native."""
    jobs = [_job(teacher_ctx) for teacher_ctx in ctx.teachers()]
    done = {}
    for teacher_ctx, meta, cache, out in jobs:
        done[teacher_ctx.teacher_name] = _publish(teacher_ctx, meta, cache, out)
    if ctx.cfg.publish.hub_repo and ctx.acc.is_main_process:
        for teacher_ctx, _, _, out in jobs:
            name = teacher_ctx.teacher_name
            repo = ctx.cfg.publish.hub_repo + ("" if name == layout.ONE_TEACHER else f"-{name}")
            hub.push(out, repo, "publish.hub_repo", f"the published cache is in {out}; rerun stage=publish "
                     f"publish.hub_repo={ctx.cfg.publish.hub_repo} once that is fixed", repo_type="dataset")
    return done


def _job(ctx: RunContext) -> tuple[RunContext, Meta, softlabels.SoftLabels, Path]:
    """A teacher's trained meta, its complete cache (checksums verified) and the folder it is published into
    (checked free); one line otherwise."""
    meta = layout.require_trained(ctx.teacher_dir, "publish", "teacher")
    folder = ctx.cache_dir
    if softlabels.read_manifest(folder) is None:
        raise DataError(f"publish: no complete cache for these settings in {folder} (no manifest.json); run "
                        "stage=cache first, with the settings you publish")
    cache = softlabels.SoftLabels(folder, verify=True, fingerprint=folder.name)
    out = ctx.run_dir / layout.named("published", ctx.teacher_name)
    _check_free(out, cache.manifest.fingerprint)
    return ctx, meta, cache, out


def _check_free(out: Path, fingerprint: str) -> None:
    """`out` is missing, empty or an earlier publish of the cache `fingerprint`; one line otherwise."""
    if not out.exists() or not any(out.iterdir()):
        return
    try:
        earlier = published.read_card(out).cache_fingerprint
    except DataError:
        earlier = None
    if earlier != fingerprint:
        held = f"a publish of the cache {earlier[:12]}" if earlier else "other files"
        raise DataError(f"publish: {out} holds {held}, not of this cache ({fingerprint[:12]}); move it away or "
                        "delete it to publish here")


def _publish(ctx: RunContext, meta: Meta, cache: softlabels.SoftLabels, out: Path) -> dict:
    """Write the cache's rows and card into `out` (an earlier publish of it replaced): its record."""
    start = time.perf_counter()
    bundle = ctx.data
    rows = np.setdiff1d(np.arange(len(cache), dtype=np.int64), np.fromiter(cache.skipped, np.int64))
    keys = content.image_digests(bundle.train, bundle.image_column)
    records = cache.rows(np.arange(len(cache)))
    labels = np.asarray(bundle.images["train"].labels)
    table = published.to_table(records, keys, labels).take(rows)
    if ctx.acc.is_main_process:
        shutil.rmtree(out / published.DATA, ignore_errors=True)
        shards = published.write_shards(out, table, cache.shard_size)
        card = _card(ctx, meta, cache, [keys[i] for i in rows], shards)
        (out / published.CARD).write_text(published.card_text(card, card_words(card, ctx.cfg.name)))
    ctx.acc.wait_for_everyone()
    card = published.read_card(out)
    views_total = len(rows) * cache.views
    per_view = published.payload_bytes(out, card) / max(views_total, 1)
    native = cache.manifest.record_bytes / cache.views
    seconds = time.perf_counter() - start
    log.info(f"publish: {out}: {len(rows)} images x {cache.views} views in {len(card.shards)} shard(s); "
             f"{per_view:.1f} B/view published (parquet column data) vs {native:.1f} B/view native record "
             f"({per_view / native:.2f}x); {1e6 * seconds / max(len(rows), 1):.0f} us per image")
    return {"folder": str(out), "rows": len(rows), "shards": list(card.shards), "bytes_per_view": per_view,
            "native_bytes_per_view": native, "seconds": seconds}


def _card(ctx: RunContext, meta: Meta, cache: softlabels.SoftLabels, keys: list[bytes],
          shards: dict[str, str]) -> published.PublishedCard:
    """The card's fields, from the teacher's meta, the cache's manifest and the data settings."""
    cfg, m = ctx.cfg.data, cache.manifest
    params = {"padding": cfg.padding, "flip": cfg.flip, "scale": list(cfg.scale), "crop_pct": cfg.crop_pct,
              "eval_view": ctx.cfg.cache.eval_view}
    scores = meta.metrics.scores if meta.metrics else None
    return published.PublishedCard(
        teacher_model=meta.model, teacher_sha256=ctx.teacher_sha256, teacher_top1=scores.top1 if scores else None,
        teacher_scored_on=f"validation split ({scores.val_count if scores else None} images)",
        temperature=m.kept.temperature,
        topk=m.kept.k, dense=m.kept.dense, views=m.views, mixed="partner" in cache.shards[0].dtype.names,
        num_classes=m.num_classes, class_names=m.class_names, image_size=cfg.image_size, transform=cfg.transform,
        transform_params=params, normalization=ctx.norm.to_json(), data_checksum=published.data_checksum(keys),
        rows=len(keys), shards=shards, cache_fingerprint=m.fingerprint, distill_version=distill.__version__)


def card_words(card: published.PublishedCard, name: str) -> str:
    """The card's text: every field in words, the replay rule, and how to train a student from it."""
    kept = (f"every logit ({card.num_classes} classes: dense, any temperature)" if card.dense
            else f"the top {card.topk} logits with the tail's logsumexps at temperature {card.temperature:g}")
    shards = "\n".join(f"| `{f}` | `{sha}` |" for f, sha in card.shards.items())
    return f"""# Soft labels of {card.teacher_model} ({card.rows} images x {card.views} views)

A distill soft-label cache: the teacher's answer on {card.views} recorded views of each of
{card.rows} training images, so that a student can be distilled from it with no teacher at all.

- **Teacher**: timm `{card.teacher_model}`, weights sha256 `{card.teacher_sha256}`, top-1 {card.teacher_top1:.2f}%
  on the {card.teacher_scored_on}.
- **Kept per view**: {kept}; {"mixed views (cutmix/mixup with a partner image)" if card.mixed else "plain views"}.
- **Views**: image size {card.image_size}, transform `{card.transform}` with {card.transform_params},
  normalization {card.normalization}.
- **Replay rule**: {REPLAY_RULE[card.transform]}. {MIX_RULE if card.mixed else ""}
- **Data identity**: sha256 over every row's 16-byte content key (blake2b-128 of the image file's bytes), in row
  order: `{card.data_checksum}`; {card.rows} rows, {card.num_classes} classes: {", ".join(card.class_names)}.
- **Format** version {card.format_version}, written by distill {card.distill_version}; columns: docs/published.md.

| shard | sha256 |
|---|---|
{shards}

## Train a student from it

    python distill/run.py recipe={name} teacher.source=published teacher.path=THIS_REPO_OR_FOLDER stage=student

(`recipe=` the recipe of the run that published it, `{name}`, or any recipe with these data settings), on the same
images (matched by content key; `teacher.covered_only=true` trains on the covered ones of a larger set).
"""
