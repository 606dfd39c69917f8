"""A sweep whose point fails records it and goes on; command lines and folders that Hydra or the disk would answer
with a traceback are one line."""
import errno
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, random_teacher, run_cli, tiny_overrides


def _sweep(data: Path, tmp_path: Path, *more: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """`-m` over data.path: point 1's file does not exist (found only when the point loads its data, after every
    point validated), point 2 is the tiny data; each point loads a teacher file (no training) and stops there."""
    missing = tmp_path / "missing.parquet"
    args = [a for a in tiny_overrides(data, tmp_path / "runs") if not a.startswith("data.path=")]
    r = run_cli("-m", *args, f"data.path={missing},{data}", "teacher.source=timm", "stage=teacher",
                f"teacher.checkpoint={random_teacher(tmp_path / 'teacher.safetensors')}",
                f"cache.root={tmp_path / 'cache'}", *more, cwd=tmp_path)
    (sweep,) = (tmp_path / "runs" / "tiny" / "sweep").iterdir()
    return r, sweep, missing


def test_a_failed_sweep_point_is_recorded_and_the_sweep_goes_on(tmp_path, parquet_file):
    r, sweep, missing = _sweep(parquet_file, tmp_path)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 2, r.stderr
    assert errors[0].startswith(f"error: sweep point 1 of 2 failed (data.path={missing}): data.path: ")
    assert errors[0].endswith(f"; recorded in {sweep / '0' / 'failed.json'}")
    assert r.stderr.strip().splitlines()[-1] == errors[1] == (
        f"error: 1 of 2 sweep points failed: see {sweep / '0' / 'failed.json'}; python tools/sweep_table.py {sweep} "
        "lists every point")
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert failed["error"] == "DataError" and failed["settings"] == {"data.path": str(missing)}
    assert f"data.path={missing}" in failed["overrides"] and "stage=teacher" in failed["overrides"]
    assert errors[0] == f"error: sweep point 1 of 2 failed (data.path={missing}): {failed['reason']}; recorded in " \
                        f"{sweep / '0' / 'failed.json'}"
    assert (sweep / "1" / "summary.json").exists() and not (sweep / "1" / "failed.json").exists()  # it ran
    table = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep_table.py"), str(sweep)], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert table[0].split() == ["point", "data.path", "student", "top-1", "baseline", "top-1", "failed"]
    assert table[1].split() == ["1", str(parquet_file), "-", "-"]
    assert table[2].split()[:4] == ["0", str(missing), "-", "-"] and table[2].endswith(failed["reason"])


def test_sweep_on_error_stop_ends_the_sweep_at_its_first_failed_point(tmp_path, parquet_file):
    r, sweep, missing = _sweep(parquet_file, tmp_path, "sweep_on_error=stop")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and errors[0] == r.stderr.strip().splitlines()[-1], r.stderr
    assert errors[0].startswith(f"error: sweep point 1 of 2 failed (data.path={missing}): data.path: ")
    assert errors[0].endswith(f"; recorded in {sweep / '0' / 'failed.json'}; the sweep stops here "
                              "(sweep_on_error=stop), 1 of 2 points not run")
    assert (sweep / "0" / "failed.json").exists() and not (sweep / "1").exists()


def test_an_unexpected_error_in_a_point_is_recorded_with_its_traceback_in_the_folder(tmp_path, capsys):
    from distill.sweep import Sweep

    sweep = Sweep(total=3, swept=("kd.temperature",))
    folder = tmp_path / "sweep-x" / "1"

    def bug():
        raise RuntimeError("boom\nsecond line")

    assert sweep.point(folder, ["kd.temperature=4", "student.epochs=1"], bug) is None
    assert capsys.readouterr().err.splitlines() == [
        f"error: sweep point 1 of 3 failed (kd.temperature=4): RuntimeError: boom; recorded in {folder / 'failed.json'}"
        f", its traceback (an unexpected error) in {folder / 'traceback.txt'}"]
    assert json.loads((folder / "failed.json").read_text()) == {
        "reason": "RuntimeError: boom", "error": "RuntimeError", "overrides": ["kd.temperature=4", "student.epochs=1"],
        "settings": {"kd.temperature": "4"}, "traceback": "traceback.txt"}
    tb = (folder / "traceback.txt").read_text()
    assert tb.startswith("Traceback") and "in bug" in tb and tb.rstrip().endswith("RuntimeError: boom\nsecond line")
    # a point that cannot write its folder: the machine's state, not a bug (no traceback file), and the sweep's code 2
    def denied_folder():
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))

    denied = Sweep(total=2)
    other = tmp_path / "sweep-x" / "2"
    assert denied.point(other, [], denied_folder) is None
    assert json.loads((other / "failed.json").read_text())["error"] == "PermissionError"
    assert not (other / "traceback.txt").exists() and denied.exit_code() == 2 and sweep.exit_code() == 1
    capsys.readouterr()
    # the same point run again (the same sweep, later) and finishing: its failure record goes
    again = Sweep(total=3, swept=("kd.temperature",))
    assert again.point(folder, ["kd.temperature=4", "student.epochs=1"], lambda: 71.5) == 71.5
    assert not (folder / "failed.json").exists() and not (folder / "traceback.txt").exists()
    assert again.summary() is None and again.exit_code() == 0
    assert sweep.summary() == (f"error: 1 of 3 sweep points failed: see {folder / 'failed.json'}; python "
                               f"tools/sweep_table.py {folder.parent} lists every point")


