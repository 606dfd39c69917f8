"""Crash safety of training stages: exact resume after SIGKILL, SIGTERM, damaged checkpoints, disk full, NaN."""
import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator

from conftest import ROOT, cache_overrides, config_from, random_teacher, run_here, tiny_dataset, tiny_overrides
from distill import data, files
from distill.store import artifacts, checkpoint, layout
from distill.training import objectives
from distill.stages import teacher
from distill.errors import CheckpointError, TrainingError
from distill.training.context import RunContext

STEPS_PER_EPOCH = 30  # 480 training images / batch 16


@pytest.fixture(scope="module")
def student_setup(tmp_path_factory):
    """Data, a teacher file and the student-stage arguments; plus the uninterrupted reference run."""
    tmp = tmp_path_factory.mktemp("resume")
    path = tmp / "data.parquet"
    tiny_dataset(510, size=16).to_parquet(str(path))
    teacher_file = random_teacher(tmp / "teacher.safetensors")

    def args(where):
        return cache_overrides(path, where, teacher_file) + [
            "data.image_size=16", "data.val_size=30", "stage=student", "student.model=resnet8", "student.epochs=3",
            "student.batch_size=16", "student.log_every=5", "checkpoint.every=4", "checkpoint.keep=2",
            "cache.shard_size=1000"]

    ref = tmp / "ref"
    r = run_here(*args(ref))
    assert r.returncode == 0, r.stderr
    return args, ref / "runs" / "tiny" / "student"


