"""The batches: one type per kind, made by the collate functions of the data part and read by attribute everywhere.

    Views          what transforms.ToInput turns into the network input: uint8 pixels, or what renders them on the
                   device (view parameters, split, image indices or JPEG files); an optional MixedView
    ViewBatch      a training view or an evaluation item of a split (ImageDataset): Views + labels, indices and the
                   count of images left out (data.on_bad_image=skip)
    ReplayBatch    a replayed cached view (stages/student.py ReplayItems): ViewBatch + the view ids and one
                   TeacherRecord per teacher, in the teachers' order; a mixed view's MixedView carries its partner's
                   class, and every record the partner class's logit (the records of a batch come read at once,
                   GatheredItems, or with each item)
    CacheBatch     the cache stage's loader batch (stages/cache.py ViewItems): V views of each of b images, their
                   stored parameters and which images were left out

A part a batch must have is checked where the batch is built (BatchError), so no consumer picks another code path
for a part that is missing. Per-sample items stay plain dicts whose keys are the fields' names; `to` and
`pin_memory` let accelerate (`send_to_device`) and the DataLoader move a batch like any tensor.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import default_collate


class BatchError(ValueError):
    """A batch lacks a part its kind requires (a programming error, not a user's)."""


def _move(value, fn):
    """`fn` applied to every tensor in a field's value (a tensor, a batch part, a list of them); anything else (JPEG
    files as numpy arrays, None) stays as it is."""
    if isinstance(value, (torch.Tensor, _Part)):
        return fn(value)
    if isinstance(value, list):
        return [_move(v, fn) for v in value]
    return value


class _Part:
    """Moving a dataclass batch (or part of one) field by field: to a device, or into pinned host memory."""

    def _map(self, fn):
        return dataclasses.replace(self, **{f.name: _move(getattr(self, f.name), fn) for f in dataclasses.fields(self)})

    def to(self, device, non_blocking: bool = False):
        """The same batch with every tensor on `device` (accelerate's send_to_device calls this)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        """The same batch with every tensor in pinned host memory (the DataLoader's pin_memory calls this)."""
        return self._map(lambda t: t.pin_memory())


@dataclasses.dataclass(kw_only=True)
class MixedView(_Part):
    """A cached mixed view's second image, per row: lam < 1 mixes up, a non-empty box (top, left, height, width)
    pastes; lam = 1 with an empty box is an unmixed row. The partner comes as pixels (`image`) or as what renders it
    on the device (`index`, -1 for none, and `view`)."""
    lam: torch.Tensor
    box: torch.Tensor
    label: torch.Tensor | None = None  # the partner's class (the image's own when unmixed): the targets mix with it
    image: torch.Tensor | None = None  # uint8 [B, 3, s, s] (zeros when unmixed)
    index: torch.Tensor | None = None
    view: torch.Tensor | None = None


@dataclasses.dataclass(kw_only=True)
class TeacherRecord(_Part):
    """One teacher's soft label of each view (softlabels.SoftLabels.view_label): top-k logits (float32) and their
    classes, the true class's logit, the mean and std of all logits, the tail's logsumexps at T; a mixed view's
    partner-class logit; with cache.features, the teacher's pooled feature."""
    logits: torch.Tensor
    classes: torch.Tensor
    target: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    lse_rest: torch.Tensor
    lse_std_rest: torch.Tensor
    partner_target: torch.Tensor | None = None
    feature: torch.Tensor | None = None


@dataclasses.dataclass(kw_only=True)
class Views(_Part):
    """Views to turn into the network input (transforms.ToInput): `image` (uint8 [B, 3, s, s]), or, with
    data.renderer=device, `view` parameters, the `split` (datasets.SPLITS index) and the images' `index` in it or
    their `jpeg` files (host numpy arrays; `jpeg_of`: each view's file when one file gives several views).
    Raises BatchError when neither pixels nor what renders them is there."""
    image: torch.Tensor | None = None
    view: torch.Tensor | None = None
    split: torch.Tensor | None = None
    index: torch.Tensor | None = None
    jpeg: list | None = None
    jpeg_of: torch.Tensor | None = None
    mixed: MixedView | None = None

    def __post_init__(self):
        renders = self.view is not None and self.split is not None and (self.index is not None or self.jpeg is not None)
        if self.image is None and not renders:
            raise BatchError("a batch of views needs its pixels (image) or what renders them (view, split, and index "
                             "or jpeg)")
        if self.jpeg_of is not None and self.jpeg is None:
            raise BatchError("a batch's jpeg_of maps views to JPEG files it does not carry")


@dataclasses.dataclass(kw_only=True)
class ViewBatch(Views):
    """A batch of training views or evaluation items of a split (datasets.ImageDataset): Views, each view's class
    (`label`) and row in the split (`index`), and `skipped`, how many images of the batch were left out."""
    label: torch.Tensor
    index: torch.Tensor
    skipped: torch.Tensor = dataclasses.field(default_factory=lambda: torch.tensor(0))

    def __post_init__(self):
        super().__post_init__()
        if self.mixed is not None and self.mixed.label is None:
            raise BatchError("a batch of mixed views needs each partner's class (mixed.label): the targets mix with it")


@dataclasses.dataclass(kw_only=True)
class ReplayBatch(ViewBatch):
    """Replayed cached views (student.ReplayItems): a ViewBatch with each sample's cached `view_id` and `teachers`,
    one TeacherRecord per teacher in the teachers' order. Raises BatchError when there is no record, or when mixed
    views and the records' partner-class logits do not come together."""
    view_id: torch.Tensor
    teachers: list[TeacherRecord]

    def __post_init__(self):
        super().__post_init__()
        if not self.teachers:
            raise BatchError("a replayed batch needs the soft label of at least one teacher")
        for j, record in enumerate(self.teachers):
            if (record.partner_target is None) != (self.mixed is None):
                raise BatchError(f"teacher {j}'s soft labels {'lack' if self.mixed else 'carry'} the partner class's "
                                 f"logit (partner_target) of a batch of {'mixed' if self.mixed else 'unmixed'} views")


@dataclasses.dataclass(kw_only=True)
class CacheBatch(_Part):
    """The cache stage's batch (cache.ViewItems): V views of each of b images, `view` parameters [b, V, WIDTH] and
    their uint8 pixels `image` [b, V, 3, s, s] (data.renderer=cpu) or the images' `jpeg` files (device renderer, a
    split not decoded), `bad` marking an image left out, and `mixed` [b, V] with cache.mix."""
    index: torch.Tensor
    bad: torch.Tensor
    view: torch.Tensor
    image: torch.Tensor | None = None
    jpeg: list | None = None
    mixed: MixedView | None = None
    skipped: torch.Tensor = dataclasses.field(default_factory=lambda: torch.tensor(0))


def _collated(items: list) -> tuple[dict | None, list | None, torch.Tensor]:
    """default_collate of the items that are not None (a skipped image) as a dict of fields, or None when none is
    left; the JPEG files as a list (not collated: accelerate leaves numpy arrays on the host, where the decoder reads
    them); how many items were skipped."""
    kept = [it for it in items if it is not None]
    jpeg = [it.pop("jpeg") for it in kept] if kept and "jpeg" in kept[0] else None
    return (default_collate(kept) if kept else None), jpeg, torch.tensor(len(items) - len(kept))


def _part(cls, fields: dict | None):
    return None if fields is None else cls(**fields)


def collate(items: list) -> ViewBatch:
    """ImageDataset's items -> a ViewBatch, dropping (and counting) the None of a skipped image."""
    fields, jpeg, skipped = _collated(items)
    if fields is None:
        fields = {"image": torch.empty(0), "label": torch.empty(0, dtype=torch.long),
                  "index": torch.empty(0, dtype=torch.long)}
    return ViewBatch(**fields, jpeg=jpeg, skipped=skipped)


class GatheredItems(list):
    """A batch's items (None for an image skipped) whose soft labels were read for the whole batch at once
    (student.ReplayItems.__getitems__), given as each teacher's TeacherRecord fields (numpy arrays, a row per item
    that is not None, in the items' order). `teachers` holds them as torch tensors:
    one per field stacked over the teachers, each teacher's field a view of it, so that a batch crosses from a
    loader worker in as many tensors for five teachers as for one (each tensor is a shared-memory file there)."""

    def __init__(self, items: list, teachers: list[dict]):
        super().__init__(items)
        self.teachers = [{} for _ in teachers]
        for name in dict.fromkeys(name for fields in teachers for name in fields):
            holders = [j for j, fields in enumerate(teachers) if name in fields]
            stacked = torch.from_numpy(np.stack([teachers[j][name] for j in holders]))
            for row, j in enumerate(holders):
                self.teachers[j][name] = stacked[row]


def collate_replay(items: list) -> ReplayBatch | ViewBatch:
    """ReplayItems' items (each with `teachers`, a list of TeacherRecord fields, and a mixed view's `mixed`; or
    GatheredItems, whose teachers' fields come batched beside the items) -> a ReplayBatch; a batch whose every image
    was skipped is an empty ViewBatch."""
    fields, jpeg, skipped = _collated(items)
    if fields is None:
        return collate(items)
    records = items.teachers if isinstance(items, GatheredItems) else fields.pop("teachers")
    teachers = [TeacherRecord(**t) for t in records]
    return ReplayBatch(**fields | {"mixed": _part(MixedView, fields.get("mixed"))}, teachers=teachers, jpeg=jpeg,
                       skipped=skipped)


def collate_cache(items: list) -> CacheBatch:
    """ViewItems' items -> a CacheBatch."""
    fields, jpeg, skipped = _collated(items)
    return CacheBatch(**fields | {"mixed": _part(MixedView, fields.get("mixed"))}, jpeg=jpeg, skipped=skipped)
