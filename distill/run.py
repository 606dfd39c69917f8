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
import os  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from distill import cli, config, sweep  # noqa: E402
from distill.errors import Stopped, UserError  # noqa: E402
from distill.registry import STAGES  # noqa: E402

if TYPE_CHECKING:
    from distill.store.records import Summary

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
log = logging.getLogger("distill")


def execute(cfg: config.Config, run_dir: Path | None = None) -> Summary | None:
    """Run the chosen stages into run_dir (default <run_root>/<name>); return the run's summary."""
    # imported here, not at the top: --help and config errors answer before torch loads
    from distill import data, preflight
    from distill.store import artifacts
    from distill.training import engine

    preflight.before_data(cfg)
    run_dir = run_dir or Path(cfg.run_root) / cfg.name
    preflight.check_folders(cfg, run_dir)  # every folder it writes into, before any is made
    acc = engine.make_accelerator(cfg.precision, log_with=cfg.log_with, project_dir=str(run_dir))
    logging.basicConfig(level=logging.INFO if acc.is_main_process else logging.WARNING,
                        format="%(message)s", force=True)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-save INFO lines drown our progress
    if cfg.precision not in ("auto", acc.mixed_precision):
        log.warning(f"precision={cfg.precision}: not available here (no GPU); this run trains with "
                    f"precision={acc.mixed_precision}, and its outputs are fingerprinted so")
    for line in config.inert(cfg):
        log.warning(line)
    launch = preflight.fewer_processes(acc.num_processes, dict(os.environ))
    if launch and acc.is_main_process:
        log.warning(launch)
    cfg = dataclasses.replace(cfg, precision=acc.mixed_precision)  # what runs: auto, or fp16 on a CPU, is "no"
    preflight.check_shared(acc, cfg, run_dir)  # several machines: one run folder (and cache root) all of them see
    bundle = data.load(cfg.data)
    log.info(f"data: {len(bundle.train)} train / {len(bundle.val)} validation images, {bundle.num_classes} "
             f"classes ({bundle.identity.source})")
    preflight.after_data(cfg, len(bundle.train), bundle.num_classes)
    for line in preflight.unused(cfg, len(bundle.train)):
        log.warning(line)
    preflight.check_batches(cfg, len(bundle.train), acc.num_processes)
    with artifacts.held(acc, run_dir, "wait for it to finish, or give this run another name="):  # one run a folder
        return _stages(cfg, acc, bundle, run_dir)


def _stages(cfg: config.Config, acc, bundle, run_dir: Path) -> Summary | None:
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
    # stage=X: X and the stages before it, in pipeline order (registry.STAGES); every run ends with its report
    outputs = {name: STAGES.lookup(name)(ctx) for name in cfg.stages()}
    acc.end_training()
    return outputs["report"]


@hydra.main(version_base="1.3", config_path=str(RECIPES), config_name="config")
def _hydra_main(raw: DictConfig) -> float | None:
    """Returns the KD student's top-1 (what a Hydra sweeper such as Optuna maximises), when it was trained. Under -m
    each point runs through sweep.SWEEP.point: a point that fails is recorded and the sweep goes on."""
    try:
        point = sweep.point_of()
        if point is None:
            return _run(raw)
        on_error = str(OmegaConf.select(raw, "sweep_on_error", default="continue"))
        return sweep.SWEEP.point(*point, lambda: _run(raw), on_error=on_error, raw=raw)
    except UserError as e:  # one line, no traceback; a preempted run (Stopped) says so and how to resume
        print(e if isinstance(e, Stopped) else f"error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except OSError as e:  # a folder that cannot be written (permissions, read-only disk, full disk): one line
        line = cli.file_problem(e, raw)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


def _run(raw: DictConfig) -> float | None:
    """Validate, run the stages, and return the current KD student's top-1 (None when it was not trained)."""
    cfg = config.validate(raw)
    summary = execute(*sweep.point_config_and_dir(cfg))
    student = summary.models.get("student") if summary else None
    return student.top1 if student else None


def main() -> None:
    groups = {p.name for p in RECIPES.iterdir() if p.is_dir()}
    sys.argv[1:] = args = cli.replace_dicts(sys.argv[1:])  # Hydra reads sys.argv
    config.register_schema(None if cli.prints(args) else args)  # --help, --cfg: every method's section, defaults too
    try:
        cli.check_syntax(args)
        cli.check_recipe(args, RECIPES / "recipe")
        cli.check_overrides(args, groups)
        sweep.SWEEP.total, sweep.SWEEP.swept = sweep.check(args, RECIPES), sweep.swept_keys(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()
    if sweep.SWEEP.failed:  # the points that failed said why as they ended; the sweep's last line counts them
        print(sweep.SWEEP.summary(), file=sys.stderr)
        sys.exit(sweep.SWEEP.exit_code())


if __name__ == "__main__":
    main()