def _start_and_interrupt(args, where, sig):
    """Run in a subprocess that receives `sig` right after the student's step 6, past its first mid-epoch checkpoint
    (checkpoint.every=4): at a step, whatever the machine's speed (distill.faults), not after a delay."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISTILL_FAULT=f"student:6:{signal.Signals(sig).name[3:]}")
    proc = subprocess.run([sys.executable, str(ROOT / "distill" / "run.py"), *args], cwd=where, env=env,
                          capture_output=True, text=True, timeout=1800)  # a hang guard, not a budget
    return proc.returncode, proc.stderr


def _steps(out):
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_student_resumes_to_the_same_weights(student_setup, tmp_path, sig):
    args, ref = student_setup
    code, err = _start_and_interrupt(args(tmp_path), tmp_path, sig)
    out = tmp_path / "runs" / "tiny" / "student"
    assert not (out / "meta.json").exists(), "interrupted too late: the student had finished"
    if sig == signal.SIGTERM:  # preemption: a clean stop with a complete checkpoint
        assert code == 143 and "student: stopped by SIGTERM at step" in err and "Traceback" not in err
        newest = checkpoint.complete(out / "checkpoints")[-1]
        assert isinstance(checkpoint._progress(newest), checkpoint.Progress)
    else:
        assert code == -signal.SIGKILL
    r = run_here(*args(tmp_path))
    assert r.returncode == 0, r.stderr
    resumed = [line for line in r.stderr.splitlines() if "resuming at epoch" in line]
    assert resumed and "step 0" not in resumed[0]
    want, got = artifacts.load_weights(ref), artifacts.load_weights(out)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)  # bitwise
    steps = _steps(out)
    assert [s["step"] for s in steps] == list(range(5, 3 * STEPS_PER_EPOCH + 1, 5))  # none twice, none missing
    assert steps == _steps(ref)  # and the same losses
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert not (out / "checkpoints").exists()
    meta = json.loads((out / "meta.json").read_text())  # its wall time adds the interrupted part to the resumed one
    assert 0 < meta["metrics"]["earlier_wall_s"] < meta["wall_s"]


# ---------------------------------------------------------------- in-process faults of the teacher stage

def _teacher_cfg(parquet_file, tmp_path, *extra):
    return config_from(tiny_overrides(parquet_file, tmp_path / "runs", epochs=3)
                       + ["checkpoint.every=2", "checkpoint.keep=3", *extra])


def _crash_at(monkeypatch, call: int, make=lambda loss: loss * float("nan")):
    """Make the teacher objective misbehave at its `call`-th call (training step `call` with grad_accum 1)."""
    real = objectives.CrossEntropy
    calls = {"n": 0}

    def patched(num_classes, eps):
        objective = real(num_classes, eps)

        def wrapped(logits, batch, mix, x, progress):
            calls["n"] += 1
            terms = objective(logits, batch, mix, x, progress)
            return {"loss": make(terms["loss"])} if calls["n"] == call else terms
        return wrapped
    monkeypatch.setattr(objectives, "CrossEntropy", patched)


def _crash(loss):
    raise RuntimeError("injected crash")


def _run_teacher(cfg, tmp_path):
    bundle = data.load(cfg.data)
    norm = layout.normalization(cfg.data, bundle)
    return teacher.run(RunContext.make(cfg, Accelerator(cpu=True), bundle, norm, tmp_path / "runs" / "tiny"))["teacher"]


def test_damaged_checkpoint_is_never_half_loaded(parquet_file, tmp_path, monkeypatch, caplog):
    cfg = _teacher_cfg(parquet_file, tmp_path)
    _crash_at(monkeypatch, 7, _crash)  # 3 steps per epoch: checkpoints at steps 2, 3 (epoch end), 4, 6 (epoch end)
    with pytest.raises(RuntimeError, match="injected crash"):
        _run_teacher(cfg, tmp_path)
    folder = tmp_path / "runs" / "tiny" / "teacher" / "checkpoints"
    names = [p.name for p in checkpoint.complete(folder)]
    assert names == ["step-000000003", "step-000000004", "step-000000006"]
    newest = folder / names[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    (folder / names[1] / "random_states_0.pkl").unlink()  # an RNG state lost
    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger="distill")
    meta = _run_teacher(cfg, tmp_path)  # falls back to the oldest complete one
    assert "model.safetensors fails its checksum" in caplog.text and "random_states_0.pkl is missing" in caplog.text
    assert f"resumed from {folder / names[0]}" in caplog.text and meta.metrics.epochs == 3


def test_foreign_or_unrestorable_checkpoints_stop_the_run(parquet_file, tmp_path, monkeypatch):
    cfg = _teacher_cfg(parquet_file, tmp_path)
    _crash_at(monkeypatch, 5, _crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        _run_teacher(cfg, tmp_path)
    monkeypatch.undo()
    changed = _teacher_cfg(parquet_file, tmp_path, "teacher.label_smoothing=0.2")
    with pytest.raises(CheckpointError, match="written by another configuration of this stage; set resume=never"):
        _run_teacher(changed, tmp_path)
    folder = tmp_path / "runs" / "tiny" / "teacher" / "checkpoints"
    kept = {ckpt: (ckpt / "progress.json").read_text() for ckpt in checkpoint.complete(folder)}
    for ckpt, text in kept.items():  # as an older distill wrote them: no format_version
        (ckpt / "progress.json").write_text(json.dumps({k: v for k, v in json.loads(text).items()
                                                        if k != "format_version"}))
    with pytest.raises(CheckpointError, match=r"no checkpoint can be restored \(newest: .*it is checkpoint format 1, "
                                              rf"this distill reads {checkpoint.FORMAT_VERSION}\)"):
        _run_teacher(cfg, tmp_path)
    for ckpt, text in kept.items():
        (ckpt / "progress.json").write_text(text)
        (ckpt / "optimizer.bin").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match=r"no checkpoint can be restored \(newest: .*optimizer.bin fails its "
                                              r"checksum"):
        _run_teacher(cfg, tmp_path)
    meta = _run_teacher(_teacher_cfg(parquet_file, tmp_path, "resume=never"), tmp_path)  # starts over
    assert meta.metrics.epochs == 3


def test_a_progress_json_changed_by_hand_is_refused_in_one_line(parquet_file, tmp_path, monkeypatch):
    """The issue's case: "epoch" changed in the newest checkpoint's progress.json would train an epoch twice."""
    cfg = _teacher_cfg(parquet_file, tmp_path)
    _crash_at(monkeypatch, 5, _crash)  # checkpoints at steps 2, 3 (epoch end), 4
    with pytest.raises(RuntimeError, match="injected crash"):
        _run_teacher(cfg, tmp_path)
    monkeypatch.undo()
    newest = checkpoint.complete(tmp_path / "runs" / "tiny" / "teacher" / "checkpoints")[-1]
    progress = json.loads((newest / "progress.json").read_text())
    (newest / "progress.json").write_text(json.dumps(progress | {"epoch": progress["epoch"] - 1}))
    with pytest.raises(CheckpointError) as e:
        _run_teacher(cfg, tmp_path)
    assert str(e.value) == f"teacher: {newest / 'progress.json'} was changed after it was written; restore it, or " \
                           f"set resume=never (or delete {newest.parent}) to start the stage over"


def _teacher_process(parquet_file, where, threads: int | None, fault: str | None = None):
    """The tiny teacher trained by `python distill/run.py stage=teacher` in a new process under `threads` CPU threads
    (OMP_NUM_THREADS; None: torch's default), killed where `fault` says; its weights when it finished."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DISTILL_FAULT")}
    env |= {"PYTHONPATH": str(ROOT)} | ({"OMP_NUM_THREADS": str(threads)} if threads else {}) | (
        {"DISTILL_FAULT": fault} if fault else {})
    args = tiny_overrides(parquet_file, where / "runs", epochs=3) + ["checkpoint.every=2", "stage=teacher"]
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, str(ROOT / "distill" / "run.py"), *args], cwd=where, env=env,
                       capture_output=True, text=True, timeout=1800)  # a hang guard, not a budget
    assert r.returncode == (-signal.SIGKILL if fault else 0), r.stderr
    return r.stderr, None if fault else artifacts.load_weights(where / "runs" / "tiny" / "teacher")


