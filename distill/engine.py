"""The one training/evaluation loop every stage uses; the stage passes in the model and the objective.

An objective is `objective(logits, batch, mix, x, progress) -> {"loss": ..., other terms}` (objectives.py): the
engine draws the batch's mixing (a pure function of seed, process, epoch and step), mixes the images, runs the
model, and hands the mixing, the (mixed) input and the progress to the objective, so that it mixes its targets the
same way or runs a teacher on the very same input. Every term is averaged per epoch into metrics.jsonl, per log
window into steps.jsonl, and sent to the trackers.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from tqdm.auto import tqdm

from distill import artifacts, checkpoint, tricks
from distill.objectives import Progress
from distill.config import CheckpointCfg, Config, TrainCfg
from distill.errors import Stopped, TrainingError

log = logging.getLogger("distill")

Objective = Callable[[torch.Tensor, dict, "tricks.Mix | None", torch.Tensor, Progress], dict[str, torch.Tensor]]


@dataclass(kw_only=True)
class Fit:
    """What `fit` needs besides the model: the recipe's trick set and where the stage writes."""
    cfg: TrainCfg
    epochs: int
    lr_per_256: float
    out_dir: Path
    name: str  # "teacher", "student", ... for logs and error messages
    seed: int
    to_input: Callable[[dict], torch.Tensor]  # batch -> network input (transforms.ToInput), train and validation
    fingerprint: str = ""  # the stage's: a checkpoint written under another fingerprint is refused
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    resume: str = "auto"
    on_nonfinite: str = "abort"
    max_nonfinite: int = 10


def guards(cfg: Config, fingerprint: str) -> dict:
    """The Fit fields that come from the run's settings rather than the stage's trick set."""
    return {"fingerprint": fingerprint, "checkpoint": cfg.checkpoint, "resume": cfg.resume,
            "on_nonfinite": cfg.on_nonfinite, "max_nonfinite": cfg.max_nonfinite}


def _input(batch: dict, channels_last: bool, to_input) -> torch.Tensor:
    x = to_input(batch)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_accelerator(precision: str = "auto", **kwargs) -> Accelerator:
    """The run's Accelerator. precision=auto: bf16 on a GPU that supports it, else fp32. With no accelerator,
    cpu=True lets `accelerate launch --num_processes N` form one gloo group of CPU processes (accelerate otherwise
    starts N independent single-process runs). Seedable samplers make each epoch's data order a function of the
    seed and the epoch, the same on every process and after a resume."""
    has_gpu = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(cpu=not has_gpu, mixed_precision=precision,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True), **kwargs)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, acc: Accelerator, to_input, channels_last: bool = True) -> dict:
    """Top-1, top-5 and CE loss over the whole split; gather_for_metrics drops the padding DDP adds."""
    model.eval()
    sums = torch.zeros(3, device=acc.device, dtype=torch.float64)  # top-1 hits, top-5 hits, loss: one sync at the end
    count = 0
    for batch in loader:
        logits = model(_input(batch, channels_last, to_input)).float()
        y = batch["label"]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1, hit5 = top[:, 0] == y, (top == y[:, None]).any(1)
        loss = F.cross_entropy(logits, y, reduction="none")
        hit1, hit5, loss = acc.gather_for_metrics((hit1, hit5, loss))
        sums += torch.stack([hit1.sum(), hit5.sum(), loss.sum()]).to(torch.float64)
        count += hit1.numel()
    correct1, correct5, loss_sum = sums.tolist()
    return {"top1": 100.0 * correct1 / max(count, 1), "top5": 100.0 * correct5 / max(count, 1),
            "val_loss": loss_sum / max(count, 1), "val_count": count}


class _Preemption:
    """SIGTERM sets a flag; training saves a checkpoint at the next step boundary and stops (`Stopped`). With several
    processes the flag is agreed on at progress-log boundaries, where the processes synchronise anyway."""

    def __enter__(self):
        self.requested, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def due(self, acc: Accelerator, boundary: bool) -> bool:
        if acc.num_processes == 1:
            return self.requested
        if not boundary:
            return False
        return acc.reduce(torch.tensor(float(self.requested), device=acc.device), reduction="sum").item() > 0


