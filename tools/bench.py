"""The pipeline's speed and memory in one run (not a test), side by side with timm's own online distillation.

On the same data, teacher, student and batch size, in this process:
  (a) cached-KD student training images/s (the real student stage),
  (b) timm.task.LogitDistillationTask training images/s (teacher run live every step, same loader and optimizer),
  (c) CE-only training images/s (the stage's CE baseline), and our own online KD (kd.teacher=online),
  (d) the cached-KD data loader alone, images/s,
  (e) raw teacher inference images/s over the loader, of the teacher as the cache stage runs it (BatchNorm folded,
      models.frozen), and our cache generation (views/s = forwards/s),
  (f) peak RSS growth of training that gathers soft labels for every image of a synthetic ImageNet-sized cache
      (1,281,167 images x 8 views x top-10, one full pass) against the same training without it (child processes),
  (g) with --compile: (a) and (c) again with student.compile=true, right after the eager ones in each round: their
      rates (the timed last epoch holds no compile), the compiled-over-eager ratios, and each of the four stages'
      start-up, its wall time less its epochs at the timed epoch's rate (building, validation, saving, and the
      compile: the warm-up the step rate leaves out); compile_s is a compiled stage's start-up less the eager one's.
      Inductor's on-disk caches are off in this process and dynamo's compiled code is dropped before each round, so
      the KD student's compile is a cold one, as a machine's first run pays it, in every round; the CE-only
      baseline, trained after it in the same stage, reuses its compiled code when it is the same model (as in any
      run). On a busy machine a start-up can come out below 0 (the timed epoch ran slower than the others),
plus the ideal cached-over-online speed-up 1 + (teacher forward time) / (student step time), timed on fixed tensors
with the teacher as timm's task runs it (BatchNorm not folded), and the folded teacher's forward time beside it.
Training figures time the last of --epochs epochs. In each of --rounds rounds, (e) runs, and then (a), (c), (g),
online KD and (b) back to back; each rate and ratio is the median over rounds, a ratio taken within its round (on a machine
whose speed drifts, the figures of one round saw it in about the same state).

    python tools/bench.py --data ../shared/data/cifar10/train.parquet [--json out.json]
    python tools/bench.py --data ... --quick      # about a minute: fewer images, a smaller synthetic cache
    python tools/bench.py --data ... --compile --epochs 2   # (g): eager and compiled side by side, compile time
    python tools/bench.py --synthetic 4000 --image-size 224 --teacher resnet50 --student resnet18   # tools/gpu_bench.sh
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import config, data, files, report  # noqa: E402
from distill.data import transforms  # noqa: E402
from distill.store import artifacts, layout, softlabels  # noqa: E402
from distill.store.records import Meta  # noqa: E402
from distill.training import engine, models, tricks  # noqa: E402
from distill.stages import cache, student  # noqa: E402
from distill.training.context import RunContext  # noqa: E402

IMAGENET = 1_281_167


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


_T0 = time.perf_counter()


def _phase(name: str) -> None:
    """Where the run's wall time goes (stderr), to size runs on a lent machine."""
    print(f"bench: {name} done at {time.perf_counter() - _T0:.0f} s", file=sys.stderr, flush=True)


