"""The feature/token experiment's table (tools/feature_token_experiment.sh): the resnet20 teacher, the resnet8
students (CE, KD, hard-label, KD + feature from the cache, KD + feature online) and the distilled ViT (CE, soft and
hard token distillation) by seed, validation and test top-1, from the runs' summary.json files, with the mean.

    python tools/feature_token_table.py runs/feature_token --seeds 0 1
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ensemble_table import models, print_table, seeded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path)
    p.add_argument("--seeds", nargs="+", default=["0", "1"])
    args = p.parse_args()
    first = args.runs / f"kd-s{args.seeds[0]}"
    rows = {"teacher resnet20": [models(first)["teacher"]] if (first / "summary.json").exists() else []}
    runs = {"resnet8, CE": ("kd", "baseline"), "resnet8, KD": ("kd", "student"), "resnet8, hard": ("hard", "student"),
            "resnet8, KD + feature (cached)": ("kd-feature", "student"),
            "resnet8, KD + feature (online)": ("kd-feature-online", "student"),
            "ViT, CE": ("vit-soft", "baseline"), "ViT, soft token": ("vit-soft", "student"),
            "ViT, hard token": ("vit-hard", "student")}
    for label, (run, model) in runs.items():
        rows[label] = seeded(args.runs, run, model, args.seeds)
    print_table(rows)


if __name__ == "__main__":
    main()