class _Logs:
    """metrics.jsonl (one line per epoch) and steps.jsonl (one line per log_every steps), main process only. A resumed
    stage first drops the lines written after its checkpoint, so that no step appears twice or goes missing."""

    def __init__(self, out_dir: Path, acc: Accelerator, step: int, epochs_done: int):
        self.epochs, self.steps, self.main = out_dir / "metrics.jsonl", out_dir / "steps.jsonl", acc.is_main_process
        if self.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._keep(self.epochs, lambda r: r["epoch"] <= epochs_done)
            self._keep(self.steps, lambda r: r["step"] <= step)

    @staticmethod
    def _keep(path: Path, wanted) -> None:
        rows = [line for line in path.read_text().splitlines() if wanted(json.loads(line))] if path.exists() else []
        path.write_text("".join(line + "\n" for line in rows))

    def write(self, which: str, row: dict) -> None:
        if self.main:
            with open(self.epochs if which == "epoch" else self.steps, "a") as f:
                f.write(json.dumps(row) + "\n")


NO_BAD_STEP = 2**62  # first_bad's value while every loss so far was finite


def _switch_to_sgd(acc, model, job: Fit, global_batch: int, steps_per_epoch: int):
    cfg = job.cfg
    sgd = tricks.build_optimizer(acc.unwrap_model(model), cfg.optim,
                                 tricks.scaled_lr(cfg.optim.switch_lr, global_batch), use_sgd=True)
    optimizer = acc.prepare_optimizer(sgd)
    return optimizer, tricks.build_schedule(optimizer, cfg.sched, job.epochs, steps_per_epoch)


