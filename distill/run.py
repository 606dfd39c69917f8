"""Entry point: compose a recipe with Hydra, validate it once, then run the chosen stages.

    python distill/run.py                                   # the demo recipe, every stage, on CPU
    python distill/run.py recipe=NAME stage=teacher teacher.epochs=3
    accelerate launch distill/run.py recipe=NAME            # several GPUs or machines
    python distill/run.py --help                            # recipes and every setting
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a file: import `distill` as a package, and stop distill/ shadowing others
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import dataclasses  # noqa: E402
import logging  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from distill import config  # noqa: E402
from distill.errors import Stopped, UserError  # noqa: E402

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
log = logging.getLogger("distill")


def stage_functions() -> dict:
    """Stage name -> run(RunContext), in pipeline order (config.STAGES)."""
    from distill import report
    from distill.stages import cache, export, student, teacher
    return {"teacher": teacher.run, "cache": cache.run, "student": student.run, "report": report.stage,
            "export": export.run}


def execute(cfg: config.Config, run_dir: Path | None = None) -> dict | None:
    """Run the chosen stages into run_dir (default <run_root>/<name>); return the run's summary."""
    # imported here, not at the top: --help and config errors answer before torch loads
    from distill import data, preflight
    from distill.store import artifacts
    from distill.training import engine

    preflight.before_data(cfg)
    run_dir = run_dir or Path(cfg.run_root) / cfg.name
    acc = engine.make_accelerator(cfg.precision, log_with=cfg.log_with, project_dir=str(run_dir))
    logging.basicConfig(level=logging.INFO if acc.is_main_process else logging.WARNING,
                        format="%(message)s", force=True)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-save INFO lines drown our progress
    if cfg.precision not in ("auto", acc.mixed_precision):
        log.warning(f"precision={cfg.precision}: not available here (no GPU); this run trains with "
                    f"precision={acc.mixed_precision}, and its outputs are fingerprinted so")
    cfg = dataclasses.replace(cfg, precision=acc.mixed_precision)  # what runs: auto, or fp16 on a CPU, is "no"
    bundle = data.load(cfg.data)
    log.info(f"data: {len(bundle.train)} train / {len(bundle.val)} validation images, {bundle.num_classes} "
             f"classes ({bundle.identity['source']})")
    preflight.after_data(cfg, len(bundle.train), bundle.num_classes)
    with artifacts.held(acc, run_dir, "wait for it to finish, or give this run another name="):  # one run a folder
        return _stages(cfg, acc, bundle, run_dir)


def _stages(cfg: config.Config, acc, bundle, run_dir: Path) -> dict | None:
    """Record the config and the normalization, then run the chosen stages in pipeline order: stage=X runs X and
    the stages before it, and every run ends with its report; a stage whose output is up to date is reused."""
    from distill.store import layout
    from distill.training.context import RunContext

    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.structured(cfg), run_dir / "config.yaml")
        norm = layout.normalization(cfg.data, bundle, run_dir / "data_stats.json")
    acc.wait_for_everyone()
    if not acc.is_main_process:
        norm = layout.normalization(cfg.data, bundle, run_dir / "data_stats.json")  # reads what main recorded
    if cfg.log_with:
        acc.init_trackers(cfg.name)
    ctx = RunContext.make(cfg, acc, bundle, norm, run_dir)
    chosen = config.STAGES if cfg.stage == "all" else config.STAGES[:config.STAGES.index(cfg.stage) + 1]
    if "report" not in chosen:
        chosen += ("report",)  # every run ends with its report
    outputs = {name: fn(ctx) for name, fn in stage_functions().items() if name in chosen}
    acc.end_training()
    return outputs["report"]


def sweep_point(cfg: config.Config) -> Path | None:
    """Under Hydra multirun (-m), each point runs in <run_root>/<name>/sweep/<sweep>/<job number>/ (<sweep>: a hash
    of the sweep's overrides, config.sweep_id) and all points share the teacher in <run_root>/<name>/teacher (unless
    teacher.dir says otherwise); the cache is shared by fingerprint."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    if not _sweeps_a_teacher(sys.argv[1:]):  # a sweep over teacher settings trains a teacher per point
        shared = Path(cfg.run_root) / cfg.name
        if cfg.teacher.dir is None and not cfg.teachers:
            cfg.teacher.dir = str(shared / "teacher")
        for entry in cfg.teachers:
            entry.setdefault("dir", str(shared / "teachers" / entry["name"]))
    return Path(cfg.run_root) / cfg.name / "sweep" / config.sweep_id() / str(hc.job.num)


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


@hydra.main(version_base="1.3", config_path=str(RECIPES), config_name="config")
def _hydra_main(raw: DictConfig) -> float | None:
    """Returns the KD student's top-1 (what a Hydra sweeper such as Optuna maximises), when it was trained."""
    try:
        cfg = config.validate(raw)
        summary = execute(cfg, sweep_point(cfg))
        student = (summary or {}).get("models", {}).get("student")
        return student["top1"] if student else None
    except UserError as e:  # one line, no traceback; a preempted run (Stopped) says so and how to resume
        print(e if isinstance(e, Stopped) else f"error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))


def check_sweep(args: list[str]) -> None:
    """Every point of a -m sweep composed and validated before the first one trains (Hydra would meet a bad value
    only at its point). Interval sweeps (a sweeper plugin's) are left to each point."""
    if not {"-m", "--multirun"} & set(args):
        return
    import itertools

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    ours = [a for a in args if not a.startswith(("-", "hydra/", "hydra.", "+hydra"))]  # Hydra's own keys: not ours
    for o in OverridesParser.create().parse_overrides(ours):
        if o.is_sweep_override() and not o.is_discrete_sweep():
            return
        key = o.get_key_element()
        choices.append([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line])
    points = list(itertools.product(*choices))
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        for i, point in enumerate(points):
            recipe = next((p.split("=", 1)[1] for p in point if p.startswith("recipe=")), "demo")
            named = [] if any(p.startswith("name=") for p in point) else [f"name={recipe}"]
            try:
                config.validate(compose("config", overrides=[*point, *named]))
            except UserError as e:
                raise type(e)(f"{e} (sweep point {i} of {len(points)}: {' '.join(point)}; nothing was run)") from None


def main() -> None:
    config.register_schema()
    groups = {p.name for p in RECIPES.iterdir() if p.is_dir()}
    try:
        config.check_recipe(sys.argv[1:], RECIPES / "recipe")
        config.check_overrides(sys.argv[1:], groups)
        check_sweep(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