def _per_call(fns: list, reps: int, warmup: int = 3) -> list[float]:
    """Median seconds per call of each function, the calls interleaved (f, g, f, g, ...) so that a machine whose
    speed drifts (shared or throttled cores) slows each of them alike."""
    times = [[] for _ in fns]
    for rep in range(warmup + reps):
        for fn, kept in zip(fns, times):
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            if rep >= warmup:
                kept.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def _timm_task_rate(cfg, bundle, norm, teacher_net, acc) -> float:
    """One epoch of timm's LogitDistillationTask on our loader, with the student stage's optimizer and lr."""
    from timm.task import LogitDistillationTask

    s = cfg.student
    net = models.create(s.model, bundle.num_classes)
    models.init_weights(net, s.init, s.zero_gamma)
    net = net.to(acc.device, memory_format=torch.channels_last)
    task = LogitDistillationTask(net, teacher_net, task_loss_weight=1 - cfg.kd.alpha, temperature=cfg.kd.temperature,
                                 device=acc.device, verbose=False).train()
    optimizer = tricks.build_optimizer(net, s.optim, tricks.scaled_lr(s.optim.lr, s.batch_size))
    loader, _ = data.loaders(bundle, cfg.data, s.batch_size, 0)
    to_input = transforms.ToInput(cfg.data, norm.mean, norm.std,
                                  data.device_views(cfg.data, bundle, acc.device))
    for epoch in range(s.epochs):  # timed like the student stage: the last epoch only
        _sync()
        seen, start = 0, time.perf_counter()
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            batch = batch.to(acc.device, non_blocking=True)
            x = to_input(batch).contiguous(memory_format=torch.channels_last)
            with acc.autocast():
                loss = task(x, batch.label)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += x.shape[0]
        _sync()
    return seen / (time.perf_counter() - start)


def _loader_rate(cfg, bundle, norm, folder: Path, device) -> float:
    """The cached-KD training loader alone (replayed views with their soft labels), to normalised tensors on the
    training device, as the student stage feeds them (pinned memory on a GPU, normalised there)."""
    replay = student.ReplayItems(bundle.images["train"], cfg.data, [folder], cfg.kd.views, 0)
    to_input = transforms.ToInput(cfg.data, norm.mean, norm.std, data.device_views(cfg.data, bundle, device))
    loader = torch.utils.data.DataLoader(replay, batch_size=cfg.student.batch_size, shuffle=True, drop_last=True,
                                         num_workers=data.workers(cfg.data, replay.images),
                                         collate_fn=data.collate_replay, pin_memory=torch.cuda.is_available())
    seen, start = 0, time.perf_counter()
    for batch in loader:
        to_input(batch.to(device, non_blocking=True))  # every field, the soft labels too
        seen += len(batch.index)
    _sync()
    return seen / (time.perf_counter() - start)


def _startup_s(meta: Meta, batch: int) -> float:
    """A training stage's wall time less its epochs at the timed (last) epoch's rate: everything but its steady
    steps (building, validation, saving, and a compiled stage's compile). One process, grad_accum 1."""
    last = meta.metrics.training
    epoch_s = last.step / last.epoch * batch / last.images_per_s
    return meta.wall_s - last.epoch * epoch_s


def _compiled_round(ctx: RunContext, eager: dict, batch: int) -> dict:
    """(g) in one round: the student stage with student.compile=true (`ctx`), beside the eager one's metas
    (`eager`): each kind's compiled rate and start-up, and the eager stage's start-up. Dynamo keeps compiled code
    per forward function, not per model: it is reset first, so that each round's KD student compiles cold, and the
    baseline after it (the same model) reuses that code, as in any run."""
    torch._dynamo.reset()
    compiled = student.run(ctx)
    out = {}
    for kind, stage in (("cached", "student"), ("ce", "baseline")):
        out |= {f"{kind}_compiled": compiled[stage].metrics.images_per_s,
                f"{kind}_startup": _startup_s(eager[stage], batch),
                f"{kind}_compiled_startup": _startup_s(compiled[stage], batch)}
    return out


def _compile_fields(rounds: list[dict], median) -> dict:
    """(g)'s result fields: per kind the compiled rate, its ratio to eager, both start-ups and the compile time
    (medians over rounds), and the compile time of each round."""
    out = {}
    for kind, name in (("ce", "ce_only"), ("cached", "cached_kd")):
        compile_s = [r[f"{kind}_compiled_startup"] - r[f"{kind}_startup"] for r in rounds]
        out |= {f"{name}_compiled_images_per_s": round(median(lambda r: r[f"{kind}_compiled"]), 1),
                f"{name}_compiled_vs_eager": round(median(lambda r: r[f"{kind}_compiled"] / r[kind]), 3),
                f"{name}_startup_s": round(median(lambda r: r[f"{kind}_startup"]), 2),
                f"{name}_compiled_startup_s": round(median(lambda r: r[f"{kind}_compiled_startup"]), 2),
                f"{name}_compile_s": round(float(np.median(compile_s)), 2),
                f"{name}_compile_s_rounds": [round(c, 2) for c in compile_s]}
    return out


