"""teacher.source=published: the teacher is a published soft-label cache (store/published.py), a Hub dataset id
(teacher.path=ORG/NAME, or ORG/NAME@REVISION; fetched with huggingface_hub.snapshot_download) or a local folder. It
has no model: the cache stage turns its rows into a native cache of the user's training images (`materialize`),
matched by content key, which the student stage replays as any cache: the same records, the same training.

Checked before anything is written, each in one line: every shard's sha256 against the card, the classes, the data
settings that decide the views' pixels (image size, transform and its parameters, normalization), the temperature
of a top-k cache, and that every training image is covered (teacher.covered_only=true trains on the covered ones).

In an ensemble beside local teachers, the local teachers label the published views (RunContext.views_of: the cache
stage takes each view's recorded parameters from the native cache made of the published one instead of drawing
them, and leaves out the images it leaves out); `check_ensemble` checks, before any teacher trains, that they can.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from distill import files
from distill.config import Config, TeacherCfg
from distill.data import content
from distill.data.identity import DataIdentity
from distill.errors import ConfigError, DataError
from distill.registry import TEACHER_SOURCES
from distill.store import published, softlabels
from distill.store.records import Normalization, PublishedTeacher

log = logging.getLogger("distill")

VIEWS_FROM = "views_from"  # a local teacher's cache identity beside a published one: whose views it labels


@TEACHER_SOURCES.register("published", help="a published soft-label cache (teacher.path: Hub dataset id or folder); "
                                            "no model: cached KD only")
def build(teacher: TeacherCfg, num_classes: int, key: str):
    """A published cache has no model to train or load: never built (the teacher stage passes it over)."""
    raise ConfigError(f"{key}.source=published: {teacher.path} is a published cache, not a model; it serves cached "
                      "KD (kd.teacher=cached) only")


@functools.lru_cache(maxsize=8)
def folder_of(path: str) -> Path:
    """The local folder of `path`: itself when it is a folder, else a Hub dataset id (ORG/NAME[@REVISION]) fetched
    with snapshot_download (from huggingface_hub's cache when HF_HUB_OFFLINE=1)."""
    if Path(path).is_dir():
        return Path(path).resolve()
    from huggingface_hub import snapshot_download

    repo, _, revision = path.partition("@")
    try:
        return Path(snapshot_download(repo, repo_type="dataset", revision=revision or None))
    except Exception as e:  # noqa: BLE001 - not found, offline and not cached, network: many types
        raise DataError(f"teacher.path: {path} is no local folder and cannot be fetched from the Hub "
                        f"({str(e).splitlines()[0]})") from None


def described(path: str) -> PublishedTeacher:
    """What the report and the model card say of the published cache at `path` as the teacher: its id or folder,
    revision (the Hub snapshot's; None for a local folder), teacher, and the teacher's published score."""
    card, folder = card_of(path), folder_of(path)
    revision = None if Path(path).is_dir() else folder.name
    return PublishedTeacher(path, revision, card.teacher_model, card.teacher_top1, card.teacher_scored_on)


def card_of(path: str) -> published.PublishedCard:
    """The card of the published cache at `path`."""
    return published.read_card(folder_of(path))


def identity(cfg: Config, data: DataIdentity, norm: Normalization, num_classes: int) -> softlabels.CacheIdentity:
    """The identity of the native cache made from the published one for this data: its card's teacher and data
    checksum, every shard's sha256, and this run's data."""
    card = card_of(cfg.teacher.path)
    kept = softlabels.LogitsKept(card.topk, num_classes, cfg.kd.temperature)
    settings = {softlabels.VIEWS: card.views, "published": {"data": card.data_checksum, "shards": card.shards},
                "teacher.covered_only": cfg.teacher.covered_only, "cache.shard_size": cfg.cache.shard_size}
    return softlabels.CacheIdentity(card.teacher_sha256, data, norm, kept, settings)


def check_settings(card: published.PublishedCard, cfg: Config, norm: Normalization, class_names: list[str]) -> None:
    """The run's classes, the settings that render a stored view (image size, transform, its padding or crop_pct,
    normalization) and the temperature are the card's; one line naming the first that is not."""
    if card.class_names != class_names:
        raise DataError(f"teacher.path: the published cache's classes ({card.num_classes}: "
                        f"{', '.join(card.class_names[:5])}...) are not the data's ({len(class_names)}: "
                        f"{', '.join(class_names[:5])}...)")
    d = cfg.data  # what decides a stored view's pixels (data.flip and data.scale only drew the views)
    mine = {"data.image_size": d.image_size, "data.transform": d.transform, "normalization": norm.to_json(),
            **({"data.padding": d.padding} if d.transform == "cifar" else {"data.crop_pct": d.crop_pct})}
    theirs = {"data.image_size": card.image_size, "data.transform": card.transform,
              "normalization": card.normalization, **{f"data.{k}": v for k, v in card.transform_params.items()}}
    for key, value in mine.items():
        if files.as_json(value) != files.as_json(theirs[key]):
            raise ConfigError(f"{key}: {value} renders other views than the published cache's {theirs[key]}; set "
                              f"{key}={theirs[key]}" if key != "normalization" else
                              f"data.mean/data.std: the normalization {value} is not the published cache's "
                              f"{theirs[key]}; set data.mean and data.std to its values")
    if not card.dense and card.temperature != cfg.kd.temperature:
        raise ConfigError(f"kd.temperature: {cfg.kd.temperature:g}, but the published cache keeps the top "
                          f"{card.topk} logits at T={card.temperature:g} and serves that T only; set "
                          f"kd.temperature={card.temperature:g}")


def rows_for(keys: list[bytes], table_keys: list[str], covered_only: bool,
             skipped: frozenset[str] = frozenset()) -> tuple[np.ndarray, list[int]]:
    """For each training image (its content key), the published row holding it (-1: none), and the images not
    covered; any not covered is one line unless `covered_only`, or the card lists it among the images that failed
    to decode (`skipped`: hex keys; left out as the native cache left it out)."""
    row_of = {bytes.fromhex(k): r for r, k in enumerate(table_keys)}
    rows = np.array([row_of.get(k, -1) for k in keys], dtype=np.int64)
    missing = np.flatnonzero(rows < 0).tolist()
    uncovered = [i for i in missing if keys[i].hex() not in skipped]
    if uncovered and not covered_only:
        raise DataError(f"teacher.path: the published cache covers {len(keys) - len(missing)} of the "
                        f"{len(keys)} training images ({len(uncovered)} missing; the first: training image "
                        f"{uncovered[0]}, content key {keys[uncovered[0]].hex()}); use its data, or set "
                        "teacher.covered_only=true to train on the covered images only")
    return rows, missing


def native_cache(cfg: Config, bundle, norm: Normalization, identity: softlabels.CacheIdentity,
                 folder: Path) -> softlabels.CacheManifest:
    """The native cache in `folder` (named by `identity`) of the published cache teacher.path for this data: reused
    when complete, else made: the published rows verified, checked and matched to the training images by content
    key, in the training split's order (main process)."""
    found = softlabels.read_manifest(folder)
    card = card_of(cfg.teacher.path)
    check_settings(card, cfg, norm, bundle.class_names)
    if found is not None and not softlabels.failing(found.shards, folder):
        return found
    pub = published.open_folder(folder_of(cfg.teacher.path))
    keys = content.image_digests(bundle.train, bundle.image_column)
    rows, missing = rows_for(keys, pub.table["key"].to_pylist(), cfg.teacher.covered_only,
                             frozenset(card.skipped_keys))
    dtype = softlabels.record_dtype(card.views, card.topk, card.num_classes, card.mixed)
    try:
        records = published.to_records(pub.table, dtype, np.maximum(rows, 0), {k: i for i, k in enumerate(keys)})
    except KeyError as e:
        raise DataError(f"teacher.path: a mixed view's partner (content key {e.args[0].hex()}) is not among the "
                        "training images; use the published cache's data") from None
    records[missing] = np.zeros(1, dtype=dtype)
    folder.mkdir(parents=True, exist_ok=True)
    size = cfg.cache.shard_size
    for s, start in enumerate(range(0, len(keys), size)):
        softlabels.write_shard(folder, s, start, records[start:start + size],
                               [i for i in missing if start <= i < start + size], fp=folder.name)
    if missing and cfg.teacher.covered_only:
        log.warning(f"teacher.covered_only: training on the {len(keys) - len(missing)} of {len(keys)} images the "
                    f"published cache covers ({len(missing)} left out)")
    return softlabels.write_manifest(folder, identity, num_images=len(keys), class_names=bundle.class_names,
                                     shard_size=size, dtype=dtype)


def check_ensemble(teachers: dict[str, Config], norm: Normalization, class_names: list[str]) -> None:
    """An ensemble that holds published caches beside local teachers (`teachers`: each teacher's key and its
    context's config): the local teachers label the published views, so each published cache must fit this run's
    data (check_settings) and the run's cache settings must make its records: as many views per image (cache.views)
    and mixed alike (cache.mix). One line naming the first that does not, before any teacher trains; nothing to
    check without local teachers or without published ones (the cache stage checks a published cache alone)."""
    published = {key: cfg for key, cfg in teachers.items() if cfg.teacher.source == "published"}
    if not published or len(published) == len(teachers):
        return
    for key, cfg in published.items():
        card, where = card_of(cfg.teacher.path), f"the published cache {key} ({cfg.teacher.path})"
        check_settings(card, cfg, norm, class_names)
        if card.views != cfg.cache.views:
            raise ConfigError(f"cache.views: {cfg.cache.views}, but {where} holds {card.views} views per image, "
                              f"which the ensemble's local teachers label too; set cache.views={card.views}")
        if card.mixed != cfg.cache.mix.on:
            raise ConfigError(
                f"cache.mix: {where} holds mixed views (a partner, lambda and box each), which the ensemble's local "
                "teachers label too; set cache.mix.cutmix_alpha or cache.mix.mixup_alpha above 0 (the views come "
                "from the published cache)" if card.mixed else
                f"cache.mix: {where} holds unmixed views, which the ensemble's local teachers label too; set "
                "cache.mix.mixup_alpha=0 and cache.mix.cutmix_alpha=0")


def check_same_views(caches: dict[str, Path], temperature: float) -> None:
    """The native caches made of an ensemble's published caches (teacher key -> folder, the first the one whose
    views its local teachers label) hold the very same views (softlabels.ensemble_problem); one line naming the
    first two that do not, before any local teacher labels."""
    (first, folder), *others = caches.items()
    views = softlabels.SoftLabels(folder)
    for key, other in others:
        problem = softlabels.ensemble_problem(views, softlabels.SoftLabels(other), temperature)
        if problem:
            raise DataError(f"{key}: the published caches {first} and {key} cannot be labelled beside local "
                            f"teachers together: {problem}; an ensemble's published caches must hold the same views "
                            "(e.g. each teacher's of one published ensemble), which its local teachers label")
