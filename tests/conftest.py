"""Shared fixtures: tiny, learnable image data sets written in every format `distill` reads."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets/huggingface_hub read it: tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "train.parquet"
CLASSES = ["red", "green", "blue"]


def tiny_images(n: int, size: int = 12, seed: int = 0) -> tuple[list[Image.Image], list[int]]:
    """Noisy images whose dominant colour is the class: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % len(CLASSES)
        x = rng.integers(0, 90, size=(size, size, 3))
        x[..., label] += 150
        images.append(Image.fromarray(x.astype(np.uint8)))
        labels.append(label)
    return images, labels


def tiny_dataset(n: int = 60, seed: int = 0, size: int = 12) -> datasets.Dataset:
    images, labels = tiny_images(n, size=size, seed=seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture
def parquet_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.parquet"
    tiny_dataset().to_parquet(str(path))
    return path


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    images, labels = tiny_images(30)
    for i, (img, label) in enumerate(zip(images, labels)):
        d = root / "train" / CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{i}.png")
    return root


def run_cli(*args: str, cwd: Path, module: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "distill.run"] if module else [sys.executable, str(ROOT / "distill" / "run.py")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def tiny_overrides(data_path: Path, run_root: Path, epochs: int = 2) -> list[str]:
    """A recipe small enough for a test: tiny data, resnet8 teacher, a couple of epochs."""
    return [f"data.path={data_path}", "data.source=auto", "data.val_size=12", "data.image_size=12",
            "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]", "data.num_workers=0",
            f"run_root={run_root}", "name=tiny", "precision=no", "teacher.model=resnet8",
            f"teacher.epochs={epochs}", "teacher.batch_size=16", "teacher.optim.lr=0.4"]


def random_teacher(path: Path, model: str = "resnet8", seed: int = 0) -> Path:
    """A timm checkpoint file with seeded random weights: a teacher without training time."""
    import timm
    import torch
    from safetensors.torch import save_file

    import distill.models  # noqa: F401  (registers the CIFAR ResNets)

    torch.manual_seed(seed)
    save_file(timm.create_model(model, num_classes=len(CLASSES)).state_dict(), str(path))
    return path


def cache_overrides(data_path: Path, tmp: Path, teacher_file: Path, **kw) -> list[str]:
    """Teacher loaded from a file (no training), then the cache stage with small shards."""
    args = tiny_overrides(data_path, tmp / "runs") + [
        "teacher.source=timm", f"teacher.checkpoint={teacher_file}", f"cache.root={tmp / 'cache'}",
        "cache.shard_size=16", "cache.batch_size=24", "cache.views=3", "cache.topk=3", "stage=cache",
        "data.flip=true", "data.padding=2"]
    return args + [f"{k.replace('__', '.')}={v}" for k, v in kw.items()]


def config_from(overrides: list[str]):
    """The validated Config of command-line style overrides, for tests that call a stage in-process."""
    import json

    from distill import config

    def value(v: str):
        if v.startswith("["):
            return json.loads(v)
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return {"true": True, "false": False}.get(v, v)

    tree: dict = {}
    for item in overrides:
        key, v = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value(v)
    return config.validate(tree)


def compose_recipe(recipe: str, overrides=()):
    """The raw config that `python distill/run.py recipe=NAME overrides...` composes (Hydra, in process)."""
    from hydra import compose, initialize_config_dir

    from distill import config

    config.register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "recipes"), version_base="1.3"):
        return compose("config", overrides=[f"recipe={recipe}", f"name={recipe}", *overrides])
