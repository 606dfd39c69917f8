"""The framework's own costs from 12,800 to 1,281,167 images (not a test): synthetic ImageNet-shaped data (1,000
classes, tiny JPEGs: tools/synth_data.py, the hub's parquet shards) and a teacher and student that are one linear
layer on S px images (registered here as `scale_linear`), so that what is timed is distill, not the networks.

At each size N, each phase a real `python distill/run.py` process (this file's `child` mode registers the model),
wall time and peak memory measured from outside (/proc, every 0.2 s: the main process's anonymous RSS, i.e. beyond
memory-mapped files, and each loader worker's private dirty pages, what it holds beyond what it shares with its
parent):
  start-up first     to the first teacher step, nothing cached (hash, datasets' arrow cache, decode, statistics);
                     validation: 1,000 images carved from the N
  start-up second    the same again: everything reused
  teacher/img        K more steps (DISTILL_FAULT stops the run at a step, whatever the machine's speed)
  resume             a run killed after a mid-epoch checkpoint, restarted: time to its first resumed step
  cache/view         the whole cache (V views, top-k, 8 shards) of a teacher from a checkpoint file: shard 1 to 8
  raw inference      the same teacher over the cache stage's own items (V views an image, loader workers), K
                     batches drawn across the split, nothing written: what labelling costs beyond it is the cache's
  cache bytes        its shards against the format's formula (N x record size + each .npy header)
  student/img        K steps of the student from the cache; CE-only (kd.alpha=0) on the same replay loader
  report+export      stage=export once a student of K steps (data.train_size=K x batch) is done: the report step
Rates are timed inside the run, between fault points (a training step, a cache shard: `child` records each point's
wall clock), free of the start-up's noise; start-ups are the time from the process's start to its first step.
  metadata           the bytes of every json file the run and the cache wrote, and the content index
Then each per-image cost at the largest N over the same at the smallest.

    python tools/scale_bench.py --quick                 # N = 12,800 and 128,000
    python tools/scale_bench.py                         # N = 12,800, 128,000 and 1,281,167 (docs/benchmarks.md)
    python tools/scale_bench.py --sizes 12800 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------- the model, registered with timm in every child

def register() -> None:
    """`scale_linear`: flatten, one linear layer (a classifier of the pixels); timm-built, so every stage takes it."""
    import torch
    from timm.models import build_model_with_cfg, register_model
    from timm.models._registry import generate_default_cfgs

    class ScaleLinear(torch.nn.Module):
        def __init__(self, num_classes: int = 1000, in_chans: int = 3, img_size: int = 8, **kwargs):
            super().__init__()
            self.num_classes, self.num_features = num_classes, in_chans * img_size * img_size
            self.fc = torch.nn.Linear(self.num_features, num_classes)

        def forward_features(self, x):
            return x.flatten(1)

        def forward_head(self, x, pre_logits: bool = False):
            return x if pre_logits else self.fc(x)

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

        def get_classifier(self):
            return self.fc

        def reset_classifier(self, num_classes: int, global_pool=None):
            self.num_classes = num_classes
            self.fc = torch.nn.Linear(self.num_features, num_classes)

    def scale_linear(pretrained: bool = False, **kwargs):
        return build_model_with_cfg(ScaleLinear, "scale_linear", pretrained, **kwargs)

    if "scale_linear" in globals():
        return
    globals()["default_cfgs"] = generate_default_cfgs({"scale_linear": {
        "num_classes": 1000, "input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.25,) * 3, "first_conv": "fc",
        "classifier": "fc"}})
    scale_linear.__module__ = __name__  # timm files a model under its module, which must be importable by name
    globals()["scale_linear"] = register_model(scale_linear)


def child(args: list[str]) -> None:
    """distill/run.py ARGS with `scale_linear` registered, and the wall clock of every fault point (a training
    step, a cache shard) appended to $DISTILL_SCALE_STEPS: rates timed inside the run, free of start-up noise."""
    register()
    from distill import faults, run
    point, out = faults.point, open(os.environ["DISTILL_SCALE_STEPS"], "a", buffering=1)

    def timed(where: str, reached: int) -> None:
        out.write(f"{where}\t{reached}\t{time.time()}\n")
        point(where, reached)

    faults.point = timed
    sys.argv = [str(ROOT / "distill" / "run.py"), *args]
    run.main()


def infer(args: list[str]) -> None:
    """Raw teacher inference on the cache stage's own items (every view of each image, rendered in the loader
    workers) over `--steps` batches of images drawn across the whole split; prints the microseconds per view."""
    register()
    import numpy as np
    import timm
    import torch
    from omegaconf import OmegaConf

    from distill import config, data
    from distill.data import transforms
    from distill.stages.cache import ViewItems
    steps = int(os.environ["DISTILL_SCALE_INFER_STEPS"])
    plain = [a for a in args if not a.startswith("precision=")]  # YAML would read its "no" as false; fp32 here
    cfg = config.validate(OmegaConf.to_container(OmegaConf.from_dotlist(plain)))
    bundle = data.load(cfg.data)
    items = ViewItems(bundle.images["train"], cfg.data, cfg.cache.views, True, cfg.seed)
    batch = cfg.cache.batch_size // cfg.cache.views
    order = np.random.default_rng(0).permutation(len(items))[:batch * (steps + 1)].tolist()
    loader = torch.utils.data.DataLoader(items, batch_size=batch, sampler=order, num_workers=cfg.data.num_workers,
                                         collate_fn=data.collate_cache)
    to_input = transforms.ToInput(cfg.data, cfg.data.mean, cfg.data.std)
    net = timm.create_model("scale_linear", num_classes=1000, img_size=cfg.data.image_size).eval()
    with torch.inference_mode():
        for i, b in enumerate(loader):
            if i == 1:  # the first batch waits for the workers' start
                start = time.perf_counter()
            net(to_input(data.Views(image=b.image.flatten(0, 1))))
    print(f"infer_us_per_view {1e6 * (time.perf_counter() - start) / (steps * batch * cfg.cache.views)}")


# ---------------------------------------------------------------- measuring a process from outside

def _memory(pid: int) -> dict[str, int]:
    """A process's anonymous RSS (beyond memory-mapped files) and its private dirty pages (what it alone has
    written: a forked worker's copies of its parent's pages, the copy-on-read trap, show here), in bytes."""
    out = {"anon": 0, "private": 0}
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            key, _, value = line.partition(":")
            if key == "Anonymous":
                out["anon"] = int(value.split()[0]) * 1024
            elif key == "Private_Dirty":
                out["private"] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def measured(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; its wall time, exit status and peaks: the main process's anonymous RSS, the largest loader
    worker's private memory, and the two summed over main and workers (sampled every 0.2 s)."""
    start, began = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"main": 0, "worker": 0, "total": 0, "workers": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            main = _memory(proc.pid)["anon"]
            workers = [_memory(c)["private"] for c in _children(proc.pid)]
            peak["main"] = max(peak["main"], main)
            peak["worker"] = max([peak["worker"], *workers])
            peak["total"] = max(peak["total"], main + sum(workers))
            peak["workers"] = max(peak["workers"], len(workers))
            done.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output = proc.communicate()[0]
    done.set()
    thread.join()
    return {"wall_s": time.perf_counter() - start, "began": began, "exit": proc.returncode, "output": output, **{
        f"peak_{k}_mb" if k != "workers" else "workers": (v / 2**20 if k != "workers" else v) for k, v in peak.items()}}


