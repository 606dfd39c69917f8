"""DataLoaders: the training and validation loaders of a split, and how many workers each gets."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from distill.config import DataCfg
from distill.data.batch import collate
from distill.data.datasets import ImageDataset
from distill.data.images import Images

if TYPE_CHECKING:
    from distill.data.splits import DataBundle


def make_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int, seed: int,
                collate_fn=collate) -> DataLoader:
    """Workers persist across epochs; a training dataset's epoch reaches them through shared memory (SharedEpoch).
    `collate_fn` makes the dataset's items one batch of its kind (batch.py; ImageDataset's: batch.collate)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=num_workers,
                      collate_fn=collate_fn, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))


def loaders(bundle: "DataBundle", cfg: DataCfg, batch_size: int, seed: int,
            eval_batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Train loader (random views, shuffled, drop_last) and validation loader (eval view, in order), both
    yielding uint8 images: each batch becomes the network input on the device (transforms.ToInput)."""
    skip = cfg.on_bad_image == "skip"
    train = ImageDataset(bundle.images["train"], cfg, train=True, seed=seed, skip_bad=skip)
    val = ImageDataset(bundle.images["val"], cfg, train=False, skip_bad=skip)
    return (make_loader(train, batch_size, True, workers(cfg, bundle.images["train"]), seed),
            make_loader(val, eval_batch_size or batch_size, False, workers(cfg, bundle.images["val"]), seed))


def workers(cfg: DataCfg, images: Images | None = None) -> int:
    """Loader workers: data.num_workers, or none when a decoded split's views are rendered on the device (its items
    are a few numbers; items that carry JPEG files keep the workers)."""
    return 0 if cfg.renderer == "device" and (images is None or images.pixels is not None) else cfg.num_workers
