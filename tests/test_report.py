"""The end-of-run report shows only what the current settings made: a partial stage= run with one setting changed
marks every output made with the old one stale, shows none of its numbers and computes no gain across settings."""
import json

import pytest

from conftest import run_here, tiny_dataset, tiny_overrides
from distill import files, freshness, report
from distill.errors import DataError
from distill.store import artifacts, layout
from distill.store.records import CacheRun, Meta, Summary


def _meta(model: str, top1: float) -> Meta:
    return Meta.from_json({"model": model, "params": 78042, "wall_s": 1.0,
                           "metrics": {"top1": top1, "top5": 99.0, "images_per_s": 100.0, "epoch": 2}})


@pytest.mark.parametrize("teacher", ["teacher", "teacher-only"])  # the one teacher, or a one-teacher ensemble's
@pytest.mark.parametrize("teacher_top1, below", [(70.0, True), (80.0, False)])
def test_report_flags_a_teacher_below_the_baseline(tmp_path, teacher, teacher_top1, below):
    found = freshness.Survey(models={name: freshness.Output(tmp_path / name, _meta("resnet8", top1)) for name, top1
                                     in ((teacher, teacher_top1), ("student", 74.0), ("baseline", 75.0))})
    s = report.summary(tmp_path, found)
    assert s.teacher_below_baseline is below
    assert (f"warning: the {teacher} ({teacher_top1:.2f}%) scores below the CE baseline (75.00%)"
            in report.table(s)) is below


@pytest.mark.parametrize("teachers, rows", [(["teacher"], ["cache     "]), (["a", "b"], ["cache-a   ", "cache-b   "])])
def test_each_teachers_cache_is_listed_by_teacher_name_one_teacher_or_several(tmp_path, teachers, rows):
    record = CacheRun("/c", reused=True, skipped_images=2)
    found = freshness.Survey(models={"student": freshness.Output(tmp_path / "s", _meta("resnet8", 74.0))},
                             caches={t: freshness.Output(tmp_path / "c", record) for t in teachers})
    s = report.summary(tmp_path, found)
    assert s.caches == {t: record for t in teachers} and "cache" not in s.to_json()
    lines = report.table(s).splitlines()
    assert [line[:10] for line in lines if line.startswith("cache")] == rows
    assert lines[-1] == "left out, failing to decode (data.on_bad_image=skip): cache 2 images (training: last epoch)"


def test_a_stale_output_is_listed_with_its_reason_and_none_of_its_numbers(tmp_path):
    found = freshness.Survey(models={"teacher": freshness.Output(tmp_path / "t", _meta("resnet20", 91.0)),
                                     "student": freshness.Output(tmp_path / "s", _meta("resnet8", 88.12),
                                                                 "made from another cache; run stage=student"),
                                     "baseline": freshness.Output(tmp_path / "b", _meta("resnet8", 80.0))})
    s = report.summary(tmp_path, found)
    assert set(s.models) == {"teacher", "baseline"} and "kd_gain_top1" not in s.to_json()
    why = "made from another cache; run stage=student"
    assert s.to_json()["stale"] == {"student": {"folder": str(tmp_path / "s"), "why": why}}
    text = report.table(s)
    assert "88.12" not in text and "KD gain" not in text
    assert "student    stale: made from another cache; run stage=student" in text


def test_a_meta_json_edited_by_hand_is_not_sealed(tmp_path):
    _meta("resnet8", 70.0).write(tmp_path / "meta.json")
    assert Meta.in_folder(tmp_path).sealed and Meta.in_folder(tmp_path).metrics.top1 == 70.0  # as read back
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["metrics"]["top1"] = 99.9
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert not Meta.in_folder(tmp_path).sealed
    (tmp_path / "meta.json").write_text(json.dumps(_meta("resnet8", 70.0).to_json()))  # no seal at all
    assert not Meta.in_folder(tmp_path).sealed


