"""The one training/evaluation loop every stage uses; the stage passes in the model and the objective.

An objective is `objective(logits, batch, mix, x) -> loss`: the engine draws the batch's mixing (a pure function of
seed, process, epoch and step), mixes the images, runs the model, and hands the mixing and the (mixed) input to the
objective, so that it mixes its targets the same way or runs a teacher on the very same input.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from distill import artifacts, tricks
from distill.config import TrainCfg
from distill.errors import TrainingError

log = logging.getLogger("distill")

Objective = Callable[[torch.Tensor, dict, "tricks.Mix | None", torch.Tensor], torch.Tensor]


@dataclass
class Fit:
    """What `fit` needs besides the model: the recipe's trick set and where the stage writes."""
    cfg: TrainCfg
    epochs: int
    lr_per_256: float
    out_dir: Path
    name: str  # "teacher", "student", ... for logs and error messages
    seed: int
    inputs: Callable[[dict], torch.Tensor] | None = None  # training batch -> network input; default batch["image"]
    eval_inputs: Callable[[dict], torch.Tensor] | None = None  # the same for validation batches


def _inputs(batch: dict, channels_last: bool, make=None) -> torch.Tensor:
    x = make(batch) if make is not None else batch["image"]
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_accelerator(precision: str = "auto", **kwargs) -> Accelerator:
    """The run's Accelerator. precision=auto: bf16 on a GPU that supports it, else fp32. With no accelerator,
    cpu=True lets `accelerate launch --num_processes N` form one gloo group of CPU processes (accelerate otherwise
    starts N independent single-process runs)."""
    has_gpu = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(cpu=not has_gpu, mixed_precision=precision, **kwargs)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, acc: Accelerator, channels_last: bool = True, make=None) -> dict:
    """Top-1, top-5 and CE loss over the whole split; gather_for_metrics drops the padding DDP adds."""
    model.eval()
    sums = torch.zeros(3, device=acc.device, dtype=torch.float64)  # top-1 hits, top-5 hits, loss: one sync at the end
    count = 0
    for batch in loader:
        logits = model(_inputs(batch, channels_last, make)).float()
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


