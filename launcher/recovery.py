"""Surviving failures: restarting a stage's groups after a lost worker, and stopping cleanly on a
preemption signal. docs/reliability.md describes the whole design.

A lost rank (its process killed, its node gone, or no answer within run.call_timeout_s) surfaces in
the driver as WorkerLost (launcher/worker_group.py). The stage then tears every group down — a group
with a dead member cannot finish a collective — and runs its attempt again; PPO's attempt starts from
its newest whole checkpoint, SFT and RM from their beginning. SIGTERM and SIGUSR1 (Slurm's warning
before preemption) ask PPO to save at the end of the current step; the CLI then exits with
EXIT_PREEMPTED, which slurm/instructrl.sbatch answers by requeueing the job with run.resume=true.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

from launcher.worker_group import WorkerLost
from rlhf.coordinator import Preempted

log = logging.getLogger("instructrl")
T = TypeVar("T")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later (slurm/instructrl.sbatch requeues on it)


class StopRequest:
    """SIGTERM / SIGUSR1 → a stop. While a loop that can save at a step boundary runs (`deferred`),
    the signal only sets the flag the loop polls; elsewhere it raises Preempted at once, and the
    context managers tear the groups down. A second signal always raises."""

    def __init__(self):
        self.signal: str | None = None
        self.deferred = self.active = False

    @contextmanager
    def installed(self):
        """Handle the signals for the duration of a command (the previous handlers come back after)."""
        self.signal, self.deferred = None, False
        previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        self.active = True
        try:
            yield self
        finally:
            self.active = False
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def reclaim(self) -> None:
        """Take the signals back after ray.init, which installs its own SIGTERM handlers (Python's
        exits, the core worker's aborts with status 134)."""
        if self.active:
            for sig in SIGNALS:
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        first = self.signal is None
        self.signal = signal.Signals(signum).name
        log.warning("%s received: %s", self.signal, "saving at the end of this step, then stopping"
                    if self.deferred and first else "stopping now")
        if not (self.deferred and first):
            raise Preempted(f"stopped by {self.signal} before a checkpoint could be written")

    def __call__(self) -> bool:
        return self.signal is not None


STOP = StopRequest()


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