def fit(model: torch.nn.Module, train_loader, val_loader, job: Fit, objective: Objective,
        acc: Accelerator) -> tuple[torch.nn.Module, dict]:
    """Train for job.epochs, evaluating after each epoch, checkpointing every `checkpoint.every` steps and at each
    epoch end, resuming from the newest complete checkpoint; returns the unwrapped model and the last metrics."""
    cfg = job.cfg
    global_batch = cfg.batch_size * acc.num_processes * cfg.grad_accum
    lr = tricks.scaled_lr(job.lr_per_256, global_batch)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = tricks.build_optimizer(model, cfg.optim, lr)
    acc.free_memory()  # forget earlier stages' prepared objects: save_state/load_state must see only this stage's
    model, optimizer, train_loader, val_loader = acc.prepare(model, optimizer, train_loader, val_loader)
    batches = len(train_loader)
    steps_per_epoch = batches // cfg.grad_accum
    if steps_per_epoch < 1:
        raise TrainingError(f"{job.name}: batch_size {cfg.batch_size} x {acc.num_processes} process(es) x "
                            f"grad_accum {cfg.grad_accum} is more than the {len(train_loader.dataset)} training images")
    schedule = tricks.build_schedule(optimizer, cfg.sched, job.epochs, steps_per_epoch)
    ckpt_dir, switch_at = job.out_dir / "checkpoints", cfg.optim.switch_to_sgd_epoch
    # where training stands; saved with every checkpoint, so that a resumed stage continues bit for bit
    st = {"epoch": 0, "batch": 0, "step": 0, "term_sums": {}, "window_terms": {}, "window_n": 0, "seen": 0,
          "skipped": 0, "nonfinite_skipped": 0, "epoch_s": 0.0, "wait_s": 0.0, "train_s": 0.0, "best_top1": None}
    if job.resume == "never":
        checkpoint.clear(acc, ckpt_dir)
    found, progress = checkpoint.latest(acc, ckpt_dir, job.fingerprint, job.name) if job.resume == "auto" \
        else (None, None)
    switched = False
    if found:
        if switch_at is not None and (progress["epoch"], progress["batch"]) > (switch_at, 0):
            optimizer, schedule = _switch_to_sgd(acc, model, job, global_batch, steps_per_epoch)
            switched = True
        checkpoint.restore(acc, found, job.name)
        st.update({k: progress[k] for k in st})
    logs = _Logs(job.out_dir, acc, st["step"], st["epoch"])
    log.info(f"{job.name}: {job.epochs} epochs x {steps_per_epoch} steps, global batch {global_batch}, "
             f"lr {lr:.4g} ({cfg.optim.name}), {acc.num_processes} process(es) on {acc.device}"
             + (f"; resuming at epoch {st['epoch'] + 1}, step {st['step']}" if found else ""))
    metrics, step, dev = {}, st["step"], acc.device
    window = {k: torch.tensor(v, device=dev) for k, v in st["window_terms"].items()}  # since the last log line
    window_n = st["window_n"]
    with _Preemption() as preemption:
        for epoch in range(st["epoch"], job.epochs):
            if epoch == switch_at and not switched:
                optimizer, schedule = _switch_to_sgd(acc, model, job, global_batch, steps_per_epoch)
                switched = True
                log.info(f"{job.name}: switched to SGD at epoch {epoch}")
            first = st["batch"] if epoch == st["epoch"] else 0  # batches of this epoch already trained
            if first == 0:
                st.update(term_sums={}, seen=0, skipped=0, epoch_s=0.0, wait_s=0.0)
            schedule.step_update(step)
            model.train()
            if hasattr(train_loader, "set_epoch"):  # the same data order as the uninterrupted run
                train_loader.set_epoch(epoch)
            if hasattr(train_loader.dataset, "set_epoch"):  # the views (or cached views) of this epoch
                train_loader.dataset.set_epoch(epoch)
            loader = acc.skip_first_batches(train_loader, first) if first else train_loader
            sums = {k: torch.tensor(v, device=dev) for k, v in st["term_sums"].items()}  # this epoch's, per term
            skipped = torch.tensor(st["skipped"], device=dev, dtype=torch.long)
            first_bad = torch.full((), NO_BAD_STEP, device=dev, dtype=torch.long)  # no host sync per step
            zero = torch.zeros((), device=dev)
            seen, bad_update, start = st["seen"], False, time.perf_counter()
            waited = [st["wait_s"]]  # host time spent waiting for the next batch (as timm's data_time measures it)

            def progress_now(batch_index: int, epochs_done: int) -> dict:
                return st | {"epoch": epochs_done, "batch": batch_index, "step": step,
                             "term_sums": {k: v.item() for k, v in sums.items()},
                             "window_terms": {k: v.item() for k, v in window.items()}, "window_n": window_n,
                             "seen": seen,
                             "skipped": int(skipped.item()), "epoch_s": st["epoch_s"] + time.perf_counter() - start,
                             "wait_s": waited[0], "fingerprint": job.fingerprint}

            bar = tqdm(_timed(loader, waited), desc=f"{job.name} {epoch + 1}/{job.epochs}", leave=False,
                       dynamic_ncols=True, disable=not acc.is_main_process, initial=first, total=batches)
            optimizer.zero_grad(set_to_none=True)
            for i, batch in enumerate(bar, start=first):
                x = _input(batch, cfg.channels_last, job.to_input)
                rng = np.random.default_rng([job.seed, acc.process_index, epoch, i])
                mix = tricks.draw_mix(rng, cfg.mix, x.shape[0], x.shape[-2], x.shape[-1])
                sync = (i + 1) % cfg.grad_accum == 0
                with contextlib.nullcontext() if sync else acc.no_sync(model):
                    x = tricks.mix_images(x, mix)
                    terms = objective(model(x), batch, mix, x, Progress(epoch, step))
                    loss = terms["loss"]
                    acc.backward(loss / cfg.grad_accum)
                finite = torch.isfinite(loss.detach())
                if job.on_nonfinite == "skip":  # decided before the update: one host sync per step
                    bad_update |= acc.reduce((~finite).float(), reduction="sum").item() > 0
                else:
                    first_bad = torch.where(~finite, torch.minimum(first_bad, torch.full_like(first_bad, step)),
                                            first_bad)
                for name, value in terms.items():  # a non-finite step adds nothing (decided on the device)
                    kept = torch.where(finite, value.detach().float(), zero)
                    sums[name] = sums[name] + kept if name in sums else kept
                    window[name] = window[name] + kept if name in window else kept
                window_n += 1
                seen += x.shape[0]
                if "skipped" in batch:  # counted by data.collate when data.on_bad_image=skip
                    skipped += batch["skipped"].to(dev)
                if not sync:
                    continue
                if bad_update:
                    st["nonfinite_skipped"] += 1
                    log.warning(f"{job.name}: non-finite loss at step {step + 1}; update skipped "
                                f"({st['nonfinite_skipped']} so far)")
                    if st["nonfinite_skipped"] > job.max_nonfinite:
                        raise TrainingError(f"{job.name}: {st['nonfinite_skipped']} steps with a non-finite loss, "
                                            f"more than max_nonfinite={job.max_nonfinite}; stopped at step {step + 1}")
                else:
                    if cfg.clip_grad:
                        acc.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bad_update = False
                step += 1
                schedule.step_update(step)
                boundary = step % cfg.log_every == 0
                if boundary:
                    _check_finite(first_bad, job, ckpt_dir, acc)
                    lr_now = optimizer.param_groups[0]["lr"]
                    row = {"step": step, "epoch": epoch + 1, **{k: v.item() / max(window_n, 1) for k, v in
                                                                 window.items()}, "lr": lr_now}
                    logs.write("step", row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr_now:.3g}")
                    window = {}
                    window_n = 0
                stop = preemption.due(acc, boundary)
                if i + 1 < batches and ((job.checkpoint.every and step % job.checkpoint.every == 0) or stop):
                    _check_finite(first_bad, job, ckpt_dir, acc)
                    saved = checkpoint.save(acc, ckpt_dir, progress_now(i + 1, epoch), job.checkpoint.keep, job.name)
                    if stop:
                        raise Stopped(f"{job.name}: stopped by SIGTERM at step {step}; saved {saved}; run the same "
                                      "command again to resume")
            _check_finite(first_bad, job, ckpt_dir, acc)
            elapsed = st["epoch_s"] + time.perf_counter() - start
            n_skipped = int(acc.reduce(skipped, reduction="sum").item())
            metrics = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                       **{k: acc.reduce(v, reduction="mean").item() / max(batches, 1) for k, v in sums.items()},
                       "terms": sorted(sums),
                       "images_per_s": seen * acc.num_processes / elapsed, "data_wait_s": waited[0],
                       "data_wait_share": waited[0] / max(elapsed, 1e-9), "skipped_images": n_skipped,
                       "nonfinite_skipped": st["nonfinite_skipped"],
                       **evaluate(model, val_loader, acc, job.to_input, cfg.channels_last)}
            st["train_s"] += elapsed
            st["best_top1"] = max(metrics["top1"], st["best_top1"] or 0.0)
            log.info(f"{job.name} epoch {epoch + 1}/{job.epochs}: loss {metrics['loss']:.4f} | val top-1 "
                     f"{metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}% | {metrics['images_per_s']:.0f} img/s")
            if n_skipped:
                log.warning(f"{job.name}: skipped {n_skipped} images that failed to decode this epoch")
            logs.write("epoch", metrics)
            acc.log({f"{job.name}/{k}": v for k, v in metrics.items() if k != "terms"}, step=step)  # needs log_with
            checkpoint.save(acc, ckpt_dir, progress_now(0, epoch + 1) | {"epoch_s": 0.0, "wait_s": 0.0},
                            job.checkpoint.keep, job.name)
            if preemption.due(acc, True):
                raise Stopped(f"{job.name}: stopped by SIGTERM after epoch {epoch + 1}; run the same command again "
                              "to resume")
    acc.wait_for_everyone()
    metrics["train_wall_s"] = st["train_s"]
    metrics["best_top1"] = st["best_top1"]
    return acc.unwrap_model(model), metrics


