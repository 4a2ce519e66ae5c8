"""Storage faults: a save that meets a full disk, a quota, a read-only or failing file system.

A PPO checkpoint is staged in a `.partial` directory and renamed into place only when whole
(parallel/checkpoint.py), so a failed save never touches the checkpoints before it. Here the failure
is recognised, whatever wrapped it (a rank's OSError, safetensors' SafetensorError text, Ray's
RayTaskError), the partial directory removed, and the run stopped with an error naming the path, the
free space and the space a checkpoint takes; or, with run.on_save_error=continue, told and retried
at the next save.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

from models.errors import InputError
from parallel import checkpoint as checkpoints

log = logging.getLogger("instructrl")
ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}
MESSAGES = ("No space left on device", "Disk quota exceeded", "Input/output error", "Read-only file system")


class StorageError(InputError):
    """A write failed for want of space, or on a failing or read-only file system."""


def storage_cause(error: BaseException) -> BaseException | None:
    """The storage failure in `error`'s chain (its cause, its context, a RayTaskError's `cause`), or None."""
    todo, seen = [error], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno in ERRNOS) or any(m in str(e) for m in MESSAGES):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def failed_save(out_dir: Path, staging: Path, step: int, cause: BaseException, keep_going: bool) -> str:
    """After a save of `step` failed on storage: remove its partial directory, and raise StorageError
    (or, keep_going, return the warning to log) naming the path, the free space and the space needed."""
    partial = size_of(staging)
    shutil.rmtree(staging, ignore_errors=True)
    last = checkpoints.latest(out_dir)
    need = size_of(last) if last is not None else partial
    free = shutil.disk_usage(out_dir).free
    detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    text = (f"{staging}: saving step {step} failed ({detail}); {free / 1e6:.1f} MB free on its file system, and a "
            f"checkpoint of this run takes about {need / 1e6:.1f} MB. The partial save is removed; ")
    text += (f"the previous checkpoint, {last}, is whole and loadable" if last is not None else
             "no earlier checkpoint exists")
    if keep_going:
        return text + "; the run goes on and saves again at the next save (run.on_save_error=continue)"
    raise StorageError(text + ". Free space (or move run.out_dir), then continue with run.resume=true") from None
