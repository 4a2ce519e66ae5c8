"""Where a PPO step's time goes: every group call on every rank (timed on the rank) and the
coordinator's phases, as spans; written as a Chrome trace (`chrome://tracing`, https://ui.perfetto.dev
open it) and summed per step into each group's busy fraction, the share of the step its ranks
computed rather than waited. Must not import ray: groups and the coordinator only add spans.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

COORDINATOR = "coordinator"


@dataclass(frozen=True)
class Span:
    group: str  # a worker group's name, or "coordinator" for a phase of the loop
    rank: int
    name: str  # the worker method, or the phase
    start: float  # seconds since the epoch (time.time(): comparable across the processes of one host)
    end: float


class Timeline:
    """Spans as they happen, the newest `max_spans` kept (a long run's trace is its recent steps);
    thread-safe (groups may finish their calls from several threads)."""

    def __init__(self, max_spans: int = 200_000):
        self.spans: deque[Span] = deque(maxlen=max_spans)
        self._lock = threading.Lock()
        # The driver's side: group calls (one round trip each, its ranks answering in parallel) and the
        # rank calls they fan out into, counted as they are made.
        self.calls = 0
        self.tasks = 0

    def called(self, ranks: int) -> None:
        """One group call from the driver, fanned out to `ranks` ranks."""
        with self._lock:
            self.calls += 1
            self.tasks += ranks

    def add(self, group: str, rank: int, name: str, start: float, end: float) -> None:
        with self._lock:
            self.spans.append(Span(group, rank, name, start, end))

    def busy(self, start: float, end: float) -> dict[str, float]:
        """Each group's busy fraction in [start, end): per rank the union of its calls' spans clipped to the
        window, over the window's length, averaged over the group's ranks."""
        width = end - start
        per_rank: dict[tuple[str, int], list[tuple[float, float]]] = {}
        with self._lock:
            spans = [s for s in self.spans if s.group != COORDINATOR and s.end > start and s.start < end]
        for s in spans:
            per_rank.setdefault((s.group, s.rank), []).append((max(s.start, start), min(s.end, end)))
        fractions: dict[str, list[float]] = {}
        for (group, _), intervals in per_rank.items():
            fractions.setdefault(group, []).append(union_length(intervals) / width if width > 0 else 0.0)
        return {group: sum(v) / len(v) for group, v in fractions.items()}

    def chrome_trace(self) -> dict:
        """The spans as Chrome trace events: one process per group (the coordinator first), one thread per rank."""
        with self._lock:
            spans = sorted(self.spans, key=lambda s: s.start)
        groups = [COORDINATOR] + sorted({s.group for s in spans} - {COORDINATOR})
        events = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": g}} for pid, g in enumerate(groups)]
        events += [{"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}
                   for pid in range(len(groups))]
        pid = {g: i for i, g in enumerate(groups)}
        for s in spans:
            events.append({"ph": "X", "name": s.name, "cat": s.group, "pid": pid[s.group], "tid": s.rank,
                           "ts": s.start * 1e6, "dur": (s.end - s.start) * 1e6})
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.chrome_trace()))
        tmp.replace(path)
        return path


def union_length(intervals: list[tuple[float, float]]) -> float:
    """The length covered by the union of [a, b) intervals (overlapping calls of one rank count once)."""
    total, reach = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= reach:
            continue
        total += b - max(a, reach)
        reach = b
    return total
