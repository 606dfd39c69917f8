"""Shared fixtures: tiny, learnable image data sets written in every format `distill` reads."""
from __future__ import annotations

import contextlib
import os
import shutil
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


def photo_jpegs(n: int = 12) -> list[bytes]:
    """Real photographs as JPEG files of several layouts: CIFAR-10 images (when the data is here; else scikit-learn's
    scanned digits) enlarged to odd sizes around 500 x 375, saved at quality 90 with 4:2:0 chroma, every third one
    progressive, every fourth one grey."""
    import io

    cifar = next((p for p in (CIFAR, ROOT / ".gpu" / "cifar10.parquet") if p.exists()), None)  # the latter on a GPU
    if cifar:  # machine, which tools/gpu_prepare.sh gives CIFAR-10's first rows
        import pyarrow.parquet as pq
        column = pq.read_table(cifar, columns=["img"]).column("img").slice(0, n).to_pylist()
        sources = [Image.open(io.BytesIO(v["bytes"])).convert("RGB") for v in column]
    else:
        from sklearn.datasets import load_digits
        digits = load_digits().images[:n] * (255 / 16)
        sources = [Image.fromarray(np.stack([d, d[::-1], d.T], -1).astype(np.uint8)) for d in digits]
    files = []
    for i, img in enumerate(sources):
        img = img.resize((500 - i % 3, 375 - i % 2), Image.BICUBIC)
        img = img.convert("L") if i % 4 == 3 else img
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90, subsampling=2, progressive=i % 3 == 2)
        files.append(buf.getvalue())
    return files


# inductor (torch.compile on a CPU) builds C++: tests that compile skip where no C++ compiler is found
HAS_CXX = any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="torch.compile on a CPU needs a C++ compiler (g++)")