def _photos(source: str, path: Path, n: int, size=(500, 375)) -> Path:
    """n CIFAR images from `source` resized to 500 x 375 and saved as JPEG quality 90 in the hub's layout: images
    that decode like photographs (random noise decodes far slower)."""
    import io

    import datasets
    from PIL import Image

    ds = datasets.load_dataset("parquet", data_files={"train": source})["train"].select(range(n))
    rows = {"img": [], "label": []}
    for row in ds:
        buf = io.BytesIO()
        row["img"].convert("RGB").resize(size, Image.BICUBIC).save(buf, format="JPEG", quality=90)
        rows["img"].append({"bytes": buf.getvalue(), "path": None})
        rows["label"].append(row["label"])
    features = datasets.Features({"img": datasets.Image(), "label": ds.features["label"]})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def _synthetic_images(path: Path, n: int, size: int) -> Path:
    """Random RGB JPEGs (a little larger than the crop, as ImageNet's are) in the hub's layout."""
    import io

    import datasets
    from PIL import Image

    rng, side = np.random.default_rng(0), int(size * 1.15)
    rows = {"img": [], "label": []}
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        rows["img"].append({"bytes": buf.getvalue(), "path": None})
        rows["label"].append(i % 1000)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=1000)})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def _synthetic_cache(folder: Path, images: int, views: int = 8, k: int = 10, classes: int = 1000) -> Path:
    """A cache of ImageNet's shape with random records, written shard by shard (never whole in memory)."""
    dtype = softlabels.record_dtype(views, k, classes)
    shard_size, shards, rng = 100_000, [], np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for s, lo in enumerate(range(0, images, shard_size)):
        rows = min(shard_size, images - lo)
        arr = np.lib.format.open_memmap(folder / f"shard-{s:05d}.npy", mode="w+", dtype=dtype, shape=(rows,))
        arr["logits"] = rng.standard_normal((rows, views, k), dtype=np.float32).astype(np.float16)
        arr["classes"] = rng.integers(0, classes, (rows, views, k))
        arr.flush()
        del arr
        shards.append(softlabels.ShardEntry(f"shard-{s:05d}.npy", lo, rows, ""))
    manifest = softlabels.CacheManifest(  # sealed, as the cache stage writes it
        "synthetic", softlabels.shard_layout(dtype, False), {}, images, [str(c) for c in range(classes)], views,
        softlabels.LogitsKept(k, classes, 4.0), shard_size, {}, dtype.itemsize, None, 0.0, [], shards)
    files.write_sealed(folder / "manifest.json", manifest.to_json())
    return folder


CHILD = """
import sys, time, numpy as np, torch
sys.path.insert(0, {root!r})
from distill.store import softlabels  # noqa: E402
from distill.training import models  # noqa: E402
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) * 1024
net = models.create('resnet20', 1000)
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
labels = softlabels.SoftLabels({folder!r}) if {folder!r} else None
rng = np.random.default_rng(0)
order = rng.permutation(len(labels) if labels else {images})
batches = len(order) // {batch}
x = torch.randn({batch}, 3, 32, 32)
for b in range(batches):  # one full pass of soft-label reads over the cache, {steps} training steps among them
    idx = order[b * {batch}:(b + 1) * {batch}]
    if labels is not None:  # read as the student's loader reads them: a batch's records at once, one view each
        got = labels.view_labels(labels.rows(idx), rng.integers(0, labels.views, len(idx)))
    if b % max(batches // {steps}, 1) == 0:
        loss = torch.nn.functional.cross_entropy(net(x), torch.randint(0, 1000, ({batch},)))
        opt.zero_grad(); loss.backward(); opt.step()
print(hwm())
"""


