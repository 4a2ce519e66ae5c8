"""Run tracking: Weights & Biases (offline unless the user has a key and asks for online) plus a
metrics JSONL that needs no tool to read.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict


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
    """Logs flat metric dicts at a step to W&B and to <run_dir>/metrics.jsonl."""

    def __init__(self, run_dir: str | Path, name: str, cfg: WandbConfig, config: dict, job_type: str,
                 group: str | None = None, resume: bool = False):
        import wandb

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        # A resumed stage appends: the history before the checkpoint stays in the file.
        self._file = open(self.metrics_path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115 (finish)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=name, group=cfg.group or group or name,
                              job_type=job_type, config=config, dir=str(self.run_dir), mode=cfg.resolved_mode(),
                              reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._file.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self._file.flush()
        self.run.log(metrics, step=step)

    def table(self, key: str, columns: list[str], rows: list[list], step: int) -> None:
        import wandb

        self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def image(self, key: str, path: Path, step: int) -> None:
        import wandb

        self.run.log({key: wandb.Image(str(path))}, step=step)

    @property
    def wandb_dir(self) -> str | None:
        return getattr(self.run, "dir", None)

    def finish(self) -> None:
        self._file.close()
        self.run.finish()
