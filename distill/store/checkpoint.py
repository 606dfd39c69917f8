"""Crash-safe training checkpoints around accelerate's save_state/load_state.

accelerate writes model, optimizer, scaler, sampler and the RNG states of every process in place, so a crash
mid-write leaves a half checkpoint. Here each one is written into `.tmp-step-N/`, the main process adds
`progress.json` (where training stood, the stage's fingerprint, the process count, torch's CPU thread count, and
the sha256 of every file), sealed (files.seal), then renames it to `step-N/`; only then are older ones pruned. A
checkpoint is restored only when every file verifies, so a truncated or tampered one is never loaded half-way, and a
progress.json changed by hand stops the run in one line. The bytes of a CPU run depend on the thread count (a
float sum splits by thread), so a resume restores the count the checkpoint was written under.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from distill import files
from distill.store import artifacts
from distill.errors import CheckpointError

log = logging.getLogger("distill")

PROGRESS = "progress.json"
FORMAT_VERSION = 3  # progress.json's; 2: every TrainState field (1 could lack some); 3: sealed, + threads


@dataclass
class TrainState:
    """Where training stands, saved with every checkpoint, so that a resumed stage continues bit for bit."""
    epoch: int = 0  # the epoch being trained (= epochs done)
    batch: int = 0  # batches of that epoch already trained
    step: int = 0  # optimizer steps done
    term_sums: dict[str, float] = field(default_factory=dict)  # this epoch's sum of each objective term
    window_terms: dict[str, float] = field(default_factory=dict)  # each term's sum since the last steps.jsonl line
    window_n: int = 0  # batches since the last steps.jsonl line
    seen: int = 0  # images trained this epoch, this process
    skipped: int = 0  # images left out this epoch (data.on_bad_image=skip), this process
    nonfinite_skipped: int = 0  # updates skipped for a non-finite loss, whole stage
    epoch_s: float = 0.0  # time this epoch trained before the last resume
    wait_s: float = 0.0  # of this epoch's time, waiting for the next batch (as timm's data_time)
    train_s: float = 0.0  # training time of the finished epochs
    wall_s: float = 0.0  # the stage's wall time before this part (every part a resume continued)
    best_top1: float | None = None


@dataclass(frozen=True)
class Progress(files.Sealed):
    """A checkpoint's progress.json, sealed: where training stood (`state`), the stage's fingerprint, the sha256 of
    every file of the checkpoint, the process count and torch's CPU thread count it was written under."""
    FORMAT_VERSION = FORMAT_VERSION
    state: TrainState
    fingerprint: str
    sums: dict[str, str]  # each file's sha256, by name
    processes: int
    threads: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self.state) | {"fingerprint": self.fingerprint, "format_version": FORMAT_VERSION,
                                                 "files": self.sums, "processes": self.processes,
                                                 "threads": self.threads}

    @classmethod
    def from_json(cls, obj: dict) -> "Progress":
        state = TrainState(**{f.name: obj[f.name] for f in dataclasses.fields(TrainState)})
        return cls(state, obj["fingerprint"], obj.get("files", {}), obj.get("processes", 0), obj["threads"])

    def problem(self, path: Path) -> str | None:
        """Why the checkpoint in `path` cannot be restored in full (a file missing or failing its checksum), or
        None."""
        rngs = [f"random_states_{i}.pkl" for i in range(self.processes)]
        for name in ["model.safetensors", "optimizer.bin", *rngs]:
            if name not in self.sums:
                return f"it holds no {name}"
        for name, digest in self.sums.items():
            if not (path / name).is_file():
                return f"{name} is missing"
            if files.sha256(path / name) != digest:
                return f"{name} fails its checksum (truncated or changed)"
        return None


def _name(step: int) -> str:
    return f"step-{step:09d}"


def complete(folder: Path) -> list[Path]:
    """Renamed (complete) checkpoints, oldest first."""
    return sorted(folder.glob("step-*")) if folder.is_dir() else []


