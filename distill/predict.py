"""Top-5 classes of images, from an exported student folder alone (its config.json states the preprocessing).

    python -m distill.predict runs/demo/export image.png [more images or folders ...] [--top 5]

A folder stands for every image file under it, its subfolders included, in sorted order of their paths (an image
file: a suffix Pillow reads, such as .png or .jpg).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(folder: Path):
    """(model, transform, class names) of an export folder, through timm's own local-dir loading."""
    import timm

    import distill  # noqa: F401  (registers the CIFAR ResNets with timm)
    from distill.store.records import ExportRecord

    config = json.loads((folder / "config.json").read_text())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{folder}: no model.safetensors; give the export folder of a run (<run>/export)")
    record = ExportRecord.read(folder / "export.json")
    if record and record.sha256.get(weights.name) not in (None, _sha256(weights)):
        raise ValueError(f"{weights} fails the checksum export.json recorded; rerun stage=export to rebuild it")
    try:
        model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True).eval()
    except Exception as e:  # noqa: BLE001 - a damaged or foreign weights file fails in many ways
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{weights} cannot be loaded ({first}); rerun stage=export to rebuild it") from None
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    return model, transform, config.get("label_names") or [str(i) for i in range(config["num_classes"])]


def _sha256(path: Path) -> str:
    from distill import files
    return files.sha256(path)


def image_files(paths: list[Path]) -> list[Path]:
    """`paths` with each folder replaced by the image files under it (recursively, sorted by path; an image file has
    a suffix Pillow reads). ValueError naming a folder that holds none."""
    from PIL import Image

    suffixes = {suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.OPEN}
    out = []
    for path in paths:
        if not path.is_dir():
            out.append(path)
            continue
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
        if not found:
            raise ValueError(f"{path}: no image files in this folder or its subfolders (files with a suffix Pillow "
                             "reads, such as .png or .jpg)")
        out.extend(found)
    return out


def predict(folder: Path, images: list[Path], top: int = 5) -> list[list[tuple[str, float]]]:
    """For each image, its `top` classes with their probabilities, most probable first."""
    import torch
    from PIL import Image

    model, transform, names = load(folder)
    out = []
    for path in images:
        try:
            with Image.open(path) as img:
                x = transform(img.convert("RGB"))[None]
        except Exception as e:  # noqa: BLE001 - unreadable image files come in many types
            raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
        with torch.inference_mode():
            p = model(x).softmax(1)[0]
        values, classes = p.topk(min(top, len(names)))
        out.append([(names[c], float(v)) for v, c in zip(values.tolist(), classes.tolist())])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="an export folder (config.json, model.safetensors)")
    p.add_argument("images", nargs="+", type=Path, help="image files, or folders: every image file under each")
    p.add_argument("--top", type=int, default=5, help="classes to print per image (default 5)")
    args = p.parse_args(argv)
    if args.top < 1:
        print(f"error: --top: {args.top} classes; give at least 1", file=sys.stderr)
        return 2
    if not (args.folder / "config.json").is_file():
        print(f"error: {args.folder}: no config.json; give the export folder of a run (<run>/export)", file=sys.stderr)
        return 2
    try:
        images = image_files(args.images)
        results = predict(args.folder, images, args.top)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, ranked in zip(images, results):
        print(path)
        for name, prob in ranked:
            print(f"  {prob:7.4f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
