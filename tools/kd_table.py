"""Average the KD result over seeds: cached KD vs CE baseline vs online KD, from the runs' summary.json files.

    python tools/kd_table.py --cached runs/A-s0 runs/A-s1 --online runs/A-online-s0 runs/A-online-s1
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def top1(run: Path, model: str) -> float:
    return json.loads((run / "summary.json").read_text())["models"][model]["top1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cached", nargs="+", type=Path, required=True, help="runs with kd.teacher=cached and a baseline")
    p.add_argument("--online", nargs="*", type=Path, default=[], help="runs with kd.teacher=online, same seeds")
    args = p.parse_args()
    rows = {"teacher": [top1(r, "teacher") for r in args.cached],
            "CE baseline": [top1(r, "baseline") for r in args.cached],
            "cached KD": [top1(r, "student") for r in args.cached]}
    if args.online:
        rows["online KD"] = [top1(r, "student") for r in args.online]
    print(f"{'model':12} " + " ".join(f"{'seed ' + str(i):>8}" for i in range(len(args.cached))) + f" {'mean':>8}")
    for name, values in rows.items():
        print(f"{name:12} " + " ".join(f"{v:7.2f}%" for v in values) + f" {statistics.mean(values):7.2f}%")
    gain = statistics.mean(rows["cached KD"]) - statistics.mean(rows["CE baseline"])
    print(f"cached KD - CE baseline: {gain:+.2f} points")
    if args.online:
        gap = statistics.mean(rows["online KD"]) - statistics.mean(rows["cached KD"])
        print(f"online KD - cached KD:   {gap:+.2f} points")


if __name__ == "__main__":
    main()
