"""Fingerprint what the code does, to show a refactor changed nothing: run a recipe (the demo unless --recipe;
every stage, export included), then its student again killed at an optimizer step and resumed, and print one JSON
object with the run's numbers and the sha256 of every file that holds behaviour: the cache's shard files, each
trained model's weights, the export's weights and ONNX file, and the resumed student's weights.

    python tools/same_behaviour.py --out before.json        # on the old commit
    python tools/same_behaviour.py --out after.json         # on the new one
    python tools/same_behaviour.py --compare before.json after.json
    python tools/same_behaviour.py --recipe demo_ensemble --out ens.json   # another recipe (default: demo)

Compared: each model's scores, epochs and size, the KD gain, and the bytes of those files, the cache's folder named
"<fingerprint>" (its name is a hash of settings). Left out: metadata (meta.json, cache.json, export.json, the model
card), lock files (a process id) and timings; they name settings, carry fingerprints or change with every run. The
numbers and the bytes that the settings produced are what must stay. About 2 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from distill import files  # noqa: E402

# metadata: names settings and fingerprints (a refactor may rename them); not behaviour
SKIP = {"meta.json", "cache.json", "export.json", "README.md", "config.json", "summary.json", "config.yaml"}
SKIP_SUFFIXES = (".lock", ".jsonl", ".png")  # a process id, logs, a plot
SKIP_PREFIX = "cache-"  # cache-NAME.json: an ensemble teacher's cache.json
SCORES = ("top1", "top5", "epochs", "params", "val_count", "model")


def _run(args: list[str], env: dict | None = None) -> int:
    return subprocess.run([sys.executable, str(ROOT / "distill" / "run.py"), *args],
                          env={**os.environ, **(env or {})}, cwd=ROOT).returncode


def _weights(folder: Path) -> dict[str, str]:
    """sha256 of each file in `folder` (recursively) that is not metadata, logs or a checkpoint."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        metadata = p.name in SKIP or (p.name.startswith(SKIP_PREFIX) and p.suffix == ".json")
        if p.is_file() and not metadata and not p.name.endswith(SKIP_SUFFIXES) and "checkpoints" not in rel:
            out[rel] = files.sha256(p)[:16]
    return out


def measure(work: Path, recipe: str) -> dict:
    common = [f"recipe={recipe}", f"run_root={work}/runs", f"cache.root={work}/cache", "data.num_workers=0"]
    if _run(common) != 0:
        raise SystemExit(f"same_behaviour: recipe {recipe} failed")
    run = work / "runs" / recipe
    summary = json.loads((run / "summary.json").read_text())
    scores = {name: {k: v for k, v in model.items() if k in SCORES} for name, model in summary["models"].items()}
    cache = {"/".join(["<fingerprint>", *rel.split("/")[1:]]): sha for rel, sha in _weights(work / "cache").items()}
    out = {"summary": {"models": scores, "kd_gain_top1": summary.get("kd_gain_top1")},
           "files": {"cache": cache, "run": _weights(run)}}
    # the student again in the same run (its teachers and caches reused), killed after optimizer step 7, then
    # resumed: its final weights
    shutil.rmtree(run / "student")
    again = [*common, "stage=student", "student.baseline=false", "checkpoint.every=5"]
    if _run(again, {"DISTILL_FAULT": "student:7:KILL"}) != -signal.SIGKILL:  # else it would be a fresh run
        raise SystemExit("same_behaviour: the student was not killed at step 7")
    if not list((run / "student").rglob("step-*")):
        raise SystemExit("same_behaviour: the killed student left no checkpoint to resume from")
    if _run(again) != 0:
        raise SystemExit("same_behaviour: the resumed student failed")
    out["files"]["resumed"] = _weights(run / "student")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the fingerprint here (JSON)")
    ap.add_argument("--recipe", default="demo", help="the recipe to run (default: the demo)")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                    help="compare two fingerprints; exit 1 when they differ")
    args = ap.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        same = before == after
        for part in ("summary", "files"):
            if before[part] != after[part]:
                print(f"differs: {part}\n  before {json.dumps(before[part])}\n  after  {json.dumps(after[part])}")
        print("same behaviour" if same else "DIFFERENT")
        raise SystemExit(0 if same else 1)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(Path(tmp), args.recipe)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
