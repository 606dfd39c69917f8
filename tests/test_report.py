"""The end-of-run report: it says when the teacher scores below the CE baseline, and only then."""
import pytest

from distill import files, report


@pytest.mark.parametrize("teacher_top1, below", [(70.0, True), (80.0, False)])
def test_report_flags_a_teacher_below_the_baseline(tmp_path, teacher_top1, below):
    for name, top1 in (("teacher", teacher_top1), ("student", 74.0), ("baseline", 75.0)):
        files.write_json(tmp_path / name / "meta.json", {
            "model": "resnet8", "params": 78042, "wall_s": 1.0,
            "metrics": {"top1": top1, "top5": 99.0, "images_per_s": 100.0, "epoch": 2}})
    s = report.summary(tmp_path)
    assert s["teacher_below_baseline"] is below
    assert ("scores below the CE baseline (75.00%)" in report.table(s)) is below