def test_a_meta_json_without_its_seal_is_refused_not_reused_or_redone(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "meta.json").write_text(json.dumps(_meta("resnet8", 70.0).to_json() | {"fingerprint": "fp"}))
    with pytest.raises(DataError, match=r"^student: .*meta.json was changed after it was written"):
        artifacts.reusable(tmp_path, "fp", "student")
    assert artifacts.reusable(tmp_path, "other", "student") is None  # made with other settings: the stage runs


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny run through every stage up to the report: its arguments, and its folder."""
    tmp, data = tmp_path_factory.mktemp("fresh"), tmp_path_factory.mktemp("fresh_data") / "tiny.parquet"
    tiny_dataset().to_parquet(str(data))  # outside the folder tests copy: the data's path is part of its identity
    args = [*tiny_overrides(data, tmp / "runs", epochs=1), f"cache.root={tmp / 'cache'}",
            "cache.shard_size=32", "cache.batch_size=24", "cache.views=3", "cache.topk=3", "student.model=resnet8",
            "student.epochs=1", "student.batch_size=16", "student.baseline=true", "stage=report"]
    r = run_here(*args)
    assert r.returncode == 0, r.stderr
    return args, tmp / "runs" / "tiny"


def _summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def _copy(pipeline, tmp_path):
    """A private copy of the pipeline's run folder and cache root; the arguments pointing at it."""
    import shutil

    args, run = pipeline
    shutil.copytree(run.parent.parent, tmp_path, dirs_exist_ok=True)
    old = str(run.parent.parent)
    for record in (tmp_path / "runs" / "tiny").glob("cache*.json"):  # the copied cache, where the copy is
        files.write_sealed(record, json.loads(record.read_text().replace(old, str(tmp_path))))  # resealed
    return [a.replace(old, str(tmp_path)) for a in args], tmp_path / "runs" / "tiny"


def test_the_full_run_shows_every_output_current(pipeline):
    s = _summary(pipeline[1])
    assert set(s["models"]) == {"teacher", "student", "baseline"} and "stale" not in s
    assert "kd_gain_top1" in s and s["caches"]["teacher"]["folder"] and s["format_version"] == Summary.FORMAT_VERSION


@pytest.mark.parametrize("change, stale, current", [
    # the teacher retrained with another lr: its cache and its student are the old teacher's
    (["stage=teacher", "teacher.optim.lr=0.3"], {"cache": "made from another teacher; run stage=cache",
                                                 "student": "made from another cache"},
     {"teacher", "baseline"}),
    # another cache: the student was trained from the old one
    (["stage=cache", "cache.views=2", "cache.topk=2"], {"student": "made from another cache"},
     {"teacher", "baseline", "cache"}),
    # a student setting of the KD student alone: the student retrains, the baseline stays current
    (["stage=student", "kd.alpha=0.5"], {}, {"teacher", "baseline", "student", "cache"}),
    # the baseline's own settings changed, the baseline not retrained (student.baseline=false)
    (["stage=student", "student.optim.lr=0.2", "student.baseline=false"],
     {"baseline": "made with other baseline settings; run stage=student student.baseline=true"},
     {"teacher", "student", "cache"}),
    # online KD uses no cache: the cached run's cache is not listed at all
    (["stage=student", "kd.teacher=online"], {}, {"teacher", "baseline", "student"}),
])
def test_one_setting_changed_per_stage_marks_every_row(pipeline, tmp_path, change, stale, current):
    args, run = _copy(pipeline, tmp_path)
    before = _summary(run)
    r = run_here(*args, *change)
    assert r.returncode == 0, r.stderr
    s = _summary(run)
    shown = set(s["models"]) | {layout.named("cache", teacher) for teacher in s.get("caches", {})}
    assert shown == current
    assert {name: entry["why"] for name, entry in s.get("stale", {}).items()}.keys() == stale.keys()
    for name, why in stale.items():
        assert s["stale"][name]["why"].startswith(why)
        assert f"{name:10} stale: {why}" in r.stderr
    assert ("kd_gain_top1" in s) == ({"student", "baseline"} <= current)
    if "student" in stale:  # the old student's number appears nowhere
        old = f"{before['models']['student']['top1']:.2f}"
        assert all(old not in line for line in r.stderr.splitlines() if line.startswith("student"))


def test_a_hand_edited_meta_json_is_never_shown_as_measured(pipeline, tmp_path):
    args, run = _copy(pipeline, tmp_path)
    meta_file = run / "baseline" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["metrics"]["top1"] = 99.9
    meta_file.write_text(json.dumps(meta))
    r = run_here(*args, "stage=teacher")  # the report alone looks at the baseline
    assert r.returncode == 0, r.stderr
    s = _summary(run)
    assert "baseline" not in s["models"] and "was changed after it was written" in s["stale"]["baseline"]["why"]
    assert "99.9" not in r.stderr
    r = run_here(*args)  # the student stage would reuse it: stopped in one line, naming the file
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        f"error: baseline: {meta_file} was changed after it was written")
