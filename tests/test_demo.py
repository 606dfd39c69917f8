"""The demo as a new user runs it: `python distill/run.py` with no arguments, then once more."""
import json

from conftest import run_cli


def test_demo_runs_every_stage_then_skips_what_is_done(demo):
    where, r = demo
    run = where / "runs" / "demo"
    teacher = json.loads((run / "teacher" / "meta.json").read_text())
    assert teacher["metrics"]["top1"] >= 90.0 and teacher["metrics"]["val_count"] == 360
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "student", "baseline"} and not summary["caches"]["teacher"]["reused"]
    assert summary["models"]["student"]["top1"] > summary["models"]["baseline"]["top1"]  # what the demo shows
    assert "KD gain over the CE baseline" in r.stderr
    metas = {stage: (run / stage / "meta.json").read_bytes() for stage in ("teacher", "student", "baseline")}
    again = run_cli(f"run_root={where / 'runs'}", f"cache.root={where / 'cache'}", cwd=where)
    assert again.returncode == 0, again.stderr
    assert {stage: (run / stage / "meta.json").read_bytes() for stage in metas} == metas  # nothing retrained
    assert json.loads((run / "summary.json").read_text())["caches"]["teacher"]["reused"]
