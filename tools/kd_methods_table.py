"""The table of tools/kd_methods_experiment.sh: top-1 of each method per seed, its mean, and its gap to plain KD.

    python tools/kd_methods_table.py runs/kd_methods --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROWS = [("teacher (resnet20)", "kd", "teacher"), ("CE baseline", "kd", "baseline"), ("KD", "kd", "student"),
        ("DKD", "dkd", "student"), ("DIST", "dist", "student"), ("KD + logit standardization", "kd_ls", "student"),
        ("DKD + logit standardization", "dkd_ls", "student"), ("online KD", "online", "student")]


def top1(run: Path, model: str) -> float | None:
    path = run / "summary.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text())["models"].get(model)
    return row["top1"] if row else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, help="the experiment's run root (RUNS)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = p.parse_args()
    table = {label: [top1(args.runs / f"{run}-s{s}", model) for s in args.seeds] for label, run, model in ROWS}
    kd = [v for v in table["KD"] if v is not None]
    kd_mean = statistics.mean(kd) if kd else None
    print("| method | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | mean - KD |")
    print("| --- | " + " | ".join("---" for _ in args.seeds) + " | --- | --- |")
    for label, values in table.items():
        got = [v for v in values if v is not None]
        mean = statistics.mean(got) if got else None
        gap = f"{mean - kd_mean:+.2f}" if mean is not None and kd_mean is not None and label != "teacher (resnet20)" \
            else ""
        cells = [f"{v:.2f}" if v is not None else "-" for v in values]
        print(f"| {label} | " + " | ".join(cells) + f" | {mean:.2f} | {gap} |" if mean is not None else
              f"| {label} | " + " | ".join(cells) + " | - | |")


if __name__ == "__main__":
    main()
