"""A parquet data path's own checks, from the files' footers (no rows read), before `datasets` loads it: every file
reads as parquet and holds rows, a sharded layout (`train-00003-of-00010.parquet`) has every shard, the files of one
split (the shards of one name) agree on columns and classes; and the image column of files written without
`datasets`' metadata.

Written by hand because `datasets` checks none of these: a missing shard trains on less data silently, and shards
of other columns fail deep inside its cache builder with no file named.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from distill.errors import DataError

log = logging.getLogger("distill")

SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-of-(?P<total>\d+)\.parquet$")


def files_at(path: str | Path) -> list[Path]:
    """The parquet files of a data path: the file itself, or every .parquet file under the folder (hidden ones not)."""
    root = Path(path)
    if root.is_file():
        return [root]
    return sorted(f for f in root.rglob("*.parquet")
                  if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts))


def check(path: str | Path, key: str) -> None:
    """DataError, naming the file and setting `key`, for a file that is not parquet or holds no rows, a shard
    missing from a folder's sharded layout, or a file whose columns or classes differ from the other files of its
    split. A single file named is read alone, even when it is one shard of a set."""
    found = files_at(path)
    remove = " (or remove it from the folder)" if Path(path).is_dir() else ""
    schemas = {}
    for f in found:
        try:
            meta = pq.ParquetFile(f).metadata
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a file that is not parquet
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(f"{key}: {f} is not a parquet file ({first}); give a parquet file{remove}") from None
        if meta.num_rows == 0:
            raise DataError(f"{key}: {f} has 0 rows; give a parquet file that holds images{remove}")
        schemas[f] = meta.schema.to_arrow_schema()
    if Path(path).is_dir():
        _check_shards(found, key)
    else:
        _say_one_shard(Path(path), key)
    _check_agreement(schemas, key)


def _say_one_shard(f: Path, key: str) -> None:
    """A file named on purpose is that file alone, even when it is one shard of a set (a folder of shards is
    checked for every shard): said once, since the other shards are not read."""
    m = SHARD.match(f.name)
    if m and int(m["total"]) > 1:
        log.info(f"{key}: {f.name} is one of the {int(m['total'])} shards of '{m['stem']}': training on that file "
                 "alone; give its folder to read every shard")


def _check_shards(found: list[Path], key: str) -> None:
    groups: dict[tuple, set[int]] = {}
    for f in found:
        m = SHARD.match(f.name)
        if m:
            groups.setdefault((f.parent, m["stem"], m["total"]), set()).add(int(m["index"]))
    for (folder, stem, total), have in groups.items():
        width = len(total)
        missing = [i for i in range(int(total)) if i not in have]
        if missing:
            name = f"{stem}-{missing[0]:0{width}d}-of-{total}.parquet"
            raise DataError(f"{key}: {folder / name} is missing: {len(have)} of the {int(total)} shards of "
                            f"'{stem}' are there; restore the missing file{'s' if len(missing) > 1 else ''}")


def _split_of(f: Path) -> str:
    """The split a file belongs to: its shard stem in its folder; a file not named as a shard is its own."""
    m = SHARD.match(f.name)
    return f"{f.parent}/{m['stem']}" if m else str(f)


def _classes(schema: pa.Schema) -> dict:
    """Each ClassLabel column's names from `datasets`' metadata in the schema ({} without it)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    features = json.loads(raw).get("info", {}).get("features", {}) if raw else {}
    return {k: v.get("names") for k, v in features.items() if isinstance(v, dict) and v.get("_type") == "ClassLabel"}


def _check_agreement(schemas: dict[Path, pa.Schema], key: str) -> None:
    first: dict[str, tuple[Path, pa.Schema]] = {}
    for f, schema in schemas.items():
        ref_file, ref = first.setdefault(_split_of(f), (f, schema))
        if f == ref_file:
            continue
        columns, ref_columns = dict(zip(schema.names, schema.types)), dict(zip(ref.names, ref.types))
        if columns != ref_columns:
            differ = sorted(set(columns.items()) ^ set(ref_columns.items()), key=str)[0][0]
            raise DataError(f"{key}: {f} has other columns than {ref_file.name} (column '{differ}': "
                            f"{columns.get(differ, 'absent')} here, {ref_columns.get(differ, 'absent')} there); "
                            "every file of a split must have the same columns")
        for column, names in _classes(schema).items():
            other = _classes(ref).get(column)
            if other is not None and names != other:
                raise DataError(f"{key}: {f} names other classes in column '{column}' than {ref_file.name} "
                                f"({len(names)} and {len(other)} classes); every file of a split must have the same")


def _is_image_struct(t: pa.DataType) -> bool:
    """The layout of an image column as many tools write it: struct<bytes: binary, path: string>."""
    if not pa.types.is_struct(t) or {t.field(i).name for i in range(t.num_fields)} != {"bytes", "path"}:
        return False
    b, p = t.field("bytes").type, t.field("path").type
    return (pa.types.is_binary(b) or pa.types.is_large_binary(b)) and (pa.types.is_string(p) or
                                                                         pa.types.is_large_string(p))


def features(path: str | Path) -> datasets.Features | None:
    """The features to load the files with when a column is an image struct that `datasets`' metadata does not
    declare an Image (files written by pyarrow or another tool); None when `datasets` reads them as they are."""
    first = files_at(path)[0]
    schema = pq.read_schema(first)
    declared = datasets.Features.from_arrow_schema(schema)
    images = [name for name, t in zip(schema.names, schema.types)
              if _is_image_struct(t) and not isinstance(declared[name], datasets.Image)]
    if not images:
        return None
    return datasets.Features({name: datasets.Image() if name in images else feature
                              for name, feature in declared.items()})
