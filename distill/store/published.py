"""The published cache's format: a soft-label cache as a Hugging Face dataset folder, readable without distill.

    README.md                                  the dataset card (PublishedCard): YAML metadata (`configs` for
                                               `datasets.load_dataset(folder)`, `distill`: every field below) and
                                               the same facts in words
    data/train-00000-of-0000n.parquet          one row per image, in the training split's order (docs/published.md)

A row holds the image's content key (hex of data.content.image_digests' 16-byte blake2b of its encoded bytes) and
label; per view (a fixed-size list of V) the explicit view parameters (views.FIELDS, one column each), the top-k
logits (fp16) and classes, and each record field the losses need beyond the top k, with the native record's dtypes
(store/softlabels.record_dtype); a mixed view's partner is its content key (16 raw bytes, null: not mixed), its view
(partner_kind ... partner_flip), lambda, box and partner-class logit. `to_table` and `to_records` convert between a
native cache's records and this table, field for field, so a round trip gives the very bytes back.

May import: what distill/store/ may.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distill import files
from distill.data import views
from distill.errors import DataError

FORMAT_VERSION = 2  # 2: the card's teacher_split, ensemble_member, skipped_keys and license
CARD = "README.md"
LICENSE = "license"  # the card's YAML key of the licence (huggingface_hub's CardData field)
DATA = "data"
VIEW_FIELDS = {"view": "", "partner_view": "partner_"}  # record fields stored as one column per views.FIELDS entry
PARTNER = "partner"  # the record's partner index: published as its content key
NO_PARTNER = -1


def shard_name(i: int, n: int) -> str:
    """The Hub's split-shard naming, which `datasets` reads as the train split."""
    return f"{DATA}/train-{i:05d}-of-{n:05d}.parquet"


@dataclass(frozen=True)
class PublishedCard:
    """What the card says machine-readably (its YAML `distill` block), each field also in its words. `shards`:
    file -> sha256 of every shard, in order."""
    teacher_model: str  # timm name
    teacher_sha256: str  # its weights
    teacher_top1: float  # its top-1 (%) on `teacher_split`
    teacher_split: str  # where it was scored: "test" (the run's held-out data.test_split) or "validation"
    teacher_scored_on: str  # that split in words: its name and image count
    ensemble_member: str | None  # the ensemble teacher's name when it is one of a run's `teachers` (its own
    # distribution, not their combination); None: the run's one teacher
    temperature: float  # the T of the stored logsumexps (1 for a dense cache: any T can be served)
    topk: int  # logits kept per view (= num_classes: dense)
    dense: bool
    views: int  # views per image
    mixed: bool  # views mixed with a partner image (cache.mix)
    num_classes: int
    class_names: list[str]
    image_size: int
    transform: str  # cifar | imagenet
    transform_params: dict[str, Any]  # padding, flip, scale, crop_pct, eval_view
    normalization: dict[str, Any]  # mean/std of pixels in [0, 1] the teacher's input was normalised with
    data_checksum: str  # sha256 over every row's 16-byte content key, in row order
    rows: int
    skipped_keys: list[str]  # hex content keys of the training images that failed to decode (data.on_bad_image=
    # skip) when the cache was labelled: no row of theirs; a student's run leaves them out, as the native cache does
    shards: dict[str, str]
    cache_fingerprint: str  # the native cache it was published from
    distill_version: str
    license: str | None  # the Hub licence id (publish.license), the card's YAML `license`; None: not stated
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        """The YAML `distill` block: every field but `license` (the card's own `license` key)."""
        return {k: v for k, v in asdict(self).items() if k != LICENSE}

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: Path) -> "PublishedCard":
        """The card's `distill` block with its `license`; one of another format, or without a required field,
        raises one line."""
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DataError(f"published: {where} is format {version}, this distill reads up to {FORMAT_VERSION}; "
                            "upgrade distill")
        if version < FORMAT_VERSION:
            raise DataError(f"published: {where} is format {version}, this distill reads {FORMAT_VERSION} (its card "
                            "lists the undecodable images and where the teacher was scored); republish it")
        missing = [f.name for f in fields(cls) if f.name not in obj]
        if missing:
            raise DataError(f"published: {where} lacks the required field distill.{missing[0]}"
                            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; republish it")
        return cls(**{f.name: obj[f.name] for f in fields(cls)})


def data_checksum(keys: list[bytes]) -> str:
    """The data's identity: sha256 over every image's 16-byte content key, in row order."""
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key)
    return digest.hexdigest()


# ---------------------------------------------------------------- native records <-> table

def _nested(values: np.ndarray) -> pa.Array:
    """[N, *shape] -> an Arrow column of N nested fixed-size lists (one level per axis of `shape`)."""
    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(values.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


def _flat(column: pa.ChunkedArray | pa.Array, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A nested fixed-size-list column back to [N, *shape] of `dtype`."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    for _ in shape:
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, *shape)


def _partner_keys(partners: np.ndarray, keys: list[bytes]) -> pa.Array:
    """Partner row indices (NO_PARTNER: none) as their 16-byte content keys, null where there is none: gathered
    from one [N, 16] byte array (a null slot's bytes zero, as pyarrow writes them)."""
    none = partners == NO_PARTNER
    table = np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), 16)
    data = table[np.where(none, 0, partners)]
    data[none] = 0
    valid = pa.py_buffer(np.packbits(~none, bitorder="little")) if none.any() else None
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(partners), [valid, pa.py_buffer(data.tobytes())],
                                                null_count=int(none.sum()))


