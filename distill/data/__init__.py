"""Data and views: where images and labels come from, and how a training view of an image is drawn and re-drawn.

    sources/       the data sources (data.source), one file each (hub, parquet, imagefolder, disk, demo), registered
                   with @SOURCES.register: what data.path names and how its splits load
    splits.py      data.path -> its source's splits, the validation carve, the test split, label and class checks:
                   `load` returns a DataBundle
    parquet.py     a parquet path's checks from its footers (shards complete, columns agree), struct image columns
    content.py     a data set's identity from its bytes (not its path or mtime), and the index that keeps it cheap
    identity.py    DataIdentity: what identifies the splits (source, content, rows, classes), for the fingerprints
    wholefiles.py  an imagefolder's image files whole (head and tail: JPEG and PNG end markers), before any work
    images.py      Images: a split's images, decoded once into memory when they fit (pixels.py)
    batch.py       the batch types (Views, ViewBatch, ReplayBatch, CacheBatch) and the collate functions that make them
    datasets.py    the index-carrying training and evaluation items, the epoch shared with workers
    loaders.py     DataLoaders and worker counts
    jpeg.py        JPEG files decoded on a device (TorchCodec, else torchvision): the device renderer's decoder
    views.py       recordable, replayable views (crop box, flip): what the cache stores and the student replays
    transforms.py  ToInput: a batch of uint8 views -> the network input, on the device; channel statistics

A new data source is one file in sources/ (a `Source` registered by name). May import: distill.config,
distill.errors, distill.registry and this folder; never the store, training or the stages.
"""
from distill.data.batch import (BatchError, CacheBatch, GatheredItems, MixedView, ReplayBatch, TeacherRecord,
                                 ViewBatch, Views, collate, collate_cache, collate_replay)
from distill.data.datasets import SPLITS, EpochItems, ImageDataset, SharedEpoch, device_views
from distill.data.identity import DataIdentity
from distill.data.images import Images
from distill.data.loaders import loaders, make_loader, workers
from distill.data.splits import DataBundle, load
from distill.data.transforms import channel_stats

__all__ = ["BatchError", "CacheBatch", "DataBundle", "DataIdentity", "EpochItems", "GatheredItems", "Images",
           "ImageDataset", "MixedView", "ReplayBatch", "SharedEpoch", "SPLITS", "TeacherRecord", "ViewBatch", "Views",
           "channel_stats", "collate", "collate_cache", "collate_replay", "device_views", "load", "loaders",
           "make_loader", "workers"]
