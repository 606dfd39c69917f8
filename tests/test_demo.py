"""The demo as a new user runs it: `python distill/run.py` with no arguments, then once more."""
import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_demo_runs_every_stage_then_skips_teacher_and_cache(tmp_path):
    args = (f"run_root={tmp_path / 'runs'}", f"cache.root={tmp_path / 'cache'}")
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "demo"
    teacher = json.loads((run / "teacher" / "meta.json").read_text())
    assert teacher["metrics"]["top1"] >= 90.0 and teacher["metrics"]["val_count"] == 360
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "student", "baseline"}
    assert "KD gain over the CE baseline" in r.stderr and "top-1" in r.stderr
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "teacher: reusing" in again.stderr and "cache: reusing" in again.stderr