def to_table(records: np.ndarray, keys: list[bytes], labels: np.ndarray) -> pa.Table:
    """A native cache's records (rows in the data's order) as the published table: `keys` are the rows' 16-byte
    content keys, `labels` their classes."""
    columns = {"key": pa.array([k.hex() for k in keys], pa.string()), "label": pa.array(labels, pa.int32())}
    for name in records.dtype.names:
        values = records[name]
        if name in VIEW_FIELDS:
            columns |= {VIEW_FIELDS[name] + f: _nested(values[..., j]) for j, f in enumerate(views.FIELDS)}
        elif name == PARTNER:
            columns["partner_key"] = pa.FixedSizeListArray.from_arrays(_partner_keys(values.reshape(-1), keys),
                                                                       values.shape[1])
        else:
            columns[name] = _nested(values)
    return pa.table(columns)


def to_records(table: pa.Table, dtype: np.dtype, rows: np.ndarray, index_of: dict[bytes, int]) -> np.ndarray:
    """The native records (`dtype`) of the table's rows `rows`, in that order: a mixed view's partner key becomes
    the partner's row in the user's data (`index_of`: content key -> row), every other field as stored."""
    taken = table.take(pa.array(rows, pa.int64()))
    out = np.zeros(len(rows), dtype=dtype)
    for name in dtype.names:
        shape, base = dtype[name].shape, dtype[name].base
        if name in VIEW_FIELDS:
            out[name] = np.stack([_flat(taken[VIEW_FIELDS[name] + f], shape[:1], base) for f in views.FIELDS], -1)
        elif name == PARTNER:
            keys = taken["partner_key"].combine_chunks().flatten().to_pylist()
            out[name] = np.array([NO_PARTNER if k is None else index_of[k] for k in keys],
                                 dtype=base).reshape(-1, *shape)
        else:
            out[name] = _flat(taken[name], shape, base)
    return out


# ---------------------------------------------------------------- the folder

def write_shards(folder: Path, table: pa.Table, rows_per_shard: int) -> dict[str, str]:
    """The table as parquet shards under folder/data (each written beside, then renamed): file -> sha256."""
    n = max(1, -(-table.num_rows // rows_per_shard))
    (folder / DATA).mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        path = folder / shard_name(i, n)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table.slice(i * rows_per_shard, rows_per_shard), tmp, compression="zstd",
                       write_statistics=False)
        files.fsync_rename(tmp, path)
        out[shard_name(i, n)] = files.sha256(path)
    return out


def payload_bytes(folder: Path, card: PublishedCard) -> int:
    """The shards' column data on disk (their compressed column chunks; the files less their footers)."""
    total = 0
    for name in card.shards:
        meta = pq.ParquetFile(folder / name).metadata
        total += sum(meta.row_group(g).column(c).total_compressed_size
                     for g in range(meta.num_row_groups) for c in range(meta.num_columns))
    return total


def card_text(card: PublishedCard, text: str) -> str:
    """The card's file: YAML metadata (`configs` for datasets.load_dataset, `distill`: the card's fields) and
    `text`, the same in words."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(license=card.license, configs=[{"config_name": "default", "data_files": [
        {"split": "train", "path": f"{DATA}/train-*.parquet"}]}], tags=["knowledge-distillation", "soft-labels"],
        distill=card.to_json())
    return str(DatasetCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + text))


def read_card(folder: Path) -> PublishedCard:
    """The folder's card; a missing card, field or a newer format raises one line naming it."""
    from huggingface_hub import DatasetCard

    path = folder / CARD
    if not path.is_file():
        raise DataError(f"published: {folder} has no {CARD} (the dataset card); not a published cache")
    meta = DatasetCard.load(path).data.to_dict()
    return PublishedCard.from_json({**(meta.get("distill") or {}), LICENSE: meta.get(LICENSE)}, path)


def verified(folder: Path, card: PublishedCard) -> None:
    """Every shard the card lists is there and has its sha256; one line naming the first that is not."""
    for name, sha in card.shards.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"published: {path} is missing (the card {folder / CARD} lists it)")
        if files.sha256(path) != sha:
            raise DataError(f"published: {path} has sha256 {files.sha256(path)[:16]}..., the card says "
                            f"{sha[:16]}... (truncated or edited); fetch or publish it again")


def read_table(folder: Path, card: PublishedCard) -> pa.Table:
    """Every shard's rows, in order (verify first)."""
    return pa.concat_tables([pq.read_table(folder / name) for name in card.shards])


@dataclass
class Published:
    """A verified published folder: its card and its rows."""
    folder: Path
    card: PublishedCard
    table: pa.Table = field(repr=False)


def open_folder(folder: Path) -> Published:
    """The published cache in `folder`, its card read and every shard checked against it."""
    card = read_card(folder)
    verified(folder, card)
    return Published(folder, card, read_table(folder, card))
