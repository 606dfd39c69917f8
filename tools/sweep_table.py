"""The points of a Hydra multirun sweep as one table, sorted by the KD student's top-1.

    python distill/run.py -m kd.temperature=1,2,4,8 kd.alpha=0.5,0.9     # writes runs/demo/sweep/sweep-<id>/<n>/
    python tools/sweep_table.py runs/demo/sweep                          # a table for each sweep in there

Columns: the point's folder, the settings that differ between points, then student and baseline top-1. Each sweep
(one -m command) is its own table: points of two sweeps are never ranked side by side.
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


def table(rows: list[dict]) -> list[str]:
    keys = sorted(k for k in rows[0]["settings"] if len({json.dumps(r["settings"].get(k)) for r in rows}) > 1)
    rows = sorted(rows, key=lambda r: -1 if r["student"] is None else r["student"], reverse=True)
    head = ["point", *keys, "student top-1", "baseline top-1"]
    cells = [[r["point"], *(str(r["settings"].get(k)) for k in keys),
              *("-" if r[m] is None else f"{r[m]:.2f}%" for m in ("student", "baseline"))] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(head)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [head, *cells]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path, help="a sweep's folder, or <run_root>/<name>/sweep holding several")
    folder = p.parse_args().sweep
    sweeps = [folder] if points(folder) else sorted(d for d in folder.iterdir() if d.is_dir() and points(d))
    if not sweeps:
        raise SystemExit("no finished points (folders with summary.json) in that folder")
    for i, sweep in enumerate(sweeps):
        if len(sweeps) > 1:
            print(("\n" if i else "") + f"{sweep.name}:")
        print("\n".join(table(points(sweep))))


if __name__ == "__main__":
    main()
