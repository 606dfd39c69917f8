"""The end-of-run report: a table on the terminal, summary.json and curves.png, from the stages' files."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from distill import files, freshness
from distill.registry import STAGES
from distill.store import layout
from distill.store.records import EnsembleScore, HeldOutScore, Meta, Metrics, Row, Stale, Summary

log = logging.getLogger("distill")


def _metrics(folder: Path) -> list[Metrics]:
    """Each epoch's line of the folder's metrics.jsonl, in order."""
    path = folder / "metrics.jsonl"
    return [Metrics.from_json(json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []


def _row(meta: Meta, test: HeldOutScore | None) -> Row:
    """A trained model's row, from its meta.json and its test score."""
    m = meta.metrics
    return Row(meta.model, m.top1, m.top5, meta.params, m.images_per_s, meta.wall_s, m.val_count, m.epochs,
               m.skipped_images, test=test)


def _ensemble_row(ensemble: EnsembleScore) -> Row:
    """The ensemble's row, from ensemble.score."""
    return Row(ensemble.model, ensemble.top1, ensemble.top5, ensemble.params, val_count=ensemble.val_count,
               rule=ensemble.rule, test=ensemble.test)


def summary(run_dir: Path, found: freshness.Survey, tests: dict[str, HeldOutScore] | None = None,
            ensemble: EnsembleScore | None = None) -> Summary:
    """The run's numbers from the outputs the current settings make (`found`, freshness.survey): a row per current
    model, each teacher's cache by teacher name (`caches`), the KD gain between a current student and baseline;
    every other output found is listed under `stale` with its folder and why, and none of its numbers. `tests`:
    each model's score on the held-out test split (heldout.score), when there is one; `ensemble`: the combined
    teachers' own scores (ensemble.score), a row of its own."""
    rows = {name: _row(o.record, (tests or {}).get(name)) for name, o in found.current_models().items()}
    if ensemble:  # after its teachers
        teachers = {name: r for name, r in rows.items() if name.startswith("teacher")}
        rows = teachers | {"ensemble": _ensemble_row(ensemble)} | {n: r for n, r in rows.items() if n not in teachers}
    caches = {teacher: o.record for teacher, o in found.current_caches().items()}  # in the teachers' order
    stale = {name: Stale(str(o.folder), o.stale) for name, o in found.stale().items()}
    return Summary(str(run_dir), rows, caches, stale)


def table(s: Summary) -> str:
    """The summary as the terminal shows it: a line per model, each cache, what was left out, the stale outputs,
    the KD gain and a warning when the student learns from a model below the baseline."""
    test = any(r.test for r in s.models.values())
    width = max([10, *map(len, s.models)])
    arch = max([12, *(len(r.model) for r in s.models.values())])  # deit_tiny_distilled_patch16_224 fits too
    head = (f"{'':{width}} {'model':{arch}} {'val top-1':>9} {'top-5':>7}" + (f" {'test top-1':>10}" if test else "")
            + f" {'params':>9} {'train img/s':>11} {'wall':>8}")
    lines = [head, "-" * len(head)]
    for name, r in s.models.items():
        ips = f"{r.train_images_per_s:.0f}" if r.train_images_per_s else "-"
        wall = f"{r.wall_s:.0f} s" if r.wall_s is not None else "-"
        t = (f" {r.test.top1:9.2f}%" if r.test else f" {'-':>10}") if test else ""
        lines.append(f"{name:{width}} {r.model:{arch}} {r.top1:8.2f}% {r.top5:6.2f}%{t} "
                     f"{r.params / 1e6:8.3f}M {ips:>11} {wall:>8}")
    for teacher, c in s.caches.items():
        lines.append(f"{layout.named('cache', teacher):{width}} {'reused' if c.reused else 'computed':{arch}} "
                     + (f"{c.images_per_s:.0f} img/s, {c.wall_s:.0f} s" if c.timed else "") + f"  {c.folder}"
                     + (f", from {c.published.line}" if c.published else ""))
    return "\n".join(lines + _notes(s, width))


