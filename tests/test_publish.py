"""stage=publish and teacher.source=published: a cache published as a Hugging Face dataset folder, read back with
`datasets` and pyarrow alone, offline through huggingface_hub's cache, and trained from with bit-identical results."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import cache_overrides, run_here

MIXED = {"cache__mix__mixup_alpha": 1.0, "cache__mix__cutmix_alpha": 1.0, "cache__mix__prob": 0.8}
STUDENT = ["stage=student", "student.epochs=1", "student.batch_size=16"]


def _published_args(args: list[str], where: Path, path) -> list[str]:
    """The same recipe, with no teacher of its own: the published cache at `path` is the teacher."""
    kept = [a for a in args if not a.startswith(("teacher.", "run_root=", "cache.root=", "stage="))]
    return kept + [f"run_root={where / 'runs'}", f"cache.root={where / 'cache'}", "teacher.source=published",
                   f"teacher.path={path}"]


def _publish(shared, tmp: Path, **kw) -> tuple[list[str], Path]:
    """A private native cache (and teacher) in tmp, the student trained from it, then stage=publish: the args and
    the published folder."""
    args = cache_overrides(shared.data, tmp, shared.teacher_file, **kw)
    r = run_here(*args, *STUDENT)
    assert r.returncode == 0, r.stderr
    r = run_here(*args, "stage=publish")
    assert r.returncode == 0, r.stderr
    assert "B/view published" in r.stderr
    return args, tmp / "runs" / "tiny" / "published"


@pytest.mark.parametrize("kw", [{}, MIXED], ids=["plain", "mixed"])
def test_student_from_published_is_bit_identical(shared, tmp_path, kw):
    args, folder = _publish(shared, tmp_path / "a", **kw)
    native = load_file(str(tmp_path / "a" / "runs" / "tiny" / "student" / "model.safetensors"))
    moved = shutil.copytree(folder, tmp_path / "pub")
    shutil.rmtree(tmp_path / "a")  # the teacher's folder and the native cache: gone
    r = run_here(*_published_args(args, tmp_path / "b", moved), *STUDENT)
    assert r.returncode == 0, r.stderr
    again = load_file(str(tmp_path / "b" / "runs" / "tiny" / "student" / "model.safetensors"))
    assert native.keys() == again.keys()
    assert all((native[k] == again[k]).all() for k in native)


def test_published_folder_reads_with_datasets_and_pyarrow(shared, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    _, folder = _publish(shared, tmp_path, **MIXED)
    ds = datasets.load_dataset(str(folder), split="train")
    assert len(ds) == 48 and {"key", "label", "kind", "top", "logits", "lse_rest", "partner_key"} <= set(ds.features)
    table = pq.read_table(sorted((folder / "data").glob("train-*.parquet")))
    assert table.num_rows == 48 and table.column("key").to_pylist() == ds["key"]
    assert str(table.schema.field("logits").type) == "fixed_size_list<element: fixed_size_list<element: halffloat>[3]>[3]"
    card = (folder / "README.md").read_text()
    meta = json.loads(json.dumps(__import__("yaml").safe_load(card.split("---")[1])))["distill"]
    assert meta["rows"] == 48 and meta["teacher_model"] == "resnet8" and len(meta["shards"]) == 3
