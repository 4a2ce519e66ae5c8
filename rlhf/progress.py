"""Progress of a training loop: a live bar on a terminal, one plain line every N seconds elsewhere.

A Slurm output file or a piped log is not a terminal; a bar redrawn with carriage returns turns it
into one endless line. There, a line like the bar's is printed every `INSTRUCTRL_PROGRESS_INTERVAL`
seconds (default 30) and at the end. Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0):
    """tqdm on a terminal; `LineProgress` (the same calls) when stderr is a file or a pipe."""
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, mininterval=1.0)
    interval = float(os.environ.get("INSTRUCTRL_PROGRESS_INTERVAL", "30"))
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, interval=interval)


class LineProgress:
    """tqdm's update/set_postfix/close, printed as whole lines at most every `interval` seconds."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, interval: float = 30.0):
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        self.total = total if total is not None or iterable is None else len(iterable)  # type: ignore[arg-type]
        self.n = self.start_n = initial
        self.postfix = ""
        self.start = self.last_print = time.monotonic()
        self.printed_at = None

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last_print >= self.interval:
            self._print(now)

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.printed_at != self.n:
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        self.last_print, self.printed_at = now, self.n
        line = tqdm.format_meter(self.n, self.total, now - self.start, ncols=0, prefix=self.desc, unit=self.unit,
                                 postfix=self.postfix or None, initial=self.start_n)
        print(line, file=sys.stderr, flush=True)
