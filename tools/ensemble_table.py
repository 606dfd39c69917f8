"""The ensemble experiment's table (tools/ensemble_experiment.sh): each teacher, the ensemble, and the resnet8
students (KD from the best single teacher, KD and DIST from the ensemble, the CE baseline) by seed, validation and
test top-1, from the runs' summary.json files, with the mean over seeds.

    python tools/ensemble_table.py runs/ensemble --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def models(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["models"]


def seeded(runs: Path, run: str, model: str, seeds: list[str]) -> list[dict]:
    """Model `model`'s summary row of run `run`-sSEED for each seed whose run finished."""
    found = [models(runs / f"{run}-s{s}").get(model) for s in seeds if (runs / f"{run}-s{s}" / "summary.json").exists()]
    return [r for r in found if r]


def print_table(rows: dict[str, list[dict]]) -> None:
    """One markdown row per label: its runs' validation and test top-1, each and their mean."""
    print("| model | runs | val top-1 (each) | val mean | test top-1 (each) | test mean |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rs in rows.items():
        if not rs:
            continue
        val = [r["top1"] for r in rs]
        test = [r["test_top1"] for r in rs if "test_top1" in r]
        tests = f"{', '.join(f'{v:.2f}' for v in test)} | {statistics.mean(test):.2f}" if test else "- | -"
        print(f"| {name} | {len(rs)} | {', '.join(f'{v:.2f}' for v in val)} | {statistics.mean(val):.2f} | {tests} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path)
    p.add_argument("--seeds", nargs="+", default=["0", "1"])
    args = p.parse_args()
    found = models(args.runs / "teachers")  # the teachers, then the ensemble: once
    rows = {name: [found[name]] for name in sorted(found, key=lambda n: (n == "ensemble", n))}
    students = {"CE baseline": ("kd-best", "baseline"), "KD, best single teacher": ("kd-best", "student"),
                "KD, ensemble of 3": ("kd-ensemble", "student"), "DIST, ensemble of 3": ("dist-ensemble", "student")}
    for label, (run, model) in students.items():
        rows[label] = seeded(args.runs, run, model, args.seeds)
    teacher_of_best = next(n for n in models(args.runs / f"kd-best-s{args.seeds[0]}") if n.startswith("teacher-"))
    print_table(rows)
    print(f"\nbest single teacher (by validation top-1): {teacher_of_best}")


if __name__ == "__main__":
    main()