def _peak_rss(folder: str, images: int, batch: int, steps: int) -> int:
    code = CHILD.format(root=str(Path(__file__).resolve().parent.parent), folder=folder, images=images, batch=batch,
                        steps=steps)
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="parquet file in the hub's CIFAR layout (columns img, label)")
    p.add_argument("--synthetic", type=int, help="instead of --data: this many random JPEGs (ImageNet-shaped with "
                                                   "--image-size 224), 1000 classes, written to a temporary parquet")
    p.add_argument("--photos", type=int, help="with --data: this many of its images as 500 x 375 JPEGs (quality 90)")
    p.add_argument("--renderer", choices=("cpu", "device"), default="cpu", help="data.renderer: where views are "
                   "rendered (device keeps each decoded split on the accelerator)")
    p.add_argument("--decode-mb", type=float, default=4096, help="data.decode_mb (device rendering needs the split "
                                                                  "decoded: 500 x 375 photos take 0.56 MB each)")
    p.add_argument("--no-memory", action="store_true", help="skip (f), the synthetic cache's memory check")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--images", type=int, help="training images (default 5,000, or with --synthetic all of them "
                                                "less --val; --quick 1,000)")
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--student", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1, help="training epochs of (a), (b) and (c); the last is timed, so "
                                                          "2 leaves out a GPU's warm-up (kernel selection, allocator)")
    p.add_argument("--workers", type=int, default=0, help="loader workers (decoded CIFAR needs none)")
    p.add_argument("--rounds", type=int, help="rounds of (e) and of the four training runs; rates and ratios are "
                                                "medians over rounds (default 3; --quick 1)")
    p.add_argument("--image-column", default="img")
    p.add_argument("--val", type=int, default=500, help="validation images carved off")
    p.add_argument("--memory-images", type=int, help="images in the synthetic cache of (f) (default ImageNet's)")
    p.add_argument("--memory-steps", type=int, help="training steps in each memory child (default 300)")
    p.add_argument("--quick", action="store_true", help="1,000 images, a 1/10 synthetic cache, 30 memory steps")
    p.add_argument("--compile", action="store_true", help="(g): also the student stage with student.compile=true, "
                                                            "beside the eager one (needs --epochs >= 2)")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args()
    if (args.data is None) == (args.synthetic is None):
        p.error("give --data or --synthetic")
    if args.compile and args.epochs < 2:
        p.error("--compile needs --epochs >= 2: the first epoch holds the compile, the last is timed")
    if args.photos and not args.data:
        p.error("--photos makes its JPEGs from --data")
    quick = {"images": 1000, "memory_images": IMAGENET // 10, "memory_steps": 30, "rounds": 1}
    made = args.synthetic or args.photos
    full = {"images": made - args.val if made else 5000, "memory_images": IMAGENET,
            "memory_steps": 300, "rounds": 3}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    acc = engine.make_accelerator("auto")
    tmp = Path(tempfile.mkdtemp(prefix="bench_"))
    if args.synthetic:
        args.data, args.image_column = str(_synthetic_images(tmp / "synthetic.parquet", args.synthetic,
                                                              args.image_size)), "img"
    elif args.photos:
        args.data = str(_photos(args.data, tmp / "photos.parquet", args.photos))
        _phase("photos")
    geometry = {"image_size": args.image_size, "transform": "cifar" if args.image_size <= 64 else "imagenet"}
    raw = {"name": "bench", "run_root": str(tmp), "seed": 0, "precision": "auto",
           "data": {"source": "parquet", "path": args.data, "image_column": args.image_column, "val_size": args.val,
                    "train_size": args.images, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
                    "num_workers": args.workers, "renderer": args.renderer, "decode_mb": args.decode_mb,
                    "test_split": None, **geometry},
           "teacher": {"model": args.teacher, "dir": str(tmp / "teacher")},
           "cache": {"root": str(tmp / "cache"), "views": args.views, "topk": 10, "batch_size": 256},
           "checkpoint": {"every": 0},
           "student": {"model": args.student, "epochs": args.epochs, "batch_size": args.batch, "baseline": True,
                       "sched": {"warmup_epochs": 0}}}
    cfg = config.validate(raw)
    bundle = data.load(cfg.data)
    _phase("data")
    norm = layout.normalization(cfg.data, bundle)
    n = len(bundle.train)
    torch.manual_seed(0)
    teacher_net = models.create(args.teacher, bundle.num_classes)
    artifacts.save_model(tmp / "teacher", teacher_net, Meta(model=args.teacher))
    teacher_net = teacher_net.to(acc.device, memory_format=torch.channels_last).eval()  # as timm's task gets it
    teacher_folded = models.frozen(teacher_net, acc.device)  # as our cache stage and online KD run it

    # (e) raw teacher inference over the loader, then the cache stage (into a fresh root each round), per round
    eval_ds = data.ImageDataset(bundle.images["train"], cfg.data, train=False)
    loader = data.make_loader(eval_ds, cfg.cache.batch_size, False, data.workers(cfg.data, eval_ds.images), 0)
    to_input = transforms.ToInput(cfg.data, norm.mean, norm.std,
                                  data.device_views(cfg.data, bundle, acc.device))
    labelling = []
    for r in range(args.rounds):
        for _ in range(args.epochs):  # like training, the last pass is timed
            _sync()
            start = time.perf_counter()
            with torch.inference_mode(), acc.autocast():
                for batch in loader:
                    x = to_input(batch.to(acc.device, non_blocking=True))
                    teacher_folded(x.contiguous(memory_format=torch.channels_last))
            _sync()
        raw_rate = n / (time.perf_counter() - start)
        cfg_r = cfg if r == 0 else config.validate(raw | {"cache": raw["cache"] | {"root": str(tmp / f"cache{r}")}})
        start = time.perf_counter()
        manifest = cache.run(RunContext.make(cfg_r, acc, bundle, norm, tmp / f"labelling{r}"))["teacher"]
        labelling.append({"raw": raw_rate, "views": n * args.views / (time.perf_counter() - start)})
        _phase(f"teacher inference and cache generation, round {r + 1} of {args.rounds}")
    folder = Path(cfg.cache.root) / manifest.fingerprint  # the first round's copy (every round's is the same)

    # (a) and (c) through the real student stage, our online KD, (b) timm's task: back to back in each round
    online_cfg = config.validate(raw | {"name": "online", "kd": {"teacher": "online"},
                                        "student": raw["student"] | {"baseline": False}})
    compiled_cfg = config.validate(raw | {"student": raw["student"] | {"compile": True}})
    if args.compile:  # every compile a cold one: (g)'s compile times alike in every round and kind
        import torch._inductor.config as inductor

        inductor.force_disable_caches = True
    rounds = []
    for r in range(args.rounds):
        metas = student.run(RunContext.make(cfg, acc, bundle, norm, tmp / f"round{r}"))
        compiled = _compiled_round(RunContext.make(compiled_cfg, acc, bundle, norm, tmp / f"round{r}" / "compiled"),
                                   metas, args.batch) if args.compile else {}
        online = student.run(RunContext.make(online_cfg, acc, bundle, norm, tmp / f"round{r}" / "online"))
        rounds.append({"cached": metas["student"].metrics.images_per_s,
                       "wait": metas["student"].metrics.training.data_wait_share,
                       "ce": metas["baseline"].metrics.images_per_s,
                       "online": online["student"].metrics.images_per_s,
                       "timm": _timm_task_rate(cfg, bundle, norm, teacher_net, acc), **compiled})
        _phase(f"training round {r + 1} of {args.rounds}")

    def median(fn, over=rounds) -> float:
        return float(np.median([fn(r) for r in over]))
    raw_rate, cache_views = median(lambda r: r["raw"], labelling), median(lambda r: r["views"], labelling)
    cached_rate, ce_rate = median(lambda r: r["cached"]), median(lambda r: r["ce"])
    online_rate, timm_rate = median(lambda r: r["online"]), median(lambda r: r["timm"])
    loader_rate = _loader_rate(cfg, bundle, norm, folder, acc.device)  # (d)

    # the ideal speed-up of caching: 1 + teacher forward / student step, on fixed tensors
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=acc.device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, bundle.num_classes, (args.batch,), device=acc.device)
    net = models.create(args.student, bundle.num_classes).to(acc.device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    def teacher_forward(model=teacher_net):
        with torch.inference_mode(), acc.autocast():
            model(x)

    def student_step():
        with acc.autocast():
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t_fwd, t_step, t_folded = _per_call([teacher_forward, student_step, lambda: teacher_forward(teacher_folded)], 20)
    ideal = 1 + t_fwd / t_step
    _phase("loader and ideal speed-up")

    # (f) memory: a synthetic ImageNet-sized cache read by training, against training without it
    if args.no_memory:
        big, rss_plain, rss_cached = None, float("nan"), float("nan")
    else:
        big = _synthetic_cache(tmp / "big", args.memory_images)
        rss_plain = _peak_rss("", args.memory_images, args.batch, args.memory_steps)
        rss_cached = _peak_rss(str(big), args.memory_images, args.batch, args.memory_steps)
        _phase("memory")

    vs_timm = median(lambda r: r["cached"] / r["timm"])
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
        "images": n, "teacher": args.teacher, "student": args.student, "batch": args.batch, "views": args.views,
        "epochs": args.epochs, "rounds": args.rounds,
        "cached_kd_images_per_s": round(cached_rate, 1),
        "timm_logit_distillation_images_per_s": round(timm_rate, 1),
        "ce_only_images_per_s": round(ce_rate, 1),
        "our_online_kd_images_per_s": round(online_rate, 1),
        "loader_images_per_s": round(loader_rate, 1),
        "teacher_inference_images_per_s": round(raw_rate, 1),
        "cache_generation_views_per_s": round(cache_views, 1),
        "teacher_forward_ms": round(t_fwd * 1e3, 2), "student_step_ms": round(t_step * 1e3, 2),
        "teacher_forward_folded_ms": round(t_folded * 1e3, 2),
        "renderer": args.renderer, "student_step_images_per_s": round(args.batch / t_step, 1),
        "ce_only_vs_student_step": round(ce_rate * t_step / args.batch, 3),
        "data_wait_share_cached_kd": round(median(lambda r: r["wait"]), 3),
        "ideal_speedup": round(ideal, 3),
        "cached_kd_vs_timm": round(vs_timm, 3),
        "cached_kd_vs_timm_of_ideal": round(vs_timm / ideal, 3),
        "cached_kd_vs_ce_only": round(median(lambda r: r["cached"] / r["ce"]), 3),
        "cached_kd_vs_timm_rounds": [round(r["cached"] / r["timm"], 3) for r in rounds],
        "cached_kd_vs_ce_only_rounds": [round(r["cached"] / r["ce"], 3) for r in rounds],
        "loader_vs_cached_kd": round(loader_rate / cached_rate, 2),
        "cache_generation_vs_inference_per_forward": round(median(lambda r: r["views"] / r["raw"], labelling), 3),
        "cache_generation_vs_inference_rounds": [round(r["views"] / r["raw"], 3) for r in labelling],
        "synthetic_cache_images": args.memory_images,
        "synthetic_cache_gb": round(softlabels.SoftLabels(big).nbytes() / 1e9, 3) if big else None,
        "peak_rss_ce_only_gb": round(rss_plain / 1e9, 3), "peak_rss_with_cache_gb": round(rss_cached / 1e9, 3),
        "peak_rss_growth_gb": round((rss_cached - rss_plain) / 1e9, 3),
        **(_compile_fields(rounds, median) if args.compile else {}),
    }
    report.print_fields(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
