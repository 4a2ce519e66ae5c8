"""What a run started from, kept beside it (<run>/inputs.json): every data file it names (size and
SHA-256) and the resolved config. A resume (run.resume=true: a requeued job, a second attempt) compares
them with what it is given now: a data file changed in between is an error naming it, unless
run.resume_changed_data=true says the user means it; a changed config key is said, key by key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from launcher.config import Config
from models.errors import InputError

log = logging.getLogger("instructrl")
RECORD = "inputs.json"
# keys a resume is expected to change, or that say nothing of what was trained
VOLATILE = {"run.resume", "run.overwrite", "run.resume_changed_data", "run.ray_address", "run.round"}


def file_fingerprint(path: Path) -> dict | None:
    """Size and SHA-256 of a file; of a directory (a `datasets` folder), the same over its files in order;
    None for what is not on disk here (a Hub data set's name)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        return None
    digest, size = hashlib.sha256(), 0
    for f in files:
        digest.update(str(f.relative_to(path)).encode() if path.is_dir() else b"")
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):  # noqa: B023 — read before the next file
                digest.update(block)
        size += f.stat().st_size
    return {"path": str(path), "size": size, "sha256": digest.hexdigest()}


def named_files(cfg: Config) -> dict[str, str]:
    files = {**cfg.user_files, "sample.prompts": cfg.sample.prompts}
    return {key: value for key, value in files.items() if value}


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def record(cfg: Config) -> None:
    """Write <run>/inputs.json: what this run (or this resume, when it accepts changed data) starts from."""
    data = {key: file_fingerprint(Path(value)) for key, value in named_files(cfg).items()}
    cfg.run.dir.mkdir(parents=True, exist_ok=True)
    (cfg.run.dir / RECORD).write_text(json.dumps({"data": data, "config": cfg.model_dump(mode="json")}, indent=1))


def check_unchanged(cfg: Config) -> None:
    """On a resume: the data files as the run recorded them, or an error naming the first that changed."""
    path = cfg.run.dir / RECORD
    if not cfg.run.resume or not path.exists():
        return
    before = json.loads(path.read_text())
    for key, value in named_files(cfg).items():
        was, now = before["data"].get(key), file_fingerprint(Path(value))
        if was is None or now is None or (was["path"], was["sha256"]) == (now["path"], now["sha256"]):
            continue
        what = (f"now {value}, where the run started from {was['path']}" if was["path"] != now["path"] else
                f"{value} changed since the run started ({was['size']} bytes then, {now['size']} now)")
        if not cfg.run.resume_changed_data:
            raise InputError(f"{key}: {what}. A resumed run would go on with other data than it began with; restore "
                             f"the file, or pass run.resume_changed_data=true if you mean it")
        log.warning("%s: %s; going on with it (run.resume_changed_data=true)", key, what)
    old, new = flat(before["config"]), flat(cfg.model_dump(mode="json"))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in VOLATILE)
    for key in changed:
        log.warning("resuming with %s=%r; the run started with %r", key, new.get(key), old.get(key))
