"""Preemption signals: SIGTERM and SIGUSR1 (Slurm's warning before preemption) become a stop that
PPO takes at a step boundary (launcher/recovery.py restarts after lost workers; docs/reliability.md).
Imports nothing of the launcher, so that cluster.py, which takes the signals back after ray.init,
and recovery.py both depend on it rather than on each other.
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager

from rlhf.coordinator import Preempted

log = logging.getLogger("instructrl")
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
