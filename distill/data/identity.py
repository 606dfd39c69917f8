"""DataIdentity: what identifies a run's training and validation splits, for every stage's fingerprint.

Not the cache's identity (store/fingerprints.CacheIdentity), which holds this one among what the cached bytes depend
on. Its JSON (`to_json`) is what the fingerprints hash, so it is exactly the dict distill has always hashed: the same
keys and values, whatever this class grows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataIdentity:
    """The data from its bytes, never its path or `datasets`' fingerprint: the `source` kind (hub, parquet, ...),
    the hub's name and config (None off the hub), the hash of the files' `content`, which rows of it `train` and
    `val` are (images.Rows.key: split, row count, hash of the row numbers) and the class names in label order."""
    source: str
    hub: str | None
    hub_config: str | None
    content: str | None
    train: dict[str, Any]
    val: dict[str, Any]
    classes: list[str]

    def to_json(self) -> dict[str, Any]:
        """As the fingerprints hash it and the cache's manifest holds it."""
        return {"source": self.source, "hub": self.hub, "hub_config": self.hub_config, "content": self.content,
                "train": self.train, "val": self.val, "classes": self.classes}
