"""The points of a Hydra multirun sweep as one table, sorted by the KD student's top-1.

    python distill/run.py -m kd.temperature=1,2,4,8 kd.alpha=0.5,0.9     # writes runs/demo/sweep/<n>/
    python tools/sweep_table.py runs/demo/sweep

Columns: the point's folder, the settings that differ between points, then student and baseline top-1.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf


def flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out |= flat(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: tree}


def points(sweep: Path) -> list[dict]:
    rows = []
    for folder in sorted(p for p in sweep.iterdir() if (p / "summary.json").exists()):
        settings = flat(OmegaConf.to_container(OmegaConf.load(folder / "config.yaml")))
        models = json.loads((folder / "summary.json").read_text())["models"]
        rows.append({"point": folder.name, "settings": settings, "student": models.get("student", {}).get("top1"),
                     "baseline": models.get("baseline", {}).get("top1")})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path, help="the sweep folder, <run_root>/<name>/sweep")
    rows = points(p.parse_args().sweep)
    if not rows:
        raise SystemExit("no finished points (folders with summary.json) in that folder")
    keys = sorted(k for k in rows[0]["settings"] if len({json.dumps(r["settings"].get(k)) for r in rows}) > 1)
    rows.sort(key=lambda r: -1 if r["student"] is None else r["student"], reverse=True)
    head = ["point", *keys, "student top-1", "baseline top-1"]
    table = [[r["point"], *(str(r["settings"].get(k)) for k in keys),
              *("-" if r[m] is None else f"{r[m]:.2f}%" for m in ("student", "baseline"))] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
