"""Stage outputs on disk: weights as safetensors with meta.json beside them, written atomically."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from distill.errors import DataError, UserError
from distill import files
from distill.files import fsync_rename, sha256
from distill.store.records import Meta

def save_model(folder: Path, model: torch.nn.Module, meta: Meta) -> Meta:
    """model.safetensors first, meta.json last (with the weights' sha256, sealed): meta.json is the marker that the
    folder is complete, and says which weights its metrics belong to. Returns the meta as written."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp))
    fsync_rename(tmp, folder / "model.safetensors")
    meta = dataclasses.replace(meta, weights_sha256=sha256(folder / "model.safetensors"))
    meta.write(folder / "meta.json")
    return meta


def reusable(folder: Path, fp: str, name: str) -> Meta | None:
    """The meta of a finished stage output made with this fingerprint, or None (then the stage must run). Weights
    that are not the ones meta.json scored, or a meta.json edited since it was written, stop the run: their metrics
    would be reported next to other weights, or as measured when they were not."""
    folder = Path(folder)
    meta = Meta.in_folder(folder)
    if not (meta and meta.fingerprint == fp and (folder / "model.safetensors").exists()):
        return None
    redo = f"delete {folder} to {'retrain' if name != 'teacher' else 'rebuild'} it"
    if not meta.sealed:
        raise DataError(files.changed(name, folder / "meta.json", redo, "its numbers would be shown as measured"))
    if sha256(folder / "model.safetensors") != meta.weights_sha256:
        raise DataError(f"{name}: {folder / 'model.safetensors'} is not the file {folder / 'meta.json'} scored "
                        f"(changed or replaced since it was written); restore it, or {redo}")
    logging.getLogger("distill").info(f"{name}: reusing {folder} (val top-1 {meta.metrics.top1:.2f}%)")
    return meta


def load_weights(folder: Path) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


@contextlib.contextmanager
def exclusive(folder: Path, advice: str = "wait for it to finish, or give this run another name=",
              lock: Path | None = None):
    """Hold `folder` for one live run: a POSIX lock (fcntl.lockf) on `lock` (<folder>/.lock), which the kernel drops
    when its process ends, however it ends (so a lock left by a killed run never blocks the next), and which a
    forked DataLoader worker does not inherit (an flock would stay held by a stage's persistent workers after the
    stage, and block the next sweep point in the same process). POSIX locks do not see their own process's, so
    the folders this process holds are also kept in _HELD. A folder held by a live run raises."""
    lock = lock or folder / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock.resolve())
    if key in _HELD:
        raise DataError(f"{folder}: in use by a running distill (pid {os.getpid()}); {advice}")
    f = open(lock, "a+")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise DataError(f"{folder}: in use by a running distill (pid {pid}); {advice}") from None
    _HELD.add(key)
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        _HELD.discard(key)
        f.close()  # closing releases the lock


_HELD: set[str] = set()  # the lock files this process holds (exclusive)


def on_main(acc, decide):
    """`decide()` run on the main process alone, its (picklable) answer, or the one-line error it raised, handed to
    every process, which returns it or raises it alike: one decision for all (is the cache complete, which
    checkpoint to load, is the run folder free)."""
    from accelerate.utils import broadcast_object_list

    answer, error = None, None
    if acc.is_main_process:
        try:
            answer = decide()
        except UserError as e:
            error = (type(e), str(e))
    if acc.num_processes > 1:
        answer, error = broadcast_object_list([answer, error])
    if error:
        raise error[0](error[1])
    return answer


@contextlib.contextmanager
def held(acc, folder: Path, advice: str = "wait for it to finish", lock: Path | None = None):
    """`exclusive(folder)` held by the main process for the block; a folder another live run holds stops every
    process in one line naming it: two runs never write one folder (a shared teacher.dir, a cache) at once."""
    with contextlib.ExitStack() as stack:
        def take() -> None:
            stack.enter_context(exclusive(folder, advice, lock))
        on_main(acc, take)
        yield