def tiny_dataset(n: int = 60, seed: int = 0, size: int = 12) -> datasets.Dataset:
    images, labels = tiny_images(n, size=size, seed=seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def parquet_with_a_broken_image(path: Path, args: list[str], index: int = 3) -> None:
    """Write tiny_dataset(60) to `path` with the source row of training sample `index` (under the run settings
    `args`, whose data.path is `path`) replaced by bytes that are no image."""
    from distill import data

    tiny_dataset(60).to_parquet(str(path))
    row = int(data.load(config_from(args).data).images["train"].rows.rows[index])  # the carve: labels and seed only
    ds = tiny_dataset(60).cast_column("image", datasets.Image(decode=False))
    rows = ds.to_dict()
    rows["image"][row] = {"bytes": b"not an image", "path": None}
    datasets.Dataset.from_dict(rows, features=ds.features).cast_column("image", datasets.Image()).to_parquet(str(path))


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


@contextlib.contextmanager
def extension_file(path: Path, source: str, registry):
    """A module file `path` holding `source`, in the folder of one of distill's extension points (distill/methods/,
    distill/data/sources/ ...): found by `registry` (distill/registry.py) for the block, removed after it (the
    registry read again), as a user adds one."""
    assert not path.exists()
    path.write_text(source)
    registry.reload()
    try:
        yield
    finally:
        path.unlink()
        for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*"):
            cached.unlink()
        registry.reload()


def run_cli(*args: str, cwd: Path, module: bool = False, timeout: int = 1800) -> subprocess.CompletedProcess:
    """`python distill/run.py ARGS` in a new process: for what needs one (the CLI itself, kill, two processes).
    `timeout` guards against a hang; it is no budget (a loaded machine may take many times longer)."""
    cmd = [sys.executable, "-m", "distill.run"] if module else [sys.executable, str(ROOT / "distill" / "run.py")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def run_here(*args: str) -> subprocess.CompletedProcess:
    """What `python distill/run.py ARGS` does, in this process: the recipe composed by Hydra's compose API, the
    overrides checked and validated, the stages run; a UserError becomes the CLI's `error: ...` line and exit 2.
    Returns the exit status and everything written to stderr (the log)."""
    import contextlib
    import io

    from distill import cli, config, run
    from distill.errors import Stopped, UserError

    recipe = next((a.split("=", 1)[1] for a in args if a.startswith("recipe=")), "demo")
    rest = [a for a in args if not a.startswith("recipe=")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli.check_overrides(rest, {p.name for p in (ROOT / "recipes").iterdir() if p.is_dir()})
            run.execute(config.validate(compose_recipe(recipe, rest)))
            code = 0
        except UserError as e:
            print(e if isinstance(e, Stopped) else f"error: {e}", file=sys.stderr)
            code = getattr(e, "exit_code", 2)
    return subprocess.CompletedProcess(["run_here", *args], code, "", err.getvalue())


def tiny_overrides(data_path: Path, run_root: Path, epochs: int = 2) -> list[str]:
    """A recipe small enough for a test: tiny data, resnet8 teacher, a couple of epochs."""
    return [f"data.path={data_path}", "data.source=auto", "data.val_size=12", "data.image_size=12",
            "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]", "data.num_workers=0",
            f"run_root={run_root}", "name=tiny", "precision=no", "teacher.model=resnet8",
            f"teacher.epochs={epochs}", "teacher.batch_size=16", "teacher.optim.lr=0.4"]


def dense_kl(student_logits, teacher_logits, temperature: float):
    """The reference KL(p_teacher_T || p_student_T), batchmean, straight from torch."""
    import torch.nn.functional as F

    return F.kl_div(F.log_softmax(student_logits.float() / temperature, 1),
                    F.log_softmax(teacher_logits.float() / temperature, 1), reduction="batchmean", log_target=True)


def random_teacher(path: Path, model: str = "resnet8", seed: int = 0) -> Path:
    """A timm checkpoint file with seeded random weights: a teacher without training time."""
    import timm
    import torch
    from safetensors.torch import save_file

    import distill.training.models  # noqa: F401  (registers the CIFAR ResNets)

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
    name = [] if any(o.startswith("name=") for o in overrides) else [f"name={recipe}"]
    with initialize_config_dir(config_dir=str(ROOT / "recipes"), version_base="1.3"):
        return compose("config", overrides=[f"recipe={recipe}", *name, *overrides])


class Shared:
    """One tiny data set and one random teacher file, and the caches tests ask for, each built once per test run
    (in this process). Tests only read them: a test that damages a cache works on a copy (`copy_cache`)."""

    def __init__(self, root: Path):
        self.root, self.data = root, root / "tiny.parquet"
        tiny_dataset().to_parquet(str(self.data))
        self.teacher_file = random_teacher(root / "teacher.safetensors")
        self.teacher_dir = root / "runs" / "tiny" / "teacher"
        self._caches: dict = {}

    def args(self, **kw) -> list[str]:
        return cache_overrides(self.data, self.root, self.teacher_file, **kw)

    def cache(self, **kw) -> Path:
        """The folder of the cache with these `cache_overrides` settings, built on first use."""
        key = tuple(sorted(kw.items()))
        if key not in self._caches:
            r = run_here(*self.args(**kw))
            assert r.returncode == 0, r.stderr
            import json
            self._caches[key] = Path(json.loads((self.root / "runs" / "tiny" / "cache.json").read_text())["folder"])
        return self._caches[key]

    def copy_cache(self, tmp: Path, **kw) -> Path:
        """A private copy of that cache under tmp/cache (the root `cache_overrides(..., tmp, ...)` uses)."""
        import shutil
        src = self.cache(**kw)
        dst = tmp / "cache" / src.name
        shutil.copytree(src, dst)
        return dst


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Shared:
    return Shared(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python distill/run.py` as a new user runs it (every stage of the demo recipe), once per test run: its
    folder (runs/ and cache/ inside) and the finished process. Tests may add runs beside it, never change it."""
    where = tmp_path_factory.mktemp("demo")
    r = run_cli(f"run_root={where / 'runs'}", f"cache.root={where / 'cache'}", cwd=where)
    assert r.returncode == 0, r.stderr
    return where, r


def labelled(labels):
    """A data.ViewBatch of unmixed views that carries only these labels (blank one-pixel images): what an objective
    reads of a batch besides its teachers' records."""
    import torch
    from distill.data import ViewBatch
    labels = torch.as_tensor(labels)
    return ViewBatch(image=torch.zeros(len(labels), 3, 1, 1, dtype=torch.uint8), label=labels,
                     index=torch.arange(len(labels)))