def test_sweep_points_are_numbered_from_one_in_messages(tmp_path):
    from distill import config, run, sweep
    from distill.errors import ConfigError

    config.register_schema()
    with pytest.raises(ConfigError) as e:
        sweep.check(["-m", "kd.temperature=2,4,-1", "student.epochs=1"], run.RECIPES)
    assert str(e.value) == ("kd.temperature: -1.0 must be > 0 (sweep point 3 of 3: kd.temperature=-1 "
                            "student.epochs=1; nothing was run)")
    args = ["--multirun", "kd.temperature=2,4", "kd.alpha=0.5,0.9", f"run_root={tmp_path}"]
    assert sweep.check(args, run.RECIPES) == 4


def test_an_unquoted_path_with_a_space_is_one_line_saying_to_quote_it(tmp_path):
    r = run_cli("data.path=/tmp/my", "data/x.parquet", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: data.path: its value has a space, and the shell split it (data/x.parquet came apart from it); quote "
        "the whole value: 'data.path=\"/tmp/my data/x.parquet\"'"], r.stderr


@pytest.mark.parametrize("value", ["/tmp/it's/x.parquet", "/tmp/a#b/x.parquet", "/tmp/été/x.parquet",
                                   "/tmp/my (1)/x.parquet"])
def test_a_value_hydra_reads_only_quoted_is_one_line_with_the_quoted_form(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from distill import cli
    from distill.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        cli.check_syntax([f"data.path={value}"])
    head, _, typed = str(e.value).partition("; quote it: ")
    assert head == f"data.path: Hydra reads the value {value} only in quotes"
    (arg,) = shlex.split(typed)  # what the shell hands Hydra when the suggestion is typed
    assert OverridesParser.create().parse_override(arg).value() == value


def _unwritable(tmp_path: Path) -> tuple[str, Path]:
    """A run_root this user cannot create, and the folder whose creation fails: a read-only folder for a user, sysfs
    (where even root makes no folder) for root."""
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        return str(tmp_path / "ro" / "runs"), tmp_path / "ro" / "runs"
    top = Path(f"/sys/distill-test-{os.getpid()}")
    try:
        top.mkdir()
    except OSError:
        return str(top / "runs"), top
    top.rmdir()
    pytest.skip("this machine lets root make folders in /sys")


def test_a_run_folder_that_cannot_be_written_is_one_line(tmp_path, parquet_file):
    run_root, failing = _unwritable(tmp_path)
    try:
        failing.mkdir()
    except OSError as e:
        probe = e
    args = [a for a in tiny_overrides(parquet_file, tmp_path, epochs=1) if not a.startswith("run_root=")]
    r = run_cli(*args, f"run_root={run_root}", cwd=tmp_path)
    what, fix = {errno.EROFS: ("on a read-only file system", "give run_root= a place on a writable disk")}.get(
        probe.errno, ("permission denied", "make it writable for this user, or give run_root= another place"))
    line = (f"error: {failing}: {what} ({probe.strerror}); {fix}, and run again (nothing was damaged: finished "
            "stages are kept and reused)")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1] == line, r.stderr
    # a sweep: the same line, before its first point (Hydra would make the sweep's folder, and answer a traceback)
    r = run_cli("-m", "kd.temperature=2,4", f"run_root={run_root}", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [line], r.stderr


def test_a_sweep_point_whose_model_cannot_take_the_images_is_refused_before_any_point_runs():
    from distill import config, run, sweep
    from distill.errors import ConfigError

    config.register_schema()
    with pytest.raises(ConfigError) as e:
        sweep.check(["-m", "student.model=resnet8,resnet20,deit_tiny_distilled_patch16_224", "data.image_size=32"],
                    run.RECIPES)
    assert str(e.value).startswith("student.model: deit_tiny_distilled_patch16_224 cannot take 32 px images (")
    assert str(e.value).endswith("set student.model_args.img_size=32 or data.image_size=224 (sweep point 3 of 3: "
                                 "student.model=deit_tiny_distilled_patch16_224 data.image_size=32; nothing was run)")


def test_hydra_sweep_dir_is_where_the_points_go(tmp_path, parquet_file):
    """hydra.sweep.dir=DIR: each point in DIR/<job number> (it was ignored: the points went to
    <run_root>/<name>/sweep/...), the teacher the points share in the run's folder, and the sweep's table there."""
    elsewhere = tmp_path / "elsewhere"
    r = run_cli("-m", *tiny_overrides(parquet_file, tmp_path / "runs"), "teacher.source=timm", "stage=teacher",
                f"teacher.checkpoint={random_teacher(tmp_path / 'teacher.safetensors')}", "kd.temperature=2,4",
                f"hydra.sweep.dir={elsewhere}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in elsewhere.iterdir() if p.is_dir()) == ["0", "1"]
    assert all((elsewhere / p / "summary.json").exists() for p in ("0", "1"))
    run = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in run.iterdir()) == ["teacher"]  # no sweep folder of its own
    table = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep_table.py"), str(elsewhere)],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[0].split()[:2] == ["point", "kd.temperature"] and len(table) == 3


def test_sweep_table_on_a_folder_that_does_not_exist_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep_table.py"), str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert (r.returncode, r.stderr.strip()) == (2, f"error: {tmp_path / 'nope'}: no such folder; give a sweep's "
                                                   "folder (the sweep's last line names it) or <run_root>/<name>/sweep")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep_table.py"), str(tmp_path)],
                       capture_output=True, text=True)
    assert (r.returncode, r.stderr.strip()) == (2, f"error: {tmp_path}: no sweep points (folders with summary.json "
                                                   "or failed.json) in it")


def test_the_points_of_a_sweep_share_the_teacher_and_the_validated_config_is_left_as_it_was():
    """sweep.sharing_teachers gives a new config whose teachers without a folder of their own train in the folder
    every point shares; the validated config itself is unchanged."""
    import copy

    from distill import config, sweep
    cfg = config.validate({"run_root": "/r", "name": "n", "teachers": [{"name": "a"}, {"name": "b", "dir": "/own"}]})
    validated = copy.deepcopy(cfg)
    shared = sweep.sharing_teachers(cfg)
    assert cfg == validated
    assert shared.teacher.dir == "/r/n/teacher"
    assert shared.teachers == [{"name": "a", "dir": "/r/n/teachers/a"}, {"name": "b", "dir": "/own"}]
    assert sweep.sharing_teachers(config.validate({"teacher": {"dir": "/t"}})).teacher.dir == "/t"
