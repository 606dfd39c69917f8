"""Hydra multirun (-m) sweeps: every point validated before the first one runs, each point's folder and the teacher
the points share, and a point that fails recorded in its folder while the sweep goes on (sweep_on_error)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from distill import config, files
from distill.cli import file_problem, hydra_args
from distill.errors import ConfigError, Stopped, UserError
from distill.store.records import Failure


def _folder() -> Path | None:
    """Under Hydra multirun (-m), the point's folder: Hydra's hydra.sweep.dir/hydra.sweep.subdir, by default
    <run_root>/<name>/sweep/<sweep>/<job number> (<sweep>: a hash of the sweep's overrides, config.sweep_id;
    recipes/config.yaml), DIR/<job number> with hydra.sweep.dir=DIR. None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    try:
        return Path(str(hc.sweep.dir)) / str(hc.sweep.subdir)
    except Exception:  # a sweep folder whose run_root or name does not resolve: Hydra's folder for the point
        return Path(hc.runtime.output_dir)


def point_config_and_dir(cfg: config.Config) -> tuple[config.Config, Path | None]:
    """This run's config and folder. Under Hydra multirun (-m) each point runs in its own folder (_folder) and, unless
    the sweep changes the teacher (_sweeps_a_teacher), with the teachers the points share (`sharing_teachers`); the
    cache is shared by fingerprint. Outside a multirun: (cfg, None). `cfg` itself is never changed."""
    folder = _folder()
    if folder is None or _sweeps_a_teacher(sys.argv[1:]):  # a sweep over teacher settings trains one per point
        return cfg, folder
    return sharing_teachers(cfg), folder


def sharing_teachers(cfg: config.Config) -> config.Config:
    """A copy of `cfg` whose teachers without a folder of their own (teacher.dir, a `teachers` entry's dir) are
    given <run_root>/<name>/teacher (or teachers/NAME), the folder every point of a sweep shares (inert for an
    ensemble's `teacher`); `cfg` is left as validated."""
    from distill.store import layout

    shared = Path(cfg.run_root) / cfg.name
    teacher = cfg.teacher
    if teacher.dir is None:
        teacher = dataclasses.replace(teacher, dir=str(layout.default_teacher_dir(shared, layout.ONE_TEACHER)))
    teachers = [entry if "dir" in entry else {**entry, "dir": str(layout.default_teacher_dir(shared, entry["name"]))}
                for entry in cfg.teachers]
    return dataclasses.replace(cfg, teacher=teacher, teachers=teachers)


def _sweeps_a_teacher(args: list[str]) -> bool:
    """Whether a -m sweep gives a setting that changes the teacher more than one value (a shared teacher.dir holds
    one teacher: each point then trains its own)."""
    from distill.store import fingerprints

    changes_teacher = {key for key, outputs in fingerprints.tags().items() if outputs and "teacher" in outputs}
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        swept = "," in value and not value.lstrip().startswith(("[", "{")) or value.startswith(("range(", "choice("))
        if swept and (key in changes_teacher or key.startswith(("teacher.", "teachers", "data."))):
            return True
    return False


def point_of() -> tuple[Path, list[str]] | None:
    """Under -m: the point's folder (_folder) and its overrides; else None."""
    from hydra.core.hydra_config import HydraConfig

    folder = _folder()
    return None if folder is None else (folder, list(HydraConfig.get().overrides.task))


