"""A split's images: decoded once into memory when they fit (pixels.py), else decoded per item; their labels; and
where each row came from in the user's file (for one-line errors)."""
from __future__ import annotations

import copy
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image as PILImage

from distill.errors import ConfigError, DataError

SKIP_HINT = "set data.on_bad_image=skip to leave it out of every stage, or replace or remove the file"
RESTART_HINT = ("either changes the data, so the stage it stopped starts over (a training stage's checkpoints are "
                "of the old data: rerun with resume=never)")


def bad_image(e: DataError, running: bool = True) -> DataError:
    """The one message for an image that fails to decode while data.on_bad_image=error; `running`: found during a
    stage (not by the checks before any work), whose checkpoints a fixed file no longer matches."""
    return DataError(f"{e}; {SKIP_HINT}" + (f"; {RESTART_HINT}" if running else ""))


@dataclass
class Rows:
    """Where each sample of a split came from: its row in a split of the source (the file or folder the user has),
    so that an error names a row the user can find, not an index after the validation carve."""
    rows: np.ndarray
    split: str
    path: str | None = None

    def where(self, i: int) -> str:
        return f"row {int(self.rows[i])} of split '{self.split}'" + (f" in {self.path}" if self.path else "")

    def key(self) -> dict:
        """Which rows these are, for an identity: the split's name, the row count and a hash of the row numbers
        (a carve or data.train_size keeps other rows), never the path or `datasets`' fingerprint."""
        rows = np.ascontiguousarray(self.rows, dtype=np.int64)
        return {"split": self.split, "rows": len(rows), "rows_sha256": hashlib.sha256(rows.tobytes()).hexdigest()}


def labels_of(ds: datasets.Dataset, column: str) -> np.ndarray:
    """A split's labels as a numpy array: the memory-mapped Arrow column, gathered through the split's row indices
    (after a carve) in numpy. `datasets`' own reading formats row by row, or gathers through Python lists: 28 s
    and a gigabyte of heap at ImageNet's size."""
    values = ds.data.column(column).to_numpy()
    indices = ds._indices  # the rows a select or a carve kept (None: all of them, in order)
    return values[indices.column(0).to_numpy()] if indices is not None else values



class Images:
    """Image i of one split as a uint8 CHW tensor, and its label: sliced from the pixel array when the split was
    decoded at load time (pixels.py), else decoded from its row."""

    def __init__(self, ds: datasets.Dataset, image_column: str, label_column: str, split: str,
                 decoded: tuple[np.ndarray, dict] | None = None, rows: Rows | None = None):
        self.ds, self.column, self.split = ds, image_column, split
        self.rows = rows or Rows(np.arange(len(ds)), split)
        self.labels = labels_of(ds, label_column).astype(np.int64)
        self.pixels, self.bad = decoded if decoded is not None else (None, {})

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        why = self.bad.get(i)
        if self.pixels is not None and why is None:
            return torch.from_numpy(self.pixels[i]).permute(2, 0, 1)
        if why is None:
            try:
                return torch.from_numpy(np.array(self.ds[i][self.column].convert("RGB"))).permute(2, 0, 1)
            except Exception as e:  # noqa: BLE001 - decoding errors come in many types
                why = f"{type(e).__name__}: {e}"
        file = self.file(i)
        raise DataError(f"data: the image at {self.rows.where(i)} ({self.split} sample {i}"
                        f"{f', file {file}' if file else ''}) could not be decoded ({why})")

    def _stored(self, i: int) -> dict:
        """Image i as stored, not decoded: {"bytes": ..., "path": ...}."""
        if getattr(self, "_raw", None) is None:
            self._raw = self.ds.select_columns([self.column]).cast_column(self.column, datasets.Image(decode=False))
        return self._raw[i][self.column]

    def file(self, i: int) -> str | None:
        """The local file image i is read from (an imagefolder's image), or None (its bytes are in the data)."""
        value = self._stored(i)
        path = value["path"]
        return path if value["bytes"] is None and path and Path(path).is_file() else None

    def encoded(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The image's JPEG file bytes and its (height, width) from the header, not decoded: what
        data.renderer=device decodes on the device for a split too large to keep decoded there."""
        value = self._stored(i)
        raw = value["bytes"] or Path(value["path"]).read_bytes()
        try:
            with PILImage.open(io.BytesIO(raw)) as img:
                (w, h), fmt = img.size, img.format
        except Exception as e:  # noqa: BLE001 - unreadable files come in many types
            raise DataError(f"data: the image at {self.rows.where(i)} ({self.split} sample {i}) could not be "
                            f"read ({type(e).__name__}: {e})") from None
        if fmt != "JPEG":  # a setting that cannot work, not a bad image: data.on_bad_image=skip must not drop it
            raise ConfigError(f"data.renderer: device decodes JPEG on the device, and the image at "
                              f"{self.rows.where(i)} is {fmt}; let the split be decoded into memory (data.decode_mb) "
                              "or use data.renderer=cpu")
        return np.frombuffer(raw, dtype=np.uint8), (h, w)

    def view_source(self, i: int) -> tuple[tuple[int, int], np.ndarray | None]:
        """What data.renderer=device needs of image i, without decoding it here: its (height, width), and its JPEG
        file when the split is not kept decoded. DataError, naming the row, for an image that failed to decode."""
        if i in self.bad:
            self.image(i)  # raises, naming the row
        if self.pixels is not None:
            return tuple(self.pixels.shape[1:3]), None
        jpeg, hw = self.encoded(i)
        return hw, jpeg

    def fetch(self, i: int, skip_bad: bool) -> torch.Tensor | None:
        """`image(i)`, or None for an image that fails to decode when `skip_bad` (data.on_bad_image=skip)."""
        return self._or_skip(self.image, i, skip_bad)

    def view_source_or_skip(self, i: int, skip_bad: bool) -> tuple[tuple[int, int], np.ndarray | None] | None:
        """`view_source(i)`, or None for an image that fails to decode when `skip_bad`."""
        return self._or_skip(self.view_source, i, skip_bad)

    @staticmethod
    def _or_skip(read, i: int, skip_bad: bool):
        try:
            return read(i)
        except DataError as e:
            if skip_bad:
                return None
            raise bad_image(e) from None

    def subset(self, n: int) -> "Images":
        """The first n images (for statistics)."""
        out = copy.copy(self)  # shares the pixels; rows beyond n are simply never asked for
        out.labels = self.labels[:n]
        return out
