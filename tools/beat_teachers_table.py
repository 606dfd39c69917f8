"""The beat-the-teachers experiment's table (tools/beat_teachers_experiment.sh): the three teachers and their
ensemble, then one row per student setting in the order the script ran them (RUNS/rows.tsv: name, settings), each
with its seeds' validation and test top-1, mean and spread (max - min), the best single teacher's test top-1
beside it, the student's mean minus that, and the student's mean training wall time. Read from the runs'
summary.json files; a seed whose run has not finished is left out (the seeds column counts those found).

    python tools/beat_teachers_table.py runs/beat_teachers --seeds 0 1 2          # the markdown table
    python tools/beat_teachers_table.py runs/beat_teachers --seeds 0 1 2 --best   # the best row by validation mean:
                                                                                  # NAME<TAB>SETTINGS
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ensemble_table import models


def rows(runs: Path) -> list[tuple[str, str]]:
    """The script's rows in the order it ran them: (name, settings)."""
    lines = (runs / "rows.tsv").read_text().splitlines() if (runs / "rows.tsv").exists() else []
    return [tuple(line.split("\t", 1)) for line in lines if line]


def students(runs: Path, name: str, seeds: list[str]) -> list[dict]:
    """The student's summary row of run NAME-sSEED for each seed whose run finished."""
    done = [runs / f"{name}-s{s}" for s in seeds if (runs / f"{name}-s{s}" / "summary.json").exists()]
    return [models(run)["student"] for run in done]


def spread(values: list[float]) -> str:
    """'mean ± half the range' over the seeds, or the one value."""
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {(max(values) - min(values)) / 2:.2f}"


def best_row(runs: Path, seeds: list[str]) -> tuple[str, str]:
    """The row with the highest mean validation top-1 among those with every seed finished."""
    scored = [(statistics.mean(r["top1"] for r in found), name, settings) for name, settings in rows(runs)
              if len(found := students(runs, name, seeds)) == len(seeds)]
    if not scored:
        raise SystemExit(f"error: {runs}: no row has all of seeds {' '.join(seeds)} finished")
    _, name, settings = max(scored)
    return name, settings


def print_table(runs: Path, seeds: list[str]) -> None:
    teachers = models(runs / "teachers")
    best_teacher = max((r["test_top1"], n) for n, r in teachers.items() if n.startswith("teacher-"))
    print("| model | settings | seeds | val top-1 (each) | val mean ± | test top-1 (each) | test mean ± "
          f"| best teacher (test) | test mean - best teacher | student wall (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in sorted(teachers, key=lambda n: (n == "ensemble", n)):
        r = teachers[name]
        label = f"their ensemble ({r['rule']})" if name == "ensemble" else f"{name} ({r['model']})"
        print(f"| {label} | | | {r['top1']:.2f} | | {r['test_top1']:.2f} | | | | |")
    for name, settings in rows(runs):
        found = students(runs, name, seeds)
        if not found:
            continue
        val, test = [r["top1"] for r in found], [r["test_top1"] for r in found]
        wall = statistics.mean(r["wall_s"] for r in found)
        print(f"| {name} | `{settings}` | {len(found)} | {', '.join(f'{v:.2f}' for v in val)} | {spread(val)} "
              f"| {', '.join(f'{v:.2f}' for v in test)} | {spread(test)} | {best_teacher[0]:.2f} "
              f"| {statistics.mean(test) - best_teacher[0]:+.2f} | {wall:.0f} |")
    print(f"\nbest single teacher on the test split: {best_teacher[1]} ({best_teacher[0]:.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path)
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    p.add_argument("--best", action="store_true", help="print the best row by validation mean: NAME<TAB>SETTINGS")
    args = p.parse_args()
    if args.best:
        print("\t".join(best_row(args.runs, args.seeds)))
    else:
        print_table(args.runs, args.seeds)


if __name__ == "__main__":
    main()
