"""Training checkpoints that are whole or absent: staged, verified, committed by one rename.

The ranks of every role write into `<root>/.checkpoint-<step>.partial/`; the driver then adds the
coordinator's state and a manifest (step, every file's size and SHA-256), syncs, and renames the
directory to `checkpoint-<step>`. A kill at any moment leaves either the previous checkpoints only,
or the new one complete. Before a resume each candidate is verified against its manifest, newest
first; a torn, corrupt or mixed one (a file from another step) is skipped with a warning.
No torch.distributed, ray or deepspeed here: the driver calls it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger("instructrl")
MANIFEST = "manifest.json"
STATE = "coordinator.json"
_NAME = re.compile(r"checkpoint-(\d+)")


def staging_dir(root: Path, step: int) -> Path:
    return Path(root) / f".checkpoint-{step}.partial"


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"checkpoint-{step}"


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(root: Path, step: int, state: dict) -> Path:
    """Seal the staged checkpoint of `step` (the ranks have written their parts): state, manifest,
    fsync, rename into place. Returns the final directory."""
    staging, final = staging_dir(root, step), checkpoint_dir(root, step)
    (staging / STATE).write_text(json.dumps(state))
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    manifest = {"step": step, "files": {str(p.relative_to(staging)): {"size": p.stat().st_size, "sha256": _digest(p)}
                                        for p in files}}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for p in [*files, staging / MANIFEST, *sorted({p.parent for p in files}), staging]:
        _fsync(p)
    if final.exists():  # the same step saved again after a restart: the new copy replaces it
        shutil.rmtree(final)
    os.rename(staging, final)
    _fsync(Path(root))
    return final


def verify(path: Path) -> str | None:
    """None if `path` is a whole checkpoint; else what is wrong with it, in a few words."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        step, files = int(manifest["step"]), manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (not committed: a save was interrupted, or written by an older version)"
    except (ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is damaged ({type(e).__name__})"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta["size"]:
            return f"{name} is {f.stat().st_size} bytes, the manifest says {meta['size']}"
        if _digest(f) != meta["sha256"]:
            return f"{name} does not match its checksum (corrupt, or from another checkpoint)"
    try:
        state_step = json.loads((path / STATE).read_text())["step"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return f"{STATE} is missing or damaged"
    if state_step != step:
        return f"{STATE} is at step {state_step}, the manifest at step {step}"
    return None


def step_of(path: Path) -> int | None:
    m = _NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoint directories under root, newest first (not verified)."""
    root = Path(root)
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and step_of(p) is not None] if root.is_dir() else []
    return sorted(found, key=step_of, reverse=True)


def latest(root: Path) -> Path | None:
    """The newest checkpoint under root that verifies; each newer one that does not is skipped
    with a warning naming what is wrong."""
    for path in list_checkpoints(root):
        problem = verify(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def prune(root: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` committed checkpoints (0: all) and drop interrupted stagings."""
    root = Path(root)
    removed = [p for p in root.glob(".checkpoint-*.partial") if p.is_dir()]
    if keep:
        removed += list_checkpoints(root)[keep:]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed
