"""The one training/evaluation loop every stage uses; the stage passes in the model and the objective.

An objective is `objective(out, batch, mix, x, progress) -> {"loss": ..., other terms}` (objectives.py; `out` the
model's training output): the engine draws the batch's mixing (a pure function of seed, process, epoch and step),
mixes the images, runs the model, and hands the mixing, the (mixed) input and the progress to the objective, so that
it mixes its targets the same way or runs a teacher on the very same input. Every term is averaged per epoch into
metrics.jsonl, per log window into steps.jsonl, and sent to the trackers.
"""
from __future__ import annotations

import contextlib
import dataclasses
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

from distill import faults
from distill.data.batch import ViewBatch, Views
from distill.store import artifacts, checkpoint
from distill.store.checkpoint import TrainState
from distill.store.records import Meta, Metrics, Scores, StepLine, Training
from distill.training import models, tricks
from distill.training.objectives import Progress
from distill.config import CheckpointCfg, Config, TrainCfg
from distill.errors import Stopped, TrainingError

log = logging.getLogger("distill")

Objective = Callable[[torch.Tensor, ViewBatch, "tricks.Mix | None", torch.Tensor, Progress], dict[str, torch.Tensor]]


@dataclass(kw_only=True)
class TrainingJob:
    """What `fit` needs besides the model: the recipe's trick set (its `epochs` and `optim.lr`, per 256 images, are
    the ones trained) and where the stage writes."""
    cfg: TrainCfg
    out_dir: Path
    name: str  # "teacher", "student", ... for logs and error messages
    seed: int
    to_input: Callable[[Views], torch.Tensor]  # batch -> network input (transforms.ToInput), train and validation
    fingerprint: str = ""  # the stage's: a checkpoint written under another fingerprint is refused
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    resume: str = "auto"
    on_nonfinite: str = "abort"
    max_nonfinite: int = 10


def resume_and_nonfinite(cfg: Config, fingerprint: str) -> dict:
    """The TrainingJob fields that come from the run's settings rather than the stage's trick set: the stage's
    fingerprint and the checkpoint, resume and non-finite-loss settings."""
    return {"fingerprint": fingerprint, "checkpoint": cfg.checkpoint, "resume": cfg.resume,
            "on_nonfinite": cfg.on_nonfinite, "max_nonfinite": cfg.max_nonfinite}


def _input(batch: Views, channels_last: bool, to_input) -> torch.Tensor:
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
    if precision == "fp16" and not has_gpu:  # fp16 mixed precision needs a GPU: the run trains in fp32
        precision = "no"
    return Accelerator(cpu=not has_gpu, mixed_precision=precision,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True), **kwargs)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, acc: Accelerator, to_input, channels_last: bool = True) -> Scores:
    """Top-1, top-5 and CE loss over the whole split; gather_for_metrics drops the padding DDP adds."""
    model.eval()
    sums = torch.zeros(3, device=acc.device, dtype=torch.float64)  # top-1 hits, top-5 hits, loss: one sync at the end
    count = 0
    for batch in loader:
        logits = model(_input(batch, channels_last, to_input)).float()
        y = batch.label
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1, hit5 = top[:, 0] == y, (top == y[:, None]).any(1)
        loss = F.cross_entropy(logits, y, reduction="none")
        hit1, hit5, loss = acc.gather_for_metrics((hit1, hit5, loss))
        sums += torch.stack([hit1.sum(), hit5.sum(), loss.sum()]).to(torch.float64)
        count += hit1.numel()
    correct1, correct5, loss_sum = sums.tolist()
    return Scores(100.0 * correct1 / max(count, 1), 100.0 * correct5 / max(count, 1), loss_sum / max(count, 1),
                  count)


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
            self._keep(self.epochs, lambda obj: Metrics.from_json(obj).epochs <= epochs_done)
            self._keep(self.steps, lambda obj: StepLine.from_json(obj).step <= step)

    @staticmethod
    def _keep(path: Path, wanted: Callable[[dict], bool]) -> None:
        rows = [line for line in path.read_text().splitlines() if wanted(json.loads(line))] if path.exists() else []
        path.write_text("".join(line + "\n" for line in rows))

    def write(self, line: Metrics | StepLine) -> None:
        """An epoch's line (Metrics) to metrics.jsonl, a step's (StepLine) to steps.jsonl."""
        if self.main:
            with open(self.epochs if isinstance(line, Metrics) else self.steps, "a") as f:
                f.write(json.dumps(line.line() if isinstance(line, Metrics) else line.to_json()) + "\n")


class _Sums:
    """Each term's running sum, on the device (no host sync per step)."""

    def __init__(self, start: dict, device):
        self.values = {k: torch.tensor(v, device=device) for k, v in start.items()}

    def add(self, name: str, value: torch.Tensor) -> None:
        """Add one step's value of a term (on the device)."""
        self.values[name] = self.values[name] + value if name in self.values else value

    def as_floats(self) -> dict:
        """The sums as numbers (one host sync): for a log line or a checkpoint."""
        return {k: v.item() for k, v in self.values.items()}


class _FirstBad:
    """The first step whose loss was not finite, kept on the device; a sentinel step number means none."""
    NONE = 2**62

    def __init__(self, device):
        self.value = torch.full((), self.NONE, device=device, dtype=torch.long)

    def note(self, finite: torch.Tensor, step: int) -> None:
        """Remember `step` if its loss was not finite and no earlier step's was (on the device)."""
        self.value = torch.where(~finite, torch.minimum(self.value, torch.full_like(self.value, step)), self.value)

    def check(self, job: TrainingJob, ckpt_dir: Path, acc: Accelerator) -> None:
        """Raise if any process saw a non-finite loss (abort mode); checked before every checkpoint, so that the
        last checkpoint is always a good one."""
        bad = acc.gather(self.value[None]).min() if acc.num_processes > 1 else self.value
        if int(bad.item()) != self.NONE:
            last = checkpoint.complete(ckpt_dir)
            where = f"last good checkpoint: {last[-1]}" if last else "no checkpoint yet"
            raise TrainingError(f"{job.name}: non-finite loss at step {int(bad.item()) + 1}; stopped ({where})")


@dataclass
class _Epoch:
    """One epoch's running figures (device tensors for what the step loop adds, host numbers for the rest)."""
    index: int
    first: int  # batches already trained before a resume
    sums: _Sums
    skipped: torch.Tensor
    first_bad: _FirstBad
    seen: int
    wait_s: float  # host time spent waiting for the next batch
    start: float = field(default_factory=time.perf_counter)
    bad_update: bool = False  # on_nonfinite=skip: a process saw a non-finite loss since the last update


def fit(model: torch.nn.Module, train_loader, val_loader, job: TrainingJob, objective: Objective,
        acc: Accelerator) -> tuple[torch.nn.Module, Metrics]:
    """Train for job.cfg.epochs, evaluating after each epoch, checkpointing every `checkpoint.every` steps and at each
    epoch end, resuming from the newest complete checkpoint; returns the unwrapped model and the last metrics."""
    return _Training(model, train_loader, val_loader, job, objective, acc).run()


class _Training:
    """One stage's training, read top to bottom: prepare and resume; per epoch, train it (each batch: forward and
    backward, then the update, the log line and the checkpoint) and end it (validate, log, checkpoint)."""

    def __init__(self, model, train_loader, val_loader, job: TrainingJob, objective: Objective, acc: Accelerator):
        cfg, self.job, self.objective, self.acc = job.cfg, job, objective, acc
        self.global_batch = cfg.batch_size * acc.num_processes * cfg.grad_accum
        self.lr = tricks.scaled_lr(cfg.optim.lr, self.global_batch)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = tricks.build_optimizer(model, cfg.optim, self.lr)
        acc.free_memory()  # forget earlier stages' prepared objects: save_state/load_state must see only this stage's
        self.model, self.optimizer, self.train_loader, self.val_loader = acc.prepare(model, optimizer, train_loader,
                                                                                     val_loader)
        # the training forward (and so its backward), compiled with job.cfg.compile; everything else (validation,
        # no_sync, the checkpoints, the weights returned) uses the prepared model, whose parameters it shares
        self.step_model = models.compiled(self.model, cfg.compile)
        self.batches = len(self.train_loader)
        self.steps_per_epoch = self.batches // cfg.grad_accum
        if self.steps_per_epoch < 1:
            raise TrainingError(f"{job.name}: batch_size {cfg.batch_size} x {acc.num_processes} process(es) x "
                                f"grad_accum {cfg.grad_accum} is more than the {len(train_loader.dataset)} training "
                                "images")
        self.schedule = tricks.build_schedule(self.optimizer, cfg.sched, cfg.epochs, self.steps_per_epoch)
        self.ckpt_dir, self.switched, self.started = job.out_dir / "checkpoints", False, time.perf_counter()
        self.state, resumed = self._resume()
        self.earlier_wall_s = self.state.wall_s  # what the interrupted parts took
        self.logs = _Logs(job.out_dir, acc, self.state.step, self.state.epoch)
        self.window, self.metrics = _Sums(self.state.window_terms, acc.device), None
        self.zero = torch.zeros((), device=acc.device)  # what a non-finite step adds to each term
        log.info(f"{job.name}: {cfg.epochs} epochs x {self.steps_per_epoch} steps, global batch {self.global_batch}, "
                 f"lr {self.lr:.4g} ({cfg.optim.name}), {acc.num_processes} process(es) on {acc.device}"
                 + (f"; resuming at epoch {self.state.epoch + 1}, step {self.state.step}" if resumed else ""))

    def _resume(self) -> tuple[TrainState, bool]:
        """The newest complete checkpoint's state (restored into model, optimizer and loaders), or a fresh one."""
        job, acc = self.job, self.acc
        if job.resume == "never":
            checkpoint.clear(acc, self.ckpt_dir)
            return TrainState(), False
        found, progress = checkpoint.latest(acc, self.ckpt_dir, job.fingerprint, job.name)
        if not found:
            return TrainState(), False
        switch_at = job.cfg.optim.switch_to_sgd_epoch
        if switch_at is not None and (progress.state.epoch, progress.state.batch) > (switch_at, 0):
            self._switch_to_sgd()
        checkpoint.restore(acc, found, job.name)
        checkpoint.restore_threads(progress, job.name)
        return progress.state, True

    def _switch_to_sgd(self) -> None:
        """A new SGD optimizer at optim.switch_lr (scaled to the global batch) and a new schedule over the stage."""
        cfg, acc = self.job.cfg, self.acc
        sgd = tricks.build_optimizer(acc.unwrap_model(self.model), cfg.optim,
                                     tricks.scaled_lr(cfg.optim.switch_lr, self.global_batch), use_sgd=True)
        self.optimizer = acc.prepare_optimizer(sgd)
        self.schedule = tricks.build_schedule(self.optimizer, cfg.sched, cfg.epochs, self.steps_per_epoch)
        self.switched = True

    def run(self) -> tuple[torch.nn.Module, Metrics]:
        """Every remaining epoch: start it, train it, end it; the unwrapped model and the last epoch's metrics."""
        with _Preemption() as self.preemption:
            for epoch in range(self.state.epoch, self.job.cfg.epochs):
                run = self._start_epoch(epoch)
                self._train_epoch(run)
                self._end_epoch(run)
        self.acc.wait_for_everyone()
        self.metrics = dataclasses.replace(self.metrics, train_wall_s=self.state.train_s,
                                           best_top1=self.state.best_top1, earlier_wall_s=self.earlier_wall_s)
        return self.acc.unwrap_model(self.model), self.metrics

    def _start_epoch(self, epoch: int) -> _Epoch:
        """Switch optimizer if due, set the epoch's data order and views, and pick up where a resume left off."""
        state, dev = self.state, self.acc.device
        if epoch == self.job.cfg.optim.switch_to_sgd_epoch and not self.switched:
            self._switch_to_sgd()
            log.info(f"{self.job.name}: switched to SGD at epoch {epoch}")
        first = state.batch if epoch == state.epoch else 0  # batches of this epoch already trained
        if first == 0:
            state.term_sums, state.seen, state.skipped, state.epoch_s, state.wait_s = {}, 0, 0, 0.0, 0.0
        self.schedule.step_update(state.step)
        self.model.train()
        if hasattr(self.train_loader, "set_epoch"):  # the same data order as the uninterrupted run
            self.train_loader.set_epoch(epoch)
        if hasattr(self.train_loader.dataset, "set_epoch"):  # the views (or cached views) of this epoch
            self.train_loader.dataset.set_epoch(epoch)
        return _Epoch(index=epoch, first=first, sums=_Sums(state.term_sums, dev), seen=state.seen, wait_s=state.wait_s,
                      skipped=torch.tensor(state.skipped, device=dev, dtype=torch.long), first_bad=_FirstBad(dev))

    def _train_epoch(self, run: _Epoch) -> None:
        loader = self.acc.skip_first_batches(self.train_loader, run.first) if run.first else self.train_loader
        self.bar = tqdm(_timed(loader, run), desc=f"{self.job.name} {run.index + 1}/{self.job.cfg.epochs}", leave=False,
                        dynamic_ncols=True, disable=not self.acc.is_main_process, initial=run.first,
                        total=self.batches)
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(self.bar, start=run.first):
            sync = (i + 1) % self.job.cfg.grad_accum == 0
            self._forward_backward(run, i, batch, sync)
            if sync:
                self._update(run)
                self._after_update(run, i)

    def _forward_backward(self, run: _Epoch, i: int, batch: ViewBatch, sync: bool) -> None:
        """Mix, forward, objective, backward; each term added to the sums unless the loss is not finite."""
        cfg, acc, zero = self.job.cfg, self.acc, self.zero
        x = _input(batch, cfg.channels_last, self.job.to_input)
        rng = np.random.default_rng([self.job.seed, acc.process_index, run.index, i])
        mix = tricks.draw_mix(rng, cfg.mix, x.shape[0], x.shape[-2], x.shape[-1])
        with contextlib.nullcontext() if sync else acc.no_sync(self.model):
            x = tricks.mix_images(x, mix)
            terms = self.objective(self.step_model(x), batch, mix, x, Progress(run.index, self.state.step))
            loss = terms["loss"]
            acc.backward(loss / cfg.grad_accum)
        finite = torch.isfinite(loss.detach())
        if self.job.on_nonfinite == "skip":  # decided before the update: one host sync per step
            run.bad_update |= acc.reduce((~finite).float(), reduction="sum").item() > 0
        else:
            run.first_bad.note(finite, self.state.step)
        for name, value in terms.items():  # a non-finite step adds nothing (decided on the device)
            kept = torch.where(finite, value.detach().float(), zero)
            run.sums.add(name, kept)
            self.window.add(name, kept)
        self.state.window_n += 1
        run.seen += x.shape[0]
        run.skipped += batch.skipped.to(acc.device)  # counted by data.collate when data.on_bad_image=skip

    def _update(self, run: _Epoch) -> None:
        """The optimizer step (skipped, and counted, after a non-finite loss under on_nonfinite=skip)."""
        job, state = self.job, self.state
        if run.bad_update:
            state.nonfinite_skipped += 1
            log.warning(f"{job.name}: non-finite loss at step {state.step + 1}; update skipped "
                        f"({state.nonfinite_skipped} so far)")
            if state.nonfinite_skipped > job.max_nonfinite:
                raise TrainingError(f"{job.name}: {state.nonfinite_skipped} steps with a non-finite loss, more than "
                                    f"max_nonfinite={job.max_nonfinite}; stopped at step {state.step + 1}")
        else:
            if job.cfg.clip_grad:
                self.acc.clip_grad_norm_(self.model.parameters(), job.cfg.clip_grad)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        run.bad_update = False
        state.step += 1
        self.schedule.step_update(state.step)

    def _after_update(self, run: _Epoch, i: int) -> None:
        """Every log_every steps a steps.jsonl line; every checkpoint.every steps, or on SIGTERM, a checkpoint."""
        job, state = self.job, self.state
        faults.point(job.name, state.step)  # tests and chaos runs: an interruption at this very step
        boundary = state.step % job.cfg.log_every == 0
        if boundary:
            run.first_bad.check(job, self.ckpt_dir, self.acc)
            lr_now = self.optimizer.param_groups[0]["lr"]
            line = StepLine(state.step, run.index + 1,
                            {k: v / max(state.window_n, 1) for k, v in self.window.as_floats().items()}, lr_now)
            self.logs.write(line)
            self.bar.set_postfix(loss=f"{line.loss:.4f}", lr=f"{lr_now:.3g}")
            self.window, state.window_n = _Sums({}, self.acc.device), 0
        stop = self.preemption.due(self.acc, boundary)
        if i + 1 < self.batches and ((job.checkpoint.every and state.step % job.checkpoint.every == 0) or stop):
            run.first_bad.check(job, self.ckpt_dir, self.acc)
            saved = self._save(self._snapshot(run, i + 1, run.index))
            if stop:
                raise Stopped(f"{job.name}: stopped by SIGTERM at step {state.step}; saved {saved}; run the same "
                              "command again to resume")

    def _end_epoch(self, run: _Epoch) -> None:
        """Validate, write the epoch's metrics, checkpoint at the epoch boundary, stop if SIGTERM came."""
        job, acc, state = self.job, self.acc, self.state
        run.first_bad.check(job, self.ckpt_dir, acc)
        elapsed = state.epoch_s + time.perf_counter() - run.start
        n_skipped = int(acc.reduce(run.skipped, reduction="sum").item())
        sums = {k: acc.reduce(v, reduction="mean").item() / max(self.batches, 1) for k, v in run.sums.values.items()}
        training = Training(run.index + 1, state.step, self.optimizer.param_groups[0]["lr"], sums,
                            run.seen * acc.num_processes / elapsed, run.wait_s, run.wait_s / max(elapsed, 1e-9),
                            n_skipped, state.nonfinite_skipped)
        self.metrics = metrics = Metrics(evaluate(self.model, self.val_loader, acc, job.to_input,
                                                  job.cfg.channels_last), training)
        state.train_s += elapsed
        state.best_top1 = max(metrics.top1, state.best_top1 or 0.0)
        log.info(f"{job.name} epoch {run.index + 1}/{job.cfg.epochs}: loss {metrics.loss:.4f} | val top-1 "
                 f"{metrics.top1:.2f}% top-5 {metrics.top5:.2f}% | {metrics.images_per_s:.0f} img/s")
        if n_skipped:
            log.warning(f"{job.name}: skipped {n_skipped} images that failed to decode this epoch")
        self.logs.write(metrics)
        logged = {f"{job.name}/{k}": v for k, v in metrics.line().items() if k != "terms"}
        acc.log(logged, step=state.step)  # needs log_with
        self._save(dataclasses.replace(self._snapshot(run, 0, run.index + 1), epoch_s=0.0, wait_s=0.0))
        if self.preemption.due(acc, True):
            raise Stopped(f"{job.name}: stopped by SIGTERM after epoch {run.index + 1}; run the same command again "
                          "to resume")

    def _save(self, state: TrainState) -> Path:
        return checkpoint.save(self.acc, self.ckpt_dir, state, self.job.fingerprint, self.job.checkpoint.keep,
                               self.job.name)

    def _snapshot(self, run: _Epoch, batch_index: int, epochs_done: int) -> TrainState:
        """The state to resume from at this point: what the step loop has added so far, brought to the host."""
        state = self.state
        now = time.perf_counter()
        return dataclasses.replace(state, epoch=epochs_done, batch=batch_index, term_sums=run.sums.as_floats(),
                                   window_terms=self.window.as_floats(), seen=run.seen, skipped=int(run.skipped.item()),
                                   epoch_s=state.epoch_s + now - run.start, wait_s=run.wait_s,
                                   wall_s=self.earlier_wall_s + now - self.started)


def _timed(loader, run: _Epoch):
    """The loader's batches, adding the time spent waiting for each to run.wait_s."""
    it = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        run.wait_s += time.perf_counter() - start
        yield batch


def publish(acc: Accelerator, out: Path, net: torch.nn.Module, name: str, metrics: Metrics, **fields) -> Meta:
    """Save a trained model with its meta.json (main process), drop its checkpoints, report its accuracy; `fields`:
    the rest of its Meta. Returns the Meta as written (with the weights' sha256 on the main process)."""
    meta = Meta(stage=name, params=sum(p.numel() for p in net.parameters()), metrics=metrics, **fields)
    if acc.is_main_process:
        meta = artifacts.save_model(out, net, meta)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the weights are saved: no longer needed
    acc.wait_for_everyone()
    log.info(f"{name}: val top-1 {metrics.top1:.2f}% top-5 {metrics.top5:.2f}% on {metrics.val_count} "
             f"images; saved {out}")
    return meta
