"""Whether every image file of an imagefolder is whole, read from each file's head and tail only, before any work:
not empty, a JPEG (head FF D8) with its end-of-image marker FF D9 in its last kilobyte, a PNG (its 8-byte signature)
with its IEND chunk there. Cheap at ImageNet's size (measured: docs/benchmarks.md), and run once per content: the
verdict is remembered by the data's content hash (data/content.py). A file that fails the marker test is decoded
before it is named, so a whole image with bytes after its end marker (some cameras and editors write them) is no
false alarm. What the markers cannot see (a damaged middle) is found by the decoding, naming the file.

Written by hand: neither `datasets` nor Pillow checks a file without decoding it.
"""
from __future__ import annotations

import os
from pathlib import Path

from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image
from tqdm.auto import tqdm

from distill.data import content

JPEG, JPEG_END = b"\xff\xd8", b"\xff\xd9"
PNG, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
TAIL = 1024  # bytes read from a file's end: an end marker followed by a little padding still lies in them
EXTENSIONS = {e.lower() for e in ImageFolder.EXTENSIONS}  # the files `datasets` reads as images


def problem(path: Path) -> str | None:
    """Why the image file at `path` is not whole ("an empty file", "a JPEG without its end marker ... and it does
    not decode (...)"), or None when it is whole or is no JPEG or PNG (those are left to the decoding)."""
    with open(path, "rb", buffering=0) as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        head = f.read(len(PNG))
        f.seek(max(0, size - TAIL))
        tail = f.read(TAIL)
    if size == 0:
        return "an empty file"
    if head.startswith(JPEG) and JPEG_END not in tail:
        why = "a JPEG without its end marker FF D9 (truncated?)"
    elif head.startswith(PNG) and PNG_END not in tail:
        why = "a PNG without its IEND chunk (truncated?)"
    else:
        return None
    try:
        with Image.open(path) as img:
            img.load()
    except Exception as e:  # noqa: BLE001 - decoding errors come in many types
        return f"{why}, and it does not decode ({type(e).__name__}: {e})"
    return None


def image_files(root: Path) -> list[Path]:
    """Every image file under `root` that `datasets` reads as one (by its extension), in path order."""
    found = []
    for folder, _, names in os.walk(root):  # the names as listed: no stat of each file
        found += [Path(folder, n) for n in names if os.path.splitext(n)[1].lower() in EXTENSIONS]
    return sorted(found)


def first_broken(root: Path, data_content: str) -> tuple[Path, str] | None:
    """(file, why) for the first image file under `root` that is not whole, or None; checked once per content
    (`data_content`: the folder's content hash), so an unchanged folder is not read again."""
    if content.known("whole_files", data_content):
        return None
    found = image_files(root)
    for f in tqdm(found, desc="check image files", unit="file", disable=len(found) < 10000):
        why = problem(f)
        if why:
            return f, why
    content.remember("whole_files", data_content)
    return None
