"""Run tracking: Weights & Biases (offline unless the user has a key and asks for online) plus a
metrics JSONL that needs no tool to read.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from launcher.storage import StorageError
from models.errors import InputError

log = logging.getLogger("instructrl")


class WandbConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = "instructrl"  # W&B project
    group: str | None = None  # None: run.name, so one pipeline's stages (sft, rm, ppo) sit together
    entity: str | None = None  # W&B team or user; None: the key's default entity
    # auto: online when a W&B key is configured (WANDB_API_KEY or `wandb login`), else offline.
    # The WANDB_MODE environment variable overrides this.
    mode: Literal["auto", "offline", "online", "disabled"] = "auto"

    def resolved_mode(self) -> str:
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        if self.mode != "auto":
            return self.mode
        netrc = Path.home() / ".netrc"
        logged_in = netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
        return "online" if os.environ.get("WANDB_API_KEY") or logged_in else "offline"


class Tracker:
    """Logs flat metric dicts at a step to W&B and to <run_dir>/metrics.jsonl.

    One stage is one W&B run and one metrics file, across restarts and resumes: a resumed stage
    appends to the file and resumes the W&B run by its id (kept in <run_dir>/wandb-run-id). Steps that a
    restart redoes from its checkpoint are logged once: a key already logged at a step is not logged
    there again (an exact resume recomputes the same values), and the restart itself is recorded.
    """

    def __init__(self, run_dir: str | Path, name: str, cfg: WandbConfig, config: dict, job_type: str,
                 group: str | None = None, resume: bool = False):
        import wandb

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._seen: dict[int, set[str]] = {}  # step → keys already logged there
        self._events: dict[str, int] = {}
        id_file = self.run_dir / "wandb-run-id"
        run_id = id_file.read_text().strip() if resume and id_file.exists() else secrets.token_hex(6)
        self.earlier: list[dict] = []  # the records of the file this stage resumes
        if resume and self.metrics_path.exists():
            for record in self._read_whole_records():
                if "step" in record and "event" not in record:
                    self._seen.setdefault(record["step"], set()).update(record)
                    self.earlier.append(record)
        self._file = open(self.metrics_path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115 (finish)
        id_file.write_text(run_id)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=name, group=cfg.group or group or name,
                              job_type=job_type, config=config, dir=str(self.run_dir), mode=cfg.resolved_mode(),
                              id=run_id, resume="allow", reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))

    def _read_whole_records(self) -> list[dict]:
        """The file's records. A last line cut short (the disk filled, or the process died, mid-write) is
        dropped and the file cut back to its last whole line; a damaged line before it is an error."""
        text = self.metrics_path.read_text(encoding="utf-8")
        lines, records = text.split("\n"), []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if any(x.strip() for x in lines[n:]):
                    raise InputError(f"{self.metrics_path}:{n}: not a JSON record ({line[:60]!r}); the metrics file is "
                                     f"damaged: mend or remove that line") from None
                log.warning("%s:%d: a record cut short (%d bytes), dropped", self.metrics_path, n, len(line))
                self.metrics_path.write_text("\n".join(lines[:n - 1]) + ("\n" if n > 1 else ""), encoding="utf-8")
        return records

    def _write(self, record: dict) -> None:
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:
            raise StorageError(f"{self.metrics_path}: writing metrics failed ({e.strerror}); "
                               f"{shutil.disk_usage(self.run_dir).free / 1e6:.1f} MB free there. Free space, then "
                               f"continue with run.resume=true (a record cut short is dropped)") from None

    def _new(self, step: int, keys) -> list[str]:
        seen = self._seen.setdefault(step, set())
        fresh = [k for k in keys if k not in seen]
        seen.update(fresh)
        return fresh

    def log(self, metrics: dict[str, float], step: int) -> None:
        metrics = {k: metrics[k] for k in self._new(step, metrics)}
        if not metrics:
            return
        self._write({"step": step, "time": time.time(), **metrics})
        self.run.log(metrics, step=step)

    def event(self, kind: str, step: int, **fields) -> None:
        """A run event (a restart, a skipped update, a preemption, a supervised stage's stop) in the metrics
        file, and in the W&B summary as a count with the latest event's fields (events/<kind>/<field>)."""
        self._write({"event": kind, "step": step, "time": time.time(), **fields})
        self._events[kind] = self._events.get(kind, 0) + 1
        self.run.summary[f"events/{kind}"] = self._events[kind]
        for key, value in fields.items():
            self.run.summary[f"events/{kind}/{key}"] = value

    def table(self, key: str, columns: list[str], rows: list[list], step: int) -> None:
        import wandb

        if self._new(step, [key]):
            self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def image(self, key: str, path: Path, step: int) -> None:
        import wandb

        if self._new(step, [key]):
            self.run.log({key: wandb.Image(str(path))}, step=step)

    def history(self, prefix: str) -> dict[int, dict[str, float]]:
        """The metrics under `prefix` that the resumed file holds, by step."""
        out: dict[int, dict[str, float]] = {}
        for record in self.earlier:
            metrics = {k: v for k, v in record.items() if k.startswith(prefix)}
            if metrics:
                out.setdefault(record["step"], {}).update(metrics)
        return out

    @property
    def steps(self) -> list[int]:
        """Steps logged so far (this process and, resumed, the file before it)."""
        return list(self._seen)

    @property
    def wandb_dir(self) -> str | None:
        return getattr(self.run, "dir", None)

    def finish(self) -> None:
        try:
            self._file.close()
        except OSError as e:  # the disk filled: what was flushed stays, a record cut short is dropped on resume
            log.warning("%s: closing it failed (%s)", self.metrics_path, e.strerror)
        self.run.finish()
