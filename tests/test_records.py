"""The typed records (distill/store/records.py, store/checkpoint.py's Progress) read and write exactly the files the
code before them wrote: each fixture in tests/fixtures/records/ was written by that code (commit 2e54c90) from a
tiny run, and a record read from it writes it back byte for byte; a sealed one changed by hand is refused in one
line naming the file."""
import json
import shutil
from pathlib import Path

import pytest

from distill import files
from distill.errors import CheckpointError, DataError
from distill.store import checkpoint, layout
from distill.store.checkpoint import Progress
from distill.store.records import (CacheRun, EnsembleScore, ExportRecord, Failure, HeldOutScore, Meta, Metrics,
                                   Normalization, StepLine, Summary)

FIXTURES = Path(__file__).parent / "fixtures" / "records"


@pytest.mark.parametrize("name, record", [
    ("teacher_meta.json", Meta), ("student_meta.json", Meta), ("loaded_meta.json", Meta), ("cache.json", CacheRun),
    ("progress.json", Progress)])
def test_a_sealed_record_writes_back_the_bytes_the_old_code_wrote(tmp_path, name, record):
    record.read(FIXTURES / name, "test", "nothing").write(tmp_path / name)
    assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes()


@pytest.mark.parametrize("name, record", [("test.json", HeldOutScore), ("ensemble.json", EnsembleScore)])
def test_a_kept_score_writes_back_the_bytes_the_old_code_wrote(tmp_path, name, record):
    key = json.loads((FIXTURES / name).read_text())["key"]
    record.kept(FIXTURES / name, key, "test", "nothing").keep(tmp_path / name, key)
    assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes()
    assert record.kept(FIXTURES / name, {"another": "key"}, "test", "nothing") is None  # scored again


@pytest.mark.parametrize("name, record", [
    ("summary.json", Summary), ("summary_ensemble.json", Summary), ("export.json", ExportRecord),
    ("failed.json", Failure), ("failed_bug.json", Failure)])
def test_an_unsealed_record_writes_back_the_bytes_the_old_code_wrote(tmp_path, name, record):
    files.write_json(tmp_path / name, record.from_json(json.loads((FIXTURES / name).read_text())).to_json())
    assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes()


@pytest.mark.parametrize("name, record", [("metrics.jsonl", Metrics), ("steps.jsonl", StepLine)])
def test_a_log_line_writes_back_the_bytes_the_old_code_wrote(name, record):
    for line in (FIXTURES / name).read_text().splitlines():
        back = record.from_json(json.loads(line))
        assert json.dumps(back.line() if record is Metrics else back.to_json()) == line


def test_the_normalization_hashes_as_the_dict_it_replaces():
    """Fingerprints hash the normalization: its JSON is the dict the code before it passed (every folder name the
    same), as data_stats.json and meta.json hold it."""
    stats = json.loads((FIXTURES / "data_stats.json").read_text())["normalization"]
    meta = json.loads((FIXTURES / "teacher_meta.json").read_text())["normalization"]
    assert Normalization.from_json(stats).to_json() == stats == meta
    norm = Normalization.from_json(stats)
    assert files.fingerprint(norm.to_json()) == files.fingerprint(stats)
    assert Normalization(per_image=True).to_json() == {"per_image": True, "mean": None, "std": None}
    assert Normalization((0.5,) * 3, (0.25,) * 3).to_json() == {"per_image": False, "mean": [0.5] * 3,
                                                                "std": [0.25] * 3}


def test_the_derived_facts_are_the_ones_the_old_summary_wrote():
    old = json.loads((FIXTURES / "summary_ensemble.json").read_text())
    s = Summary.from_json(old)
    assert s.distilled == "ensemble" and s.teacher_below_baseline is None and s.kd_gain_top1 is None  # stale baseline
    assert [s.models[n].test.top1 for n in ("teacher-a", "ensemble")] == [70.0, 79.0]
    one = Summary.from_json(json.loads((FIXTURES / "summary.json").read_text()))
    assert one.kd_gain_top1 == 0.0 and one.teacher_below_baseline is False and one.caches["teacher"].reused


def _edited(tmp_path: Path, name: str, change) -> Path:
    obj = json.loads((FIXTURES / name).read_text())
    change(obj)
    (tmp_path / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return tmp_path / name


@pytest.mark.parametrize("name, record, change", [
    ("student_meta.json", Meta, lambda o: o["metrics"].update(top1=99.9)),
    ("cache.json", CacheRun, lambda o: o.update(skipped_images=3)),
    ("test.json", HeldOutScore, lambda o: o["metrics"].update(top1=99.9)),
    ("ensemble.json", EnsembleScore, lambda o: o["metrics"].update(top1=99.9))])
def test_a_sealed_record_changed_by_hand_is_refused_in_one_line(tmp_path, name, record, change):
    path = _edited(tmp_path, name, change)
    with pytest.raises(DataError) as e:
        record.read(path, "report", "delete it")
    assert str(e.value) == f"report: {path} was changed after it was written; restore it, or delete it"


def test_a_meta_json_changed_by_hand_is_refused_where_a_stage_needs_it(tmp_path):
    shutil.copy(FIXTURES / "student_meta.json", tmp_path / "meta.json")
    assert Meta.in_folder(tmp_path).sealed and layout.require_trained(tmp_path, "export", "student").model == "resnet8"
    _edited(tmp_path, "student_meta.json", lambda o: o.update(params=1)).replace(tmp_path / "meta.json")
    meta = Meta.in_folder(tmp_path)  # only named, never read: its fingerprint alone
    assert not meta.sealed and meta.params == 0 and meta.fingerprint == json.loads(
        (FIXTURES / "student_meta.json").read_text())["fingerprint"]
    with pytest.raises(DataError, match=rf"^export: {tmp_path / 'meta.json'} was changed after it was written; "
                                        rf"restore it, or delete {tmp_path} and run stage=student to remake it$"):
        layout.require_trained(tmp_path, "export", "student")


def test_a_progress_json_changed_by_hand_is_refused_in_one_line(tmp_path):
    ckpt = tmp_path / "step-000000002"
    ckpt.mkdir()
    _edited(tmp_path, "progress.json", lambda o: o.update(epoch=1)).replace(ckpt / "progress.json")
    with pytest.raises(CheckpointError, match=rf"^student: {ckpt / 'progress.json'} was changed after it was "
                                              rf"written; restore it, or set resume=never"):
        checkpoint._progress(ckpt, "student")
    old = _edited(tmp_path, "progress.json", lambda o: o.update(format_version=2))
    old.replace(ckpt / "progress.json")  # an older layout: passed over (another checkpoint may do), not refused
    assert checkpoint._progress(ckpt, "student") == "it is checkpoint format 2, this distill reads 3"