# ---------------------------------------------------------------- one size

class Size:
    def __init__(self, n: int, args, work: Path):
        self.n, self.args, self.work = n, args, work / f"n{n}"
        self.data = work / f"data-{n}-{args.size}px"
        self.env = dict(os.environ, HF_DATASETS_CACHE=str(self.work / "hf"), HF_HUB_OFFLINE="1",
                        HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        self.log = self.work / "log.txt"

    def overrides(self, **extra) -> list[str]:
        a = self.args
        base = {"data.path": self.data, "data.image_size": a.size, "data.transform": "cifar", "data.padding": 1,
                "data.val_size": 1_000, "data.test_split": "test", "data.num_workers": a.workers,
                "data.mean": "[0.5,0.5,0.5]", "data.std": "[0.25,0.25,0.25]", "run_root": self.work / "runs",
                "name": "scale", "precision": "no", "teacher.model": "scale_linear", "teacher.epochs": 1,
                "teacher.batch_size": a.batch, "student.model": "scale_linear", "student.epochs": 1,
                "student.batch_size": a.batch, "cache.root": self.work / "cache", "cache.views": a.views,
                "cache.topk": a.topk, "checkpoint.every": 0}
        base.update(extra)
        return [f"{k}={v}" for k, v in base.items() if v is not None]

    def run(self, name: str, fault: str | None = None, **extra) -> dict:
        """One phase: its measurement, and `points` {where: {N: seconds since the process started}}."""
        steps = self.work / "points.tsv"
        steps.unlink(missing_ok=True)
        env = dict(self.env, DISTILL_SCALE_STEPS=str(steps), **({"DISTILL_FAULT": fault} if fault else {}))
        r = measured([sys.executable, __file__, "child", *self.overrides(**extra)], env)
        r["points"] = {}
        for line in (steps.read_text().splitlines() if steps.exists() else []):
            where, n, t = line.split("\t")
            r["points"].setdefault(where, {})[int(n)] = float(t) - r["began"]
        with open(self.log, "a") as f:
            f.write(f"=== {name} ({r['wall_s']:.1f} s, exit {r['exit']})\n{r.pop('output')}\n")
        if r["exit"] not in (0, -9, 137):  # -9: the fault's SIGKILL, which is how a phase stops at its step
            raise SystemExit(f"scale_bench: phase {name} at N={self.n} failed (exit {r['exit']}); see {self.log}")
        print(f"  N={self.n:>9,} {name:18s} {r['wall_s']:8.1f} s  main {r['peak_main_mb']:7.0f} MB  worker "
              f"{r['peak_worker_mb']:6.0f} MB  ({r['workers']} workers)", flush=True)
        return r


def make_data(n: int, args, path: Path) -> float:
    if (path / "done").exists():
        return 0.0
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "tools" / "synth_data.py"), "--out", str(path), "--images", str(n),
                    "--size", str(args.size), "--classes", "1000", "--test", "1000"], check=True)
    (path / "done").write_text("")
    return time.perf_counter() - start