def _timed(loader, clock: list):
    """The loader's batches, adding the time spent waiting for each to clock[0]."""
    it = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        clock[0] += time.perf_counter() - start
        yield batch


def _check_finite(first_bad: torch.Tensor, job: Fit, ckpt_dir: Path, acc: Accelerator) -> None:
    """Raise if any process saw a non-finite loss (abort mode); checked before every checkpoint, so that the last
    checkpoint is always a good one."""
    bad = acc.gather(first_bad[None]).min() if acc.num_processes > 1 else first_bad
    bad_step = int(bad.item())
    if bad_step != NO_BAD_STEP:
        last = checkpoint.complete(ckpt_dir)
        where = f"last good checkpoint: {last[-1]}" if last else "no checkpoint yet"
        raise TrainingError(f"{job.name}: non-finite loss at step {bad_step + 1}; stopped ({where})")


def publish(acc: Accelerator, out: Path, net: torch.nn.Module, name: str, metrics: dict, **meta) -> dict:
    """Save a trained model with its meta.json (main process), drop its checkpoints, report its accuracy."""
    meta = {"stage": name, "params": sum(p.numel() for p in net.parameters()), "metrics": metrics, **meta}
    if acc.is_main_process:
        artifacts.save_model(out, net, meta)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the weights are saved: no longer needed
    acc.wait_for_everyone()
    log.info(f"{name}: val top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}% on {metrics['val_count']} "
             f"images; saved {out}")
    return meta