def _notes(s: Summary, width: int) -> list[str]:
    """The table's lines after the models and caches: images left out, stale outputs, the KD gain, the warning."""
    lines = []
    c = next(iter(s.caches.values()), None)
    left_out = {name: r.skipped_images for name, r in s.models.items() if r.skipped_images}
    if c and c.skipped_images:
        left_out["cache"] = c.skipped_images
    if left_out:
        lines.append("left out, failing to decode (data.on_bad_image=skip): "
                     + ", ".join(f"{name} {n} images" for name, n in left_out.items()) + " (training: last epoch)")
    for name, stale in s.stale.items():  # never a number of an output the current settings do not make
        lines.append(f"{name:{width}} stale: {stale.why} ({stale.folder})")
    if s.kd_gain_top1 is not None:
        lines.append(f"KD gain over the CE baseline: {s.kd_gain_top1:+.2f} points top-1"
                     + (f" (test: {s.kd_gain_test_top1:+.2f})" if s.kd_gain_test_top1 is not None else ""))
    if s.teacher_below_baseline:
        which = s.distilled
        t, b = s.models[which].top1, s.models["baseline"].top1
        lines.append(f"warning: the {which} ({t:.2f}%) scores below the CE baseline ({b:.2f}%): the student distils "
                     "a weaker model; train the teacher longer or pick a stronger one")
    return lines


def curves(folders: dict[str, Path], path: Path) -> dict[str, list[str]]:
    """loss, validation top-1 and lr per epoch, one line per trained model (`folders`: the current ones by name),
    and the student's loss terms; returns each panel's title with the labels of the lines drawn in it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for name, folder in folders.items():
        rows = _metrics(folder)
        if not rows:
            continue
        epochs = [m.epochs for m in rows]
        for ax, values in zip(axes, ([m.loss for m in rows], [m.top1 for m in rows], [m.training.lr for m in rows])):
            ax.plot(epochs, values, marker="o", markersize=3, label=name)
        if name == "student":
            for term in sorted(rows[-1].training.terms):
                if term != "loss":
                    values = [m.training.terms.get(term, float("nan")) for m in rows]  # nan: an epoch before the term
                    axes[3].plot(epochs, values, marker="o", markersize=3, label=term)
    titles = ("training loss", "validation top-1 (%)", "learning rate (end of epoch)", "student loss terms")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    drawn = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in axes}
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return drawn


def write(run_dir: Path, found: freshness.Survey, tests: dict[str, HeldOutScore] | None = None,
          ensemble: EnsembleScore | None = None) -> Summary:
    """summary.json and curves.png in run_dir, and the table on the terminal; returns the summary."""
    result = summary(run_dir, found, tests, ensemble)
    files.write_json(run_dir / "summary.json", result.to_json())
    curves({name: o.folder for name, o in found.current_models().items()}, run_dir / "curves.png")
    log.info("\n" + table(result) + f"\n(summary.json and curves.png in {run_dir})")
    return result


def print_fields(result: dict) -> None:
    """A benchmark's result: one aligned `key  value` line each, then the same as one JSON line."""
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key.ljust(width)}  {value}")
    print(json.dumps(result))


@STAGES.register("report", help="score the current models (the test split too) and write the table, summary.json "
                                 "and curves.png")
def run(ctx) -> Summary | None:
    """The report stage (registry.STAGES): the outputs the current settings make (freshness.survey), each current model
    scored once on the test split when there is one (heldout.py), the ensemble scored when its teachers are current,
    then the table, summary.json and curves.png; returns the summary (main process)."""
    from distill import ensemble, heldout

    found = freshness.survey(ctx)
    folders = {name: o.folder for name, o in found.current_models().items()}
    tests = heldout.score(ctx, folders) if ctx.data.test is not None else None
    combined = ensemble.score(ctx) if found.teachers_current else None
    summary = write(ctx.run_dir, found, tests, combined) if ctx.acc.is_main_process else None
    ctx.acc.wait_for_everyone()
    return summary
