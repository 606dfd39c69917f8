"""The points of a Hydra multirun sweep as one table, sorted by the KD student's top-1.

    python distill/run.py -m kd.temperature=1,2,4,8 kd.alpha=0.5,0.9     # writes runs/demo/sweep/sweep-<id>/<n>/
    python tools/sweep_table.py runs/demo/sweep                          # a table for each sweep in there

Columns: the point's folder, the settings that differ between points, then student and baseline top-1; a point that
failed (failed.json in its folder) is listed last, with its reason. Each sweep (one -m command) is its own table:
points of two sweeps are never ranked side by side.
"""
from __future__ import annotations

import argparse
import json
import sys
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
    """Every point of one sweep: those that finished (summary.json) and those that failed (failed.json, written when
    the point last ran and failed; its reason and its values of the swept settings)."""
    rows = []
    for folder in sorted((p for p in sweep.iterdir() if p.is_dir()), key=_number):
        failed = json.loads((folder / "failed.json").read_text()) if (folder / "failed.json").exists() else None
        if failed is None and not (folder / "summary.json").exists():
            continue
        config = folder / "config.yaml"
        settings = flat(OmegaConf.to_container(OmegaConf.load(config))) if config.exists() else {}
        models = {} if failed else json.loads((folder / "summary.json").read_text())["models"]
        rows.append({"point": folder.name, "settings": settings, "student": models.get("student", {}).get("top1"),
                     "baseline": models.get("baseline", {}).get("top1"), "failed": failed})
    return rows


def _number(folder: Path):
    return (0, int(folder.name), "") if folder.name.isdigit() else (1, 0, folder.name)


def table(rows: list[dict]) -> list[str]:
    """One line a point: the finished ones by student top-1, best first, then the failed ones with their reason."""
    done = [r for r in rows if not r["failed"]]
    known = [r for r in rows if r["settings"]]  # config.yaml: written once a point's pipeline began
    keys = sorted(k for k in {k for r in known for k in r["settings"]}
                  if len({json.dumps(r["settings"].get(k)) for r in known}) > 1)
    keys += sorted({k for r in rows if r["failed"] for k in r["failed"].get("settings", {})} - set(keys))

    def value(r: dict, k: str) -> str:
        if r["failed"] and k not in r["settings"]:
            return str(r["failed"].get("settings", {}).get(k, "-"))
        return str(r["settings"].get(k))

    done.sort(key=lambda r: -1 if r["student"] is None else r["student"], reverse=True)
    failed = [r for r in rows if r["failed"]]
    head = ["point", *keys, "student top-1", "baseline top-1"] + (["failed"] if failed else [])
    cells = [[r["point"], *(value(r, k) for k in keys),
              *("-" if r[m] is None else f"{r[m]:.2f}%" for m in ("student", "baseline"))]
             + ([r["failed"]["reason"]] if r["failed"] else [""] if failed else []) for r in done + failed]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(head)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *cells]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path, help="a sweep's folder, or <run_root>/<name>/sweep holding several")
    folder = p.parse_args().sweep
    if not folder.is_dir():
        _stop(f"{folder}: no such folder; give a sweep's folder (the sweep's last line names it) or "
              "<run_root>/<name>/sweep")
    sweeps = [folder] if points(folder) else sorted(d for d in folder.iterdir() if d.is_dir() and points(d))
    if not sweeps:
        _stop(f"{folder}: no sweep points (folders with summary.json or failed.json) in it")
    for i, sweep in enumerate(sweeps):
        if len(sweeps) > 1:
            print(("\n" if i else "") + f"{sweep.name}:")
        print("\n".join(table(points(sweep))))


def _stop(line: str) -> None:
    """One line on stderr and exit 2, as distill/run.py answers a bad input."""
    print(f"error: {line}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