def save(acc: Accelerator, folder: Path, state: TrainState, fingerprint: str, keep: int, what: str) -> Path:
    """Write a checkpoint of the prepared objects plus their progress (`state`, under the stage's `fingerprint`);
    keep the newest `keep`. An error while writing (disk full, ...) leaves the previous checkpoints as they were."""
    final = folder / _name(state.step)
    tmp = folder / f".tmp-{final.name}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            sums = {p.name: files.sha256(p) for p in sorted(tmp.iterdir())}
            Progress(state, fingerprint, sums, acc.num_processes, torch.get_num_threads()).write(tmp / PROGRESS)
            shutil.rmtree(final, ignore_errors=True)  # the same step saved again (an epoch end on an `every` step)
            tmp.rename(final)
            for old in complete(folder)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        last = complete(folder)
        raise CheckpointError(f"{what}: could not write checkpoint {final} ({e.strerror or e}); the last complete "
                            f"checkpoint is {last[-1] if last else 'none'}") from None
    acc.wait_for_everyone()
    return final


def _progress(path: Path, what: str = "checkpoint") -> Progress | str:
    """The progress of the checkpoint in `path` when it can be restored in full, else why it cannot; a
    progress.json of this format changed since it was written raises (never restored, nor passed over for an older
    checkpoint as if it were damaged)."""
    obj = files.read_json(path / PROGRESS)
    if not isinstance(obj, dict):
        return f"{PROGRESS} is missing or unreadable"
    version = Progress.other_version(obj)
    if version is not None:
        return f"it is checkpoint format {version}, this distill reads {FORMAT_VERSION}"
    if not files.is_sealed(obj):
        raise CheckpointError(files.changed(what, path / PROGRESS, f"set resume=never (or delete {path.parent}) to "
                                            "start the stage over"))
    progress = Progress.from_json(obj)
    return progress.problem(path) or progress


def _find(folder: Path, fingerprint: str, processes: int, what: str) -> tuple[str | None, Progress | None]:
    damaged = None
    for path in reversed(complete(folder)):
        progress = _progress(path, what)
        if isinstance(progress, str):
            log.warning(f"{what}: checkpoint {path} cannot be restored: {progress}; trying an older one")
            damaged = damaged or f"{path}: {progress}"
            continue
        if progress.fingerprint != fingerprint:
            raise CheckpointError(f"{what}: checkpoint {path} was written by another configuration of this stage; "
                                "set resume=never to start the stage over")
        if progress.processes != processes:
            raise CheckpointError(f"{what}: checkpoint {path} was written by {progress.processes} process(es), "
                                f"this run has {processes}; resume with the same process count or set resume=never")
        return str(path), progress
    if damaged:
        raise CheckpointError(f"{what}: no checkpoint can be restored (newest: {damaged}); set resume=never to start "
                            "the stage over")
    return None, None


def latest(acc: Accelerator, folder: Path, fingerprint: str, what: str) -> tuple[Path | None, Progress | None]:
    """The newest checkpoint that verifies completely, with its progress; the main process decides for all."""
    path, progress = artifacts.on_main(acc, lambda: _find(folder, fingerprint, acc.num_processes, what))
    return (Path(path) if path else None), progress


def restore(acc: Accelerator, path: Path, what: str) -> None:
    try:
        acc.load_state(str(path))
    except Exception as e:  # noqa: BLE001 - wrong shapes, foreign optimizer state, ...: one line, never half-loaded
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{what}: checkpoint {path} does not fit this model or optimizer ({first}); set "
                            "resume=never to start the stage over") from None
    log.info(f"{what}: resumed from {path}")


def restore_threads(progress: Progress, what: str) -> None:
    """torch's CPU thread count set to the one the checkpoint was written under (kept for the rest of the run, as
    the interrupted run had it), with one line when it differs: a CPU run resumed under another count would give
    other bytes than the uninterrupted one."""
    saved, now = progress.threads, torch.get_num_threads()
    if saved != now:
        torch.set_num_threads(saved)
        log.info(f"{what}: {saved} CPU thread(s) as when the checkpoint was written (this process had {now}), so "
                 "that the resumed stage gives the bytes of an uninterrupted one")


def clear(acc: Accelerator, folder: Path) -> None:
    if acc.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)
    acc.wait_for_everyone()
