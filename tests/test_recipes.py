"""The recipe library end to end: resnet50_to_r18 on tiny local data, and a Hydra multirun sweep."""
import json
import subprocess
import sys

import timm
import torch
from safetensors.torch import save_file

from conftest import CLASSES, ROOT, run_cli, run_here, tiny_images
from distill import files


def test_resnet50_to_r18_runs_every_stage_offline(tmp_path):
    root = tmp_path / "imagenet"  # an imagefolder with the hub layout's two splits
    for split, n, seed in (("train", 24, 0), ("validation", 9, 1)):
        images, labels = tiny_images(n, size=40, seed=seed)
        for i, (img, label) in enumerate(zip(images, labels)):
            (root / split / CLASSES[label]).mkdir(parents=True, exist_ok=True)
            img.save(root / split / CLASSES[label] / f"{i}.png")
    torch.manual_seed(0)
    ckpt = tmp_path / "resnet50.safetensors"  # stands in for the hub weights: timm's real loading code reads it
    save_file(timm.create_model("resnet50", num_classes=len(CLASSES)).state_dict(), str(ckpt))
    r = run_here("recipe=resnet50_to_r18", f"data.path={root}", f"teacher.checkpoint={ckpt}",
                f"run_root={tmp_path}/runs",
                f"cache.root={tmp_path}/cache", "data.image_size=32", "data.num_workers=0", "precision=no",
                "cache.views=2", "cache.batch_size=16", "student.epochs=1", "student.batch_size=8",
                 "student.sched.warmup_epochs=0", "data.val_size=6")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "resnet50_to_r18"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["models"]["teacher"]["model"] == "resnet50" and summary["models"]["student"]["model"] == "resnet18"
    assert json.loads((run / "student" / "meta.json").read_text())["metrics"]["val_count"] == 6  # carved from train
    assert {m["test_count"] for m in summary["models"].values()} == {9}  # the validation split, held out
    assert (run / "export" / "config.json").exists()
    assert "teacher: loaded resnet50 from" in r.stderr


def test_multirun_sweep_shares_teacher_and_cache(demo):
    """Two points of `-m kd.temperature=2,4` beside the demo run: both use its teacher and its cache (all 10 logits,
    so any T), and train only their students."""
    where, _ = demo
    teacher = where / "runs" / "demo" / "teacher"
    before = (teacher / "meta.json").read_bytes()
    r = run_cli("-m", f"run_root={where / 'runs'}", f"cache.root={where / 'cache'}", "student.epochs=1",
                "student.baseline=false", "kd.temperature=2,4", cwd=where)
    assert r.returncode == 0, r.stderr
    (sweep,) = (where / "runs" / "demo" / "sweep").iterdir()  # this sweep's own folder
    demo_cache = json.loads((where / "runs" / "demo" / "cache.json").read_text())["folder"]
    for point in ("0", "1"):
        record = json.loads((sweep / point / "cache.json").read_text())
        assert files.is_sealed(record) and record | {"seal": None} == {
            "folder": demo_cache, "reused": True, "skipped_images": 0, "seal": None}
    assert (teacher / "meta.json").read_bytes() == before and not (sweep / "0" / "teacher").exists()
    temps = {json.loads((sweep / p / "student" / "meta.json").read_text())["config"]["kd"]["temperature"]
             for p in ("0", "1")}
    assert temps == {2.0, 4.0}
    table = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep_table.py"), str(sweep)], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert table[0].split()[:2] == ["point", "kd.temperature"] and len(table) == 3
    assert {line.split()[1] for line in table[1:]} == {"2.0", "4.0"}
    # a second sweep writes its own folder, and leaves the first one's points as they were
    first = {p: (sweep / p / "student" / "meta.json").read_bytes() for p in ("0", "1")}
    r = run_cli("-m", f"run_root={where / 'runs'}", f"cache.root={where / 'cache'}", "student.epochs=1",
                "student.baseline=false", "kd.temperature=8", cwd=where)
    assert r.returncode == 0, r.stderr
    sweeps = sorted((where / "runs" / "demo" / "sweep").iterdir())
    assert len(sweeps) == 2 and {p: (sweep / p / "student" / "meta.json").read_bytes() for p in ("0", "1")} == first
    both = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep_table.py"), str(sweep.parent)],
                          capture_output=True, text=True, check=True).stdout
    assert both.count("point") == 2 and all(f"{s.name}:" in both for s in sweeps)  # one table a sweep


def test_a_sweep_over_a_teacher_setting_trains_a_teacher_per_point():
    """Sweep points share one teacher folder unless the sweep changes the teacher (a shared teacher.dir holds
    one teacher, and refuses another in one line)."""
    from distill import sweep
    assert not sweep._sweeps_a_teacher(["-m", "kd.temperature=1,4", "kd.alpha=0.5,0.9", "teacher.epochs=3"])
    assert sweep._sweeps_a_teacher(["-m", "teacher.epochs=3,5"])
    assert sweep._sweeps_a_teacher(["-m", "seed=0,1"])
    assert sweep._sweeps_a_teacher(["-m", "data.train_size=range(100,300,100)"])
    assert not sweep._sweeps_a_teacher(["-m", "data.mean=[0.5,0.5,0.5]"])  # a list is one value
