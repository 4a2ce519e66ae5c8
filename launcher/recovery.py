"""Surviving failures: restarting a stage's groups after a lost worker, and stopping cleanly on a
preemption signal. docs/reliability.md describes the whole design.

A lost rank (its process killed, its node gone, or no answer within run.call_timeout_s) surfaces in
the driver as WorkerLost (launcher/worker_group.py). The stage then tears every group down — a group
with a dead member cannot finish a collective — and runs its attempt again; PPO's attempt starts from
its newest whole checkpoint, SFT and RM from their beginning. SIGTERM and SIGUSR1 (Slurm's warning
before preemption) ask PPO to save at the end of the current step; the CLI then exits with
EXIT_PREEMPTED, which slurm/instructrl.sbatch answers by requeueing the job with run.resume=true;
the signal handling itself is launcher/signals.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from launcher.worker_group import WorkerLost

log = logging.getLogger("instructrl")
T = TypeVar("T")


def with_restarts(stage: str, attempt: Callable[[int], T], max_restarts: int,
                  on_restart: Callable[[int, WorkerLost], None]) -> T:
    """Run `attempt(n)` (n = restarts so far) until it returns; after each WorkerLost call
    `on_restart` and go again, up to max_restarts times."""
    restarts = 0
    while True:
        try:
            return attempt(restarts)
        except WorkerLost as e:
            if restarts >= max_restarts:
                raise WorkerLost(f"{stage}: {e}. Gave up after {restarts} restart(s) (run.max_restarts="
                                 f"{max_restarts}); the rank logs are under <run>/logs/") from e
            restarts += 1
            log.warning("%s: %s; restarting every group (%d of %d)", stage, e, restarts, max_restarts)
            on_restart(restarts, e)
