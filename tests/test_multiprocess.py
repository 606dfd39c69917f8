"""Two processes under `accelerate launch --multi_gpu` (two CPU processes on gloo here): all stages, exact
validation counts, and a cache byte-identical to one process's."""
import json
import os
import subprocess
import sys

from conftest import ROOT, random_teacher, run_here, tiny_overrides


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_processes_run_every_stage(parquet_file, tmp_path):
    common = tiny_overrides(parquet_file, tmp_path / "runs", epochs=1) + [
        "data.val_size=13",  # odd: DDP pads the last batch, gather_for_metrics must drop the padding
        "teacher.source=timm", f"teacher.checkpoint={random_teacher(tmp_path / 't.safetensors')}",
        "teacher.finetune.epochs=1", "teacher.batch_size=8", "cache.shard_size=16", "cache.views=2", "cache.topk=3",
        "student.epochs=1", "student.batch_size=8", "student.baseline=true"]
    two = tmp_path / "two"
    two.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "distill" / "run.py"),
           *common, f"cache.root={two / 'cache'}"]
    r = subprocess.run(cmd, cwd=two, capture_output=True, text=True, timeout=1800,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert "global batch 16, lr 0.025 (sgd), 2 process(es)" in r.stderr  # two ranks really formed one group
    assert "(0 of this process's 2 already done)" in r.stderr  # 47 images, 3 shards: rank 0 labels 2 of them
    run = tmp_path / "runs" / "tiny"
    for stage in ("teacher", "student", "baseline"):
        meta = json.loads((run / stage / "meta.json").read_text())
        assert meta["metrics"]["val_count"] == 13, stage
        assert meta["metrics"]["step"] == 47 // 16, stage  # global batch 16 over 47 training images

    one = tmp_path / "one"  # one process, the same teacher: the same cache bytes
    r1 = run_here(*common, f"cache.root={one / 'cache'}", f"teacher.dir={run / 'teacher'}", "name=one", "stage=cache")
    assert r1.returncode == 0, r1.stderr
    assert "teacher: reusing" in r1.stderr
    (a,), (b,) = ([p for p in (root / "cache").iterdir() if p.is_dir()] for root in (one, two))
    assert a.name == b.name and _files(a) == _files(b)