def teacher_file(path: Path, size: int) -> Path:
    """A `scale_linear` checkpoint with seeded random weights: the cache's teacher."""
    import torch
    from safetensors.torch import save_file
    register()
    import timm
    torch.manual_seed(0)
    net = timm.create_model("scale_linear", num_classes=1000, img_size=size)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def per_item(points: dict, first: int, last: int, items: int) -> float:
    """Seconds per item between fault points `first` and `last`, `items` items apart."""
    return (points[last] - points[first]) / items


def one_size(n: int, args, work: Path) -> dict:
    s = Size(n, args, work)
    shutil.rmtree(s.work, ignore_errors=True)
    s.work.mkdir(parents=True)
    out = {"n": n, "data_s": make_data(n, args, s.data)}
    k, b = args.steps, args.batch
    train_n = n - 1_000
    first = s.run("start-up first", "teacher:1:KILL", stage="teacher")
    second = s.run("start-up second", "teacher:1:KILL", stage="teacher")
    half = 1 + k // 2
    teacher = s.run("teacher K steps", f"teacher:{1 + k}:KILL", stage="teacher", **{"checkpoint.every": half})
    resume = s.run("resume", f"teacher:{half + 1}:KILL", stage="teacher", **{"checkpoint.every": half})
    ckpt = teacher_file(s.work / "teacher.safetensors", args.size)
    cached = {"teacher.source": "timm", "teacher.checkpoint": ckpt, "teacher.epochs": None,
              "cache.shard_size": -(-train_n // 8)}  # 8 shards: the rate between the first and the last
    cache = s.run("cache (whole)", None, stage="cache", **cached)
    env = dict(s.env, DISTILL_SCALE_INFER_STEPS=str(k))
    raw = subprocess.run([sys.executable, __file__, "infer", *s.overrides(**cached)], env=env, capture_output=True,
                         text=True, check=True).stdout
    infer_us = float(raw.split("infer_us_per_view")[-1])
    student = s.run("student K steps", f"student:{1 + k}:KILL", stage="student", **cached)
    ce = s.run("CE-only K steps", f"student:{1 + k}:KILL", stage="student", **cached, **{"kd.alpha": 0.0})
    small = {**cached, "data.train_size": k * b, "cache.shard_size": k * b}
    s.run("student to export", None, stage="export", **small)
    export = s.run("report+export", None, stage="export", **small)
    folder = next(p for p in (s.work / "cache").iterdir() if p.is_dir() and (p / "manifest.json").exists()
                  and json.loads((p / "manifest.json").read_text())["num_images"] == train_n)
    shards = sorted(folder.glob("shard-*.npy"))
    from distill.store import softlabels
    record = softlabels.record_dtype(args.views, args.topk, 1000).itemsize
    metadata = {str(p.relative_to(s.work)): p.stat().st_size for p in s.work.rglob("*.json")
                if p.relative_to(s.work).parts[0] != "hf"}
    index = s.work / "hf" / "distill_content.json"
    shard_rows = cached["cache.shard_size"]
    cache_points = cache["points"]["cache"]
    out.update({
        "start_first_s": first["points"]["teacher"][1], "start_second_s": second["points"]["teacher"][1],
        "teacher_ms_per_img": 1e3 * per_item(teacher["points"]["teacher"], 1, 1 + k, k * b),
        "resume_to_first_step_s": resume["points"]["teacher"][half + 1],
        "cache_s": cache["wall_s"],
        "cache_us_per_view": 1e6 * per_item(cache_points, 1, max(cache_points), (max(cache_points) - 1) *
                                            shard_rows * args.views) if max(cache_points) > 1 else None,
        "infer_us_per_view": infer_us,
        "cache_bytes": sum(p.stat().st_size for p in shards), "cache_formula_bytes": train_n * record,
        "cache_shards": len(shards),
        "student_ms_per_img": 1e3 * per_item(student["points"]["student"], 1, 1 + k, k * b),
        "student_start_s": student["points"]["student"][1],
        "ce_only_ms_per_img": 1e3 * per_item(ce["points"]["student"], 1, 1 + k, k * b),
        "report_export_s": export["wall_s"],
        "metadata_bytes": metadata, "content_index_bytes": index.stat().st_size if index.exists() else 0,
        "peaks_mb": {name: {key: r[key] for key in ("peak_main_mb", "peak_worker_mb", "peak_total_mb", "workers")}
                     for name, r in (("start-up first", first), ("start-up second", second),
                                     ("teacher", teacher), ("resume", resume), ("cache", cache),
                                     ("student", student), ("ce-only", ce), ("export", export))}})
    out["cache_bytes_over_formula"] = out["cache_bytes"] / out["cache_formula_bytes"]
    return out


def table(rows: list[dict]) -> str:
    lines = ["| N | start-up first | second | teacher ms/img | resume to step | cache us/view (raw inference) | "
             "cache bytes / formula | student ms/img | CE-only ms/img | report+export | peak main MB | "
             "peak worker MB (private) | metadata KB |",
             "|" + " --- |" * 13]
    for r in rows:
        peaks = r["peaks_mb"].values()
        cache = f"{r['cache_us_per_view']:.0f}" if r["cache_us_per_view"] else "-"
        cache += f" ({r['infer_us_per_view']:.0f})"
        lines.append(
            f"| {r['n']:,} | {r['start_first_s']:.1f} s | {r['start_second_s']:.1f} s | {r['teacher_ms_per_img']:.3f} "
            f"| {r['resume_to_first_step_s']:.1f} s | {cache} | {r['cache_bytes_over_formula']:.4f} | "
            f"{r['student_ms_per_img']:.3f} | {r['ce_only_ms_per_img']:.3f} | {r['report_export_s']:.1f} s | "
            f"{max(p['peak_main_mb'] for p in peaks):.0f} | {max(p['peak_worker_mb'] for p in peaks):.0f} | "
            f"{sum(r['metadata_bytes'].values()) / 1024:.1f} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict:
    small, large = rows[0], rows[-1]
    keys = ("teacher_ms_per_img", "cache_us_per_view", "infer_us_per_view", "student_ms_per_img",
            "ce_only_ms_per_img")
    return {f"{key} {large['n']:,}/{small['n']:,}": large[key] / small[key] for key in keys}


def main() -> None:
    if sys.argv[1:2] == ["child"]:
        return child(sys.argv[2:])
    if sys.argv[1:2] == ["infer"]:
        return infer(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[12_800, 128_000, 1_281_167])
    p.add_argument("--quick", action="store_true", help="N = 12,800 and 128,000")
    p.add_argument("--size", type=int, default=8, help="image side, px")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=40, help="K: timed steps of each training phase")
    p.add_argument("--workers", type=int, default=2, help="data.num_workers")
    p.add_argument("--work", type=Path, default=Path("/tmp/distill_scale"), help="data, runs and caches go here")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    sizes = [12_800, 128_000] if args.quick else args.sizes
    start = time.perf_counter()
    rows = []
    for n in sizes:
        rows.append(one_size(n, args, args.work))
    print(table(rows))
    if len(rows) > 1:
        for key, value in ratios(rows).items():
            print(f"{key}: {value:.2f}")
    print(f"scale_bench: {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios(rows) if len(rows) > 1 else {},
                                         "wall_s": time.perf_counter() - start, "args": vars(args)},
                                        indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
