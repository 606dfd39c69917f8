"""stage=publish: each teacher's cache as a Hugging Face dataset folder (store/published.py's format) in
<run>/published/ (an ensemble's teacher NAME: <run>/published-NAME/, each teacher's own distribution, never their
combination; publish.teacher=NAME: that one alone), pushed to the Hub with publish.hub_repo. Images that failed to
decode have no row; the card lists their keys. The card states the teacher's top-1 on the run's test split when it
has one (data.test_split), else on its validation split, publish.license, and the command that trains a student.

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
from distill.store import artifacts, hub, layout, published, softlabels
from distill.store.records import HeldOutScore, Meta
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
    """Every chosen teacher's cache published (checked for all of them first, by every process, before any is
    written; the main process writes, the others wait): by teacher name, its folder, rows, shards, and bytes per
    view published and native."""
    jobs = [_job(teacher_ctx) for teacher_ctx in _chosen(ctx)]
    ctx.acc.wait_for_everyone()  # no process still checks a folder the main one writes into
    done = {}
    for teacher_ctx, meta, cache, out in jobs:
        done[teacher_ctx.teacher_name] = _publish(teacher_ctx, meta, cache, out)
    if ctx.cfg.publish.hub_repo and ctx.acc.is_main_process:
        for teacher_ctx, _, _, out in jobs:
            repo = _hub_repo(teacher_ctx)
            hub.push(out, repo, "publish.hub_repo", f"the published cache is in {out}; rerun stage=publish "
                     f"publish.hub_repo={ctx.cfg.publish.hub_repo} once that is fixed", repo_type="dataset")
    return done


def _chosen(ctx: RunContext) -> list[RunContext]:
    """The teachers published: every one of the run's (an ensemble's each on its own), or publish.teacher alone;
    never a teacher that is a published cache already (one line when that leaves none)."""
    wanted = [t for t in ctx.teachers() if ctx.cfg.publish.teacher in (None, t.teacher_name)]
    own = [t for t in wanted if t.cfg.teacher.source != "published"]
    for t in wanted:
        if t.cfg.teacher.source == "published":
            log.info(f"publish: {t.teacher_key} is the published cache {t.cfg.teacher.path}: not published again")
    if not own:
        raise DataError(f"publish: {wanted[0].teacher_key} is the published cache {wanted[0].cfg.teacher.path} "
                        "already; nothing to publish")
    return own


def _hub_repo(ctx: RunContext) -> str | None:
    """The Hub repo a teacher's cache is pushed to: publish.hub_repo, an ensemble's teacher NAME's with -NAME."""
    repo, name = ctx.cfg.publish.hub_repo, ctx.teacher_name
    return repo + ("" if name == layout.ONE_TEACHER else f"-{name}") if repo else None


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
    _score(ctx, meta)  # with data.test_split: its score there is current, or one line now
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


def _score(ctx: RunContext, meta: Meta) -> tuple[float | None, str, str]:
    """The teacher's top-1 on the held-out split it was scored on: (top-1, "test" or "validation", that split in
    words). With data.test_split, the test split's (its test.json, which the report of the run that trained or
    loaded it wrote; one line when it is not current), else the validation split's (its meta.json)."""
    if ctx.data.test is None:
        scores = meta.metrics.scores if meta.metrics else None
        count = scores.val_count if scores else None
        return scores.top1 if scores else None, "validation", f"validation split ({count} images, not trained on)"
    test = HeldOutScore.kept(ctx.teacher_dir / HeldOutScore.FILE, HeldOutScore.key(meta, ctx.data.test_identity),
                             "the teacher's test score", "delete it and rerun stage=teacher to score it again")
    if test is None:
        raise DataError(f"publish: the teacher in {ctx.teacher_dir} has no score on the test split "
                        f"'{ctx.cfg.data.test_split}' for its weights; run stage=teacher first (its report scores "
                        "it), or publish without data.test_split to state its validation score")
    return test.top1, "test", f"held-out test split '{ctx.cfg.data.test_split}' ({test.count} images)"