class Sweep:
    """A -m sweep's points as they run in this process: how many there are (when check_sweep could count them), the
    keys it sweeps, and which points failed. Each point runs through `point`; `summary` is the sweep's last word."""

    def __init__(self, total: int | None = None, swept: tuple[str, ...] = ()):
        self.total, self.swept = total, tuple(swept)
        self.ran = 0
        self.failed: list[tuple[Path, bool]] = []  # (point folder, whether it was a bug), in order

    def point(self, folder: Path, overrides: list[str], work, on_error: str = "continue",
              raw: DictConfig | None = None):
        """work()'s answer; or, when it raises, None: the failure is recorded in folder/failed.json (reason: one
        line; error: its type; overrides: the point's; settings: its values of the swept keys; traceback: the file
        holding it, for an unexpected exception, a bug) and said in one line on stderr, and the sweep goes on to the
        next point (on_error=stop: exits here). A point that runs first removes its folder's earlier failure record.
        Stopped (SIGTERM) and what is no Exception end the sweep as they end a run."""
        self.ran += 1
        number = f"sweep point {self.ran}" + (f" of {self.total}" if self.total else "")
        main = int(os.environ.get("RANK", "0")) == 0  # under accelerate every process runs the point; one records
        if main:
            for name in ("failed.json", "traceback.txt"):
                with contextlib.suppress(OSError):
                    (folder / name).unlink(missing_ok=True)
        try:
            return work()
        except Stopped:
            raise
        except Exception as e:
            if isinstance(e, UserError):
                reason, bug = str(e), False
            elif isinstance(e, OSError) and file_problem(e) is not None:
                reason, bug = file_problem(e, raw), False
            else:  # a bug: its type and first line here, its traceback in the folder
                reason, bug = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}".rstrip(": "), True
            settings = {}
            for item in overrides:
                key, _, value = item.lstrip("+~").partition("=")
                if key in self.swept:
                    settings[key] = value
            record = Failure(reason, type(e).__name__, list(overrides), settings)
            where = self._record(folder, record, e if bug else None) if main else \
                f"recorded in {folder / 'failed.json'}"
            self.failed.append((folder, bug))
            shown = " ".join(f"{k}={v}" for k, v in settings.items())
            stop = f"; the sweep stops here (sweep_on_error=stop){self._not_run()}" if on_error == "stop" else ""
            print(f"error: {number} failed{f' ({shown})' if shown else ''}: {reason}; {where}{stop}", file=sys.stderr)
            if on_error == "stop":
                sys.exit(self.exit_code())
            return None

    @staticmethod
    def _record(folder: Path, record: Failure, bug: Exception | None) -> str:
        """Write folder/failed.json (and, for a bug, its traceback in folder/traceback.txt); says where, for the
        point's line. A folder that cannot be written keeps nothing: the line says so (and a bug's traceback is
        printed, not lost)."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
            where = f"recorded in {folder / 'failed.json'}"
            if bug is not None:
                (folder / "traceback.txt").write_text("".join(traceback.format_exception(bug)))
                record = dataclasses.replace(record, traceback="traceback.txt")
                where += f", its traceback (an unexpected error) in {folder / 'traceback.txt'}"
            files.write_json(folder / "failed.json", record.to_json())
            return where
        except OSError as w:
            if bug is not None:
                traceback.print_exception(bug)
            return f"not recorded: {folder}: {w.strerror}"

    def _not_run(self) -> str:
        return f", {self.total - self.ran} of {self.total} points not run" if self.total else ""

    def exit_code(self) -> int:
        """0: no point failed; 2: points failed, each for a reason a person fixes; 1: one of them was a bug."""
        return 0 if not self.failed else 1 if any(bug for _, bug in self.failed) else 2

    def summary(self) -> str | None:
        """The sweep's last line when points failed (None when none did): how many, and where their records are."""
        if not self.failed:
            return None
        folders = [str(folder / "failed.json") for folder, _ in self.failed]
        more = f" and {len(folders) - 3} more" if len(folders) > 3 else ""
        sweep = self.failed[0][0].parent
        return (f"error: {len(self.failed)} of {self.total or self.ran} sweep points failed: see "
                f"{', '.join(folders[:3])}{more}; python tools/sweep_table.py {sweep} lists every point")


SWEEP = Sweep()  # this process's sweep (main fills in what it knows before Hydra starts)


def swept_keys(args: list[str]) -> tuple[str, ...]:
    """The keys a -m command line gives more than one value (as the points' overrides name them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides, multirun = hydra_args(args)
    if not multirun:
        return ()
    parsed = OverridesParser.create().parse_overrides(overrides)
    return tuple(o.input_line.lstrip("+~").partition("=")[0] for o in parsed if o.is_sweep_override())


def check(args: list[str], recipes: Path) -> int | None:
    """Every point of a -m sweep composed and validated before the first one trains (Hydra would meet a bad value
    only at its point); returns how many points there are. Interval sweeps (a sweeper plugin's) are left to each
    point (None), as is a command line without -m."""
    overrides, multirun = hydra_args(args)
    if not multirun:
        return None
    import itertools

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    ours = [a for a in overrides if not a.startswith(("hydra/", "hydra.", "+hydra"))]  # Hydra's own keys: not ours
    for o in OverridesParser.create().parse_overrides(ours):
        if o.is_sweep_override() and not o.is_discrete_sweep():
            return None
        key = o.get_key_element()
        choices.append([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line])
    points = list(itertools.product(*choices))
    models_checked = set()
    with initialize_config_dir(config_dir=str(recipes), version_base="1.3"):
        for i, point in enumerate(points, 1):
            recipe = next((p.split("=", 1)[1] for p in point if p.startswith("recipe=")), "demo")
            named = [] if any(p.startswith("name=") for p in point) else [f"name={recipe}"]
            folders = [a for a in overrides if a.startswith("hydra.sweep.dir=")]  # where the points go
            raw = compose("config", overrides=[*point, *named, *folders], return_hydra_config=True)
            if i == 1:
                sweep_dir = Path(str(OmegaConf.select(raw, "hydra.sweep.dir")))
            with open_dict(raw):
                del raw["hydra"]
            try:
                cfg = config.validate(raw)
                models = _models_of(cfg)
                if models not in models_checked:  # the checks a run makes before any work, once per set of models
                    _check_models(cfg)
                    models_checked.add(models)
            except UserError as e:
                raise type(e)(f"{e} (sweep point {i} of {len(points)}: {' '.join(point)}; nothing was run)") from None
    try:  # Hydra makes it next, and would answer a folder it cannot make with a traceback
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if file_problem(e) is None:
            raise
        raise ConfigError(file_problem(e)) from None
    return len(points)


def _models_of(cfg: config.Config) -> str:
    """What the model checks of a point depend on (points that share it are checked once)."""

    return files.fingerprint([dataclasses.asdict(cfg.student), dataclasses.asdict(cfg.teacher), cfg.teachers,
                              cfg.data.image_size, dataclasses.asdict(cfg.kd), cfg.cache.features, cfg.log_with])


def _check_models(cfg: config.Config) -> None:
    """A point's models checked as its run would check them before any work (preflight): names, trackers, the
    distillation head and pooled features, and each model run once at the data's image size on the meta device
    (the data's class count is known only at its run: two classes here)."""
    from distill import preflight

    preflight.before_data(cfg)
    preflight.check_models(cfg, num_classes=2)
