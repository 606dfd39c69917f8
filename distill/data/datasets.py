"""The index-carrying items the loaders yield: training and evaluation views of a split (collated into a
batch.ViewBatch by `batch.collate`, which drops and counts a skipped image), and the epoch that persistent loader
workers share with the main process."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from distill.config import DataCfg
from distill.data import views
from distill.data.images import Images

if TYPE_CHECKING:
    from distill.data.splits import DataBundle


class SharedEpoch:
    """The training epoch in shared memory: loader workers that persist across epochs read the epoch the main
    process set, instead of the copy they were started with (written by hand: DataLoader has no epoch hook)."""

    def __init__(self):
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value.fill_(epoch)

    def get(self) -> int:
        return int(self._value)


class EpochItems(Dataset):
    """One item per image of `images`, drawn for the epoch last set (`set_epoch`, read by persistent workers)."""

    images: Images

    def __init__(self):
        self.epoch = SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose views the next items are drawn for (read by every worker)."""
        self.epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.images)


class ImageDataset(EpochItems):
    """Items with the fields of a batch.ViewBatch: {'image' (uint8 CHW), 'label', 'index'}, or with
    data.renderer=device {'view', 'label', 'index', 'split'} (and 'jpeg'); `index` is the row in the split (the
    cache keys soft labels by it). Training items get a random view drawn from (seed, epoch, index), a pure
    function, so that a resumed run sees the views an uninterrupted one would; evaluation items get the eval view.
    With skip_bad, an image that fails to decode yields None, which `batch.collate` drops and counts."""

    def __init__(self, images: Images, cfg: DataCfg, train: bool, seed: int = 0, skip_bad: bool = False,
                 pixels: bool | None = None):
        super().__init__()
        self.images, self.cfg, self.train, self.seed, self.skip_bad = images, cfg, train, seed, skip_bad
        # data.renderer=device: items carry the view's parameters, rendered per batch on the device (DeviceViews)
        self.pixels = cfg.renderer == "cpu" if pixels is None else pixels

    def __getitem__(self, i: int):
        if not self.pixels:
            return self._params_only(i)
        img = self.images.fetch(i, self.skip_bad)
        if img is None:
            return None
        params = self._view(i, tuple(img.shape[-2:]))
        return {"image": views.apply(img, params, self.cfg), "label": int(self.images.labels[i]), "index": i}

    def _view(self, i: int, hw: tuple[int, int]):
        """Training: a random view drawn from (seed, epoch, index); evaluation: the eval view."""
        if not self.train:
            return views.EVAL_VIEW
        return views.draw(self.cfg, views.train_rng(self.seed, self.epoch.get(), i), hw)

    def _params_only(self, i: int) -> dict | None:
        source = self.images.view_source_or_skip(i, self.skip_bad)
        if source is None:
            return None
        hw, jpeg = source
        params = self._view(i, hw)
        item = {"view": torch.from_numpy(params), "label": int(self.images.labels[i]), "index": i,
                "split": SPLITS.index(self.images.split)}
        return item if jpeg is None else item | {"jpeg": jpeg}  # not decoded at load time: decoded on the device


SPLITS = ("train", "val", "test")  # a params-only batch names its split, so the renderer knows which pixels


def device_views(cfg: DataCfg, bundle: "DataBundle", device) -> dict | None:
    """data.renderer=device, by SPLITS index: a split decoded into memory is kept on the device (views.DeviceViews);
    any other is decoded there per batch from its JPEG files (views.JpegViews). None for the cpu renderer."""
    if cfg.renderer != "device":
        return None
    if str(device) not in bundle.on_device:  # each split copied to the device once per run, not once per stage
        bundle.on_device[str(device)] = {
            SPLITS.index(name): views.DeviceViews(images.pixels, cfg, device) if images.pixels is not None
            else views.JpegViews(cfg, device) for name, images in bundle.images.items()}
    return bundle.on_device[str(device)]
