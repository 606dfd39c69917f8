"""Chaos run (not a test): SIGKILL a recipe at N random moments spread over every stage, rerun after each, and check
that the final outputs are the very bytes of an uninterrupted run's.

One uninterrupted reference run; then N trials, each in a fresh folder: the recipe is killed at a random point of one
stage (stages taken in turn: teacher, cache, student, baseline, test scoring, export; the point drawn uniformly
within the stage, from the reference run's step and shard counts) through distill.faults (DISTILL_FAULT), then run
again to the end, and compared with the reference: every model's weights, the cache's files, the export's model
files, and summary.json's numbers (its wall times aside).

    python tools/chaos.py                        # the demo, one process, N = 10
    python tools/chaos.py --processes 2          # two CPU processes (accelerate launch --multi_gpu, gloo)
    python tools/chaos.py --n 10 -- recipe=cifar10_resnet20_to_resnet8 data.path=... data.train_size=2000
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from distill import files  # noqa: E402

EXPORTED = ("model.safetensors", "model.onnx", "config.json")


def run(args: list[str], where: Path, processes: int, fault: str | None = None) -> subprocess.CompletedProcess:
    entry = [str(ROOT / "distill" / "run.py"), f"run_root={where / 'runs'}", f"cache.root={where / 'cache'}", *args]
    cmd = [sys.executable, *entry] if processes == 1 else \
        ["accelerate", "launch", "--multi_gpu", "--num_processes", str(processes), *entry]
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_FAULT"} | {"PYTHONPATH": str(ROOT)}
    if fault:
        env["DISTILL_FAULT"] = fault
    return subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True, timeout=3600)


def outputs(where: Path) -> dict:
    """Every final output's sha256 (weights, cache files, export files) and summary.json's numbers."""
    (run_dir,) = [p.parent for p in (where / "runs").glob("*/summary.json")]
    found = {f"{m}/model.safetensors": files.sha256(run_dir / m / "model.safetensors")
             for m in ("teacher", "student", "baseline") if (run_dir / m / "model.safetensors").exists()}
    for cache in (p for p in (where / "cache").iterdir() if p.is_dir()):
        found |= {f"cache/{f.name}": files.sha256(f) for f in sorted(cache.iterdir())}
    found |= {f"export/{n}": files.sha256(run_dir / "export" / n) for n in EXPORTED if (run_dir / "export" / n).exists()}
    summary = json.loads((run_dir / "summary.json").read_text())
    found["summary"] = {name: {k: v for k, v in m.items() if "wall" not in k and "per_s" not in k}
                        for name, m in summary["models"].items()}
    return found


def points(where: Path) -> dict[str, int]:
    """Each stage's number of fault points in the reference run (steps, shards, models scored, the export)."""
    (run_dir,) = [p.parent for p in (where / "runs").glob("*/summary.json")]
    out = {}
    for stage in ("teacher", "student", "baseline"):
        rows = (run_dir / stage / "metrics.jsonl").read_text().splitlines() if (run_dir / stage).exists() else []
        if rows:
            out[stage] = json.loads(rows[-1])["step"]
    caches = [p for p in (where / "cache").iterdir() if p.is_dir()]
    out["cache"] = len(json.loads((caches[0] / "manifest.json").read_text())["shards"]) if caches else 0
    summary = json.loads((run_dir / "summary.json").read_text())
    out["test"] = sum("test_top1" in m for m in summary["models"].values())
    out["export"] = int((run_dir / "export" / "export.json").exists())
    order = ("teacher", "cache", "student", "baseline", "test", "export")
    return {stage: out[stage] for stage in order if out.get(stage)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="kills (default 10)")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("chaos-runs"), help="folder for the runs (default chaos-runs)")
    ap.add_argument("args", nargs="*", help="the recipe's arguments (after --), e.g. recipe=NAME key=value")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ref_dir = a.work / f"p{a.processes}-reference"
    ref_dir.mkdir(exist_ok=True)
    r = run(a.args, ref_dir, a.processes)
    if r.returncode:
        print(r.stderr[-3000:], file=sys.stderr)
        return 1
    reference, where_to = outputs(ref_dir), points(ref_dir)
    rng, stages = random.Random(a.seed), list(where_to)
    print(f"chaos: {a.processes} process(es); fault points per stage: {where_to}", flush=True)
    same = 0
    for trial in range(a.n):
        stage = stages[trial % len(stages)]
        at = rng.randint(1, where_to[stage])
        folder = a.work / f"p{a.processes}-trial{trial}"
        folder.mkdir(exist_ok=True)
        killed = run(a.args, folder, a.processes, fault=f"{stage}:{at}:KILL")
        rerun = run(a.args, folder, a.processes)
        got = outputs(folder) if rerun.returncode == 0 else {}
        ok = killed.returncode != 0 and rerun.returncode == 0 and got == reference
        same += ok
        diff = sorted(k for k in set(reference) | set(got) if reference.get(k) != got.get(k))
        print(f"trial {trial}: killed at {stage}:{at} (exit {killed.returncode}); rerun exit {rerun.returncode}; "
              + ("identical to the uninterrupted run" if ok else f"DIFFERS: {diff[:6]}"), flush=True)
        if rerun.returncode:
            print(rerun.stderr[-2000:], file=sys.stderr)
    print(f"chaos: {same} of {a.n} killed runs finished identical to the uninterrupted run "
          f"({a.processes} process(es), {time.perf_counter() - start:.0f} s)")
    return 0 if same == a.n else 1


if __name__ == "__main__":
    sys.exit(main())