def _publish(ctx: RunContext, meta: Meta, cache: softlabels.SoftLabels, out: Path) -> dict:
    """Write the cache's rows and card into `out` (an earlier publish of it replaced; main process, the others
    wait): its record."""
    start = time.perf_counter()
    card = artifacts.on_main(ctx.acc, lambda: _write(ctx, meta, cache, out))
    views_total = card.rows * cache.views
    per_view = published.payload_bytes(out, card) / max(views_total, 1)
    native = cache.manifest.record_bytes / cache.views
    seconds = time.perf_counter() - start
    log.info(f"publish: {out}: {card.rows} images x {cache.views} views in {len(card.shards)} shard(s); "
             f"{per_view:.1f} B/view published (parquet column data) vs {native:.1f} B/view native record "
             f"({per_view / native:.2f}x); {1e6 * seconds / max(card.rows, 1):.0f} us per image"
             + (f"; {len(card.skipped_keys)} image(s) that failed to decode left out (the card lists them)"
                if card.skipped_keys else ""))
    return {"folder": str(out), "rows": card.rows, "shards": list(card.shards), "bytes_per_view": per_view,
            "native_bytes_per_view": native, "seconds": seconds}


def _write(ctx: RunContext, meta: Meta, cache: softlabels.SoftLabels, out: Path) -> published.PublishedCard:
    """The table of the cache's rows, less the images that failed to decode, as shards in `out`, and its card."""
    bundle = ctx.data
    skipped = np.fromiter(sorted(cache.skipped), np.int64)
    rows = np.setdiff1d(np.arange(len(cache), dtype=np.int64), skipped)
    keys = content.image_digests(bundle.train, bundle.image_column)
    table = published.to_table(cache.rows(np.arange(len(cache))), keys, np.asarray(bundle.images["train"].labels))
    shutil.rmtree(out / published.DATA, ignore_errors=True)
    shards = published.write_shards(out, table.take(rows), cache.shard_size)
    card = _card(ctx, meta, cache, [keys[i] for i in rows], [keys[i].hex() for i in skipped], shards)
    (out / published.CARD).write_text(published.card_text(card, card_words(card, _command(ctx, card))))
    return card


def _card(ctx: RunContext, meta: Meta, cache: softlabels.SoftLabels, keys: list[bytes], skipped: list[str],
          shards: dict[str, str]) -> published.PublishedCard:
    """The card's fields, from the teacher's meta and score, the cache's manifest and the data settings."""
    cfg, m = ctx.cfg.data, cache.manifest
    params = {"padding": cfg.padding, "flip": cfg.flip, "scale": list(cfg.scale), "crop_pct": cfg.crop_pct,
              "eval_view": ctx.cfg.cache.eval_view}
    top1, split, words = _score(ctx, meta)
    return published.PublishedCard(
        teacher_model=meta.model, teacher_sha256=ctx.teacher_sha256, teacher_top1=top1, teacher_split=split,
        teacher_scored_on=words, ensemble_member=None if ctx.teacher_name == layout.ONE_TEACHER else ctx.teacher_name,
        temperature=m.kept.temperature, topk=m.kept.k, dense=m.kept.dense, views=m.views,
        mixed="partner" in cache.shards[0].dtype.names, num_classes=m.num_classes, class_names=m.class_names,
        image_size=cfg.image_size, transform=cfg.transform, transform_params=params,
        normalization=ctx.norm.to_json(), data_checksum=published.data_checksum(keys), rows=len(keys),
        skipped_keys=skipped, shards=shards, cache_fingerprint=m.fingerprint, distill_version=distill.__version__,
        license=ctx.cfg.publish.license)