def _save_checkpoint(acc: Accelerator, folder: Path, epoch: int) -> Path:
    """accelerate's save_state writes in place: write into a temporary folder, then rename; keep the newest."""
    final = folder / f"epoch-{epoch:04d}"
    tmp = folder / f".tmp-epoch-{epoch:04d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp), safe_serialization=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        tmp.rename(final)
        for old in folder.glob("epoch-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def fit(model: torch.nn.Module, train_loader, val_loader, job: Fit, objective: Objective,
        acc: Accelerator) -> tuple[torch.nn.Module, dict]:
    """Train for job.epochs, evaluating after each epoch; returns the unwrapped model and the last metrics."""
    cfg = job.cfg
    global_batch = cfg.batch_size * acc.num_processes * cfg.grad_accum
    lr = tricks.scaled_lr(job.lr_per_256, global_batch)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = tricks.build_optimizer(model, cfg.optim, lr)
    model, optimizer, train_loader, val_loader = acc.prepare(model, optimizer, train_loader, val_loader)
    steps_per_epoch = len(train_loader) // cfg.grad_accum
    if steps_per_epoch < 1:
        raise TrainingError(f"{job.name}: batch_size {cfg.batch_size} x {acc.num_processes} process(es) x "
                            f"grad_accum {cfg.grad_accum} is more than the {len(train_loader.dataset)} training images")
    schedule = tricks.build_schedule(optimizer, cfg.sched, job.epochs, steps_per_epoch)
    metrics_path, ckpt_dir = job.out_dir / "metrics.jsonl", job.out_dir / "checkpoints"
    if acc.is_main_process:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.unlink(missing_ok=True)
    log.info(f"{job.name}: {job.epochs} epochs x {steps_per_epoch} steps, global batch {global_batch}, "
             f"lr {lr:.4g} ({cfg.optim.name}), {acc.num_processes} process(es) on {acc.device}")
    step, last_ckpt, metrics, fit_start = 0, None, {}, time.perf_counter()
    for epoch in range(job.epochs):
        if cfg.optim.switch_to_sgd_epoch is not None and epoch == cfg.optim.switch_to_sgd_epoch:
            sgd = tricks.build_optimizer(acc.unwrap_model(model), cfg.optim,
                                         tricks.scaled_lr(cfg.optim.switch_lr, global_batch), use_sgd=True)
            optimizer = acc.prepare_optimizer(sgd)
            schedule = tricks.build_schedule(optimizer, cfg.sched, job.epochs, steps_per_epoch)
            log.info(f"{job.name}: switched to SGD at epoch {epoch}")
        schedule.step_update(step)
        model.train()
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        if hasattr(train_loader.dataset, "set_epoch"):  # e.g. which cached view each sample replays
            train_loader.dataset.set_epoch(epoch)
        loss_sum = torch.zeros((), device=acc.device)
        first_bad = torch.full((), -1, device=acc.device, dtype=torch.long)  # no host sync per step
        seen, skipped = 0, torch.zeros((), device=acc.device, dtype=torch.long)
        start = time.perf_counter()
        bar = tqdm(train_loader, desc=f"{job.name} {epoch + 1}/{job.epochs}", leave=False, dynamic_ncols=True,
                   disable=not acc.is_main_process)
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar):
            x = _inputs(batch, cfg.channels_last, job.inputs)
            rng = np.random.default_rng([job.seed, acc.process_index, epoch, i])
            mix = tricks.draw_mix(rng, cfg.mix, x.shape[0], x.shape[-2], x.shape[-1])
            sync = (i + 1) % cfg.grad_accum == 0
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                x = tricks.mix_images(x, mix)
                loss = objective(model(x), batch, mix, x)
                acc.backward(loss / cfg.grad_accum)
            bad = ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
            loss_sum += torch.where(bad, torch.zeros_like(loss_sum), loss.detach().float())
            seen += x.shape[0]
            if "skipped" in batch:  # counted by data.collate when data.on_bad_image=skip
                skipped += batch["skipped"]
            if sync:
                if cfg.clip_grad:
                    acc.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                schedule.step_update(step)
                if step % cfg.log_every == 0 or i + 1 == len(train_loader):
                    _check_finite(first_bad, job, last_ckpt)
                    bar.set_postfix(loss=f"{loss_sum.item() / (i + 1):.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        _check_finite(first_bad, job, last_ckpt)
        elapsed, skipped = time.perf_counter() - start, int(acc.reduce(skipped, reduction="sum").item())
        metrics = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                   "loss": acc.reduce(loss_sum, reduction="mean").item() / max(len(train_loader), 1),
                   "images_per_s": seen * acc.num_processes / elapsed, "skipped_images": skipped,
                   **evaluate(model, val_loader, acc, cfg.channels_last, job.eval_inputs)}
        log.info(f"{job.name} epoch {epoch + 1}/{job.epochs}: loss {metrics['loss']:.4f} | val top-1 "
                 f"{metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}% | {metrics['images_per_s']:.0f} img/s")
        if skipped:
            log.warning(f"{job.name}: skipped {skipped} images that failed to decode this epoch")
        if acc.is_main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        acc.log({f"{job.name}/{k}": v for k, v in metrics.items()}, step=step)  # no-op without log_with
        last_ckpt = _save_checkpoint(acc, ckpt_dir, epoch + 1)
    acc.wait_for_everyone()
    metrics["train_wall_s"] = time.perf_counter() - fit_start
    return acc.unwrap_model(model), metrics


def _check_finite(first_bad: torch.Tensor, job: Fit, last_ckpt: Path | None) -> None:
    bad_step = int(first_bad.item())
    if bad_step >= 0:
        where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint yet"
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