def test_a_resume_under_another_thread_count_restores_the_checkpoints(parquet_file, tmp_path):
    """Killed under 1 CPU thread (as `accelerate launch --cpu` starts it), resumed under 2 (`python distill/run.py`):
    the uninterrupted 1-thread run's weights, bit for bit (which differ from the 2-thread run's)."""
    if torch.get_num_threads() < 2:
        pytest.skip("needs 2 CPU threads")
    _, one = _teacher_process(parquet_file, tmp_path / "one", 1)
    _, two = _teacher_process(parquet_file, tmp_path / "two", 2)
    assert not all(torch.equal(one[k], two[k]) for k in one)  # the bytes depend on the thread count
    _teacher_process(parquet_file, tmp_path / "resumed", 1, fault="teacher:5:KILL")
    log, resumed = _teacher_process(parquet_file, tmp_path / "resumed", None)
    assert f"teacher: 1 CPU thread(s) as when the checkpoint was written (this process had " \
           f"{torch.get_num_threads()})" in log
    assert all(torch.equal(one[k], resumed[k]) for k in one)


def test_disk_full_keeps_the_last_good_checkpoint(parquet_file, tmp_path, monkeypatch):
    cfg = _teacher_cfg(parquet_file, tmp_path)
    real, calls = Accelerator.save_state, {"n": 0}

    def failing(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            os.makedirs(output_dir, exist_ok=True)
            open(os.path.join(output_dir, "model.safetensors"), "wb").write(b"partial")
            raise OSError(28, "No space left on device")
        return real(self, output_dir, **kw)
    monkeypatch.setattr(Accelerator, "save_state", failing)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step-000000004 \(No space left on "
                                              r"device\); the last complete checkpoint is .*step-000000003"):
        _run_teacher(cfg, tmp_path)
    folder = tmp_path / "runs" / "tiny" / "teacher" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000000002", "step-000000003"]  # no half-written one
    monkeypatch.undo()
    assert _run_teacher(cfg, tmp_path).metrics.epochs == 3


def test_nonfinite_loss_stops_with_the_step_number_under_abort(parquet_file, tmp_path, monkeypatch):
    _crash_at(monkeypatch, 5)  # step 5 = epoch 2, second step; checkpoints at steps 2, 3 (epoch end) and 4
    with pytest.raises(TrainingError, match=r"teacher: non-finite loss at step 5; stopped \(last good checkpoint: "
                                            r".*step-000000004\)"):
        _run_teacher(_teacher_cfg(parquet_file, tmp_path), tmp_path)
    out = tmp_path / "runs" / "tiny" / "teacher"
    assert [p.name for p in checkpoint.complete(out / "checkpoints")][-1] == "step-000000004"  # none after the NaN
    assert not (out / "meta.json").exists()


def test_nonfinite_loss_is_skipped_and_counted_under_skip(parquet_file, tmp_path, monkeypatch):
    _crash_at(monkeypatch, 5)
    meta = _run_teacher(_teacher_cfg(parquet_file, tmp_path, "on_nonfinite=skip"), tmp_path)
    assert meta.metrics.training.nonfinite_skipped == 1 and meta.metrics.epochs == 3
    assert all(torch.isfinite(v).all() for v in artifacts.load_weights(tmp_path / "runs" / "tiny" / "teacher").values()
               if v.is_floating_point())
    _crash_at(monkeypatch, 2)
    with pytest.raises(TrainingError, match=r"1 steps with a non-finite loss, more than max_nonfinite=0; stopped at "
                                            r"step 2"):
        _run_teacher(_teacher_cfg(parquet_file, tmp_path / "b", "on_nonfinite=skip", "max_nonfinite=0"), tmp_path / "b")