def _command(ctx: RunContext, card: published.PublishedCard) -> str:
    """The command that trains a student from the published cache: the run's recipe and its own data overrides (as
    given on its command line), the settings that render the card's views, the temperature of a top-k cache, no
    ensemble, and the published cache as the teacher."""
    recipe, given = _launched()
    d, norm = ctx.cfg.data, ctx.norm
    render = {"data.image_size": d.image_size, "data.transform": d.transform,
              **({"data.padding": d.padding} if d.transform == "cifar" else {"data.crop_pct": d.crop_pct}),
              **({"data.per_image_norm": "true"} if norm.per_image else
                 {"data.mean": _listed(norm.mean), "data.std": _listed(norm.std)})}
    keys = [a for a in given if a.split("=", 1)[0] == "seed" or a.split("=", 1)[0].split(".")[0] == "data"]
    keys += [f"{k}={v}" for k, v in render.items() if not any(a.startswith(f"{k}=") for a in keys)]
    keys += [] if card.dense else [f"kd.temperature={card.temperature:g}"]
    keys += [] if ctx.teacher_name == layout.ONE_TEACHER else ["teachers=[]"]  # an ensemble's teacher: alone
    path = _hub_repo(ctx) or "FOLDER"
    return " ".join(["python distill/run.py", f"recipe={recipe or 'RECIPE'}", *keys, "teacher.source=published",
                     f"teacher.path={path}", "stage=student", "name=from_published"])


def _listed(values) -> str:
    """A list of floats as an override's value that reads back the very floats (Python's shortest repr)."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def _launched() -> tuple[str | None, list[str]]:
    """The recipe the run was started with (recipe=NAME) and its command-line overrides, from Hydra's record of the
    run; (None, []) when it was not started from the command line (run.execute called in a process)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, []
    hydra = HydraConfig.get()
    return str(hydra.runtime.choices.recipe), [str(a) for a in hydra.overrides.task]  # recipes/config.yaml: always one


def card_words(card: published.PublishedCard, command: str) -> str:
    """The card's text: every field in words, the replay rule, and `command`, which trains a student from it."""
    kept = (f"every logit ({card.num_classes} classes: dense, any temperature)" if card.dense
            else f"the top {card.topk} logits with the tail's logsumexps at temperature {card.temperature:g}")
    score = "not measured" if card.teacher_top1 is None else f"{card.teacher_top1:.2f}%"
    member = (f"; teacher `{card.ensemble_member}` of an ensemble: its own distribution, not the ensemble's "
              "combination" if card.ensemble_member else "")
    skipped = (f"; {len(card.skipped_keys)} training image(s) failed to decode when the cache was labelled "
               "(data.on_bad_image=skip): no row, their keys in `skipped_keys`, left out of a student's training"
               if card.skipped_keys else "")
    licence = f"`{card.license}` (the YAML `license`)" if card.license else "not stated by the publisher"
    shards = "\n".join(f"| `{f}` | `{sha}` |" for f, sha in card.shards.items())
    return f"""# Soft labels of {card.teacher_model} ({card.rows} images x {card.views} views)

A distill soft-label cache: the teacher's answer on {card.views} recorded views of each of
{card.rows} training images, so that a student can be distilled from it with no teacher at all.

- **Teacher**: timm `{card.teacher_model}`, weights sha256 `{card.teacher_sha256}`, top-1 {score}
  on the {card.teacher_scored_on} (`teacher_split`: {card.teacher_split}){member}.
- **Kept per view**: {kept}; {"mixed views (cutmix/mixup with a partner image)" if card.mixed else "plain views"}.
- **Views**: image size {card.image_size}, transform `{card.transform}` with {card.transform_params},
  normalization {card.normalization}.
- **Replay rule**: {REPLAY_RULE[card.transform]}. {MIX_RULE if card.mixed else ""}
- **Data identity**: sha256 over every row's 16-byte content key (blake2b-128 of the image file's bytes), in row
  order: `{card.data_checksum}`; {card.rows} rows, {card.num_classes} classes: {", ".join(card.class_names)}{skipped}.
- **Licence**: {licence}.
- **Format** version {card.format_version}, written by distill {card.distill_version}; columns: docs/published.md.

| shard | sha256 |
|---|---|
{shards}

## Train a student from it

    {command}

on the same images (the data settings above are those of the run that published it; matched by content key,
`teacher.covered_only=true` trains on the covered ones of a larger set){"" if "teacher.path=FOLDER" not in command
else "; FOLDER: this folder, or its Hub dataset id once pushed"}{"" if "recipe=RECIPE" not in command else
"; RECIPE: the recipe of the run that published it (it was not started from distill/run.py)"}.
"""
