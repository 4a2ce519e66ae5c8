"""Progress: a terminal gets tqdm; a file or pipe gets whole lines, at most one per interval."""

from __future__ import annotations

import io
import sys

from rlhf.progress import LineProgress, progress


def test_lines_not_carriage_returns_when_not_a_terminal(monkeypatch):
    err = io.StringIO()  # not a TTY, like a Slurm output file
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("INSTRUCTRL_PROGRESS_INTERVAL", "3600")
    bar = progress(range(50), desc="ppo", unit="step")
    assert isinstance(bar, LineProgress)
    for _ in bar:
        bar.set_postfix(score="0.5")
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue() and len(lines) == 1  # the interval never passed: the closing line only
    assert lines[0].startswith("ppo: 100%") and "50/50" in lines[0] and "score=0.5" in lines[0]


def test_one_line_per_interval_and_resumed_counts(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = LineProgress(total=10, desc="sft", unit="step", initial=4, interval=0.0)
    for _ in range(6):
        bar.update(1)
    bar.close()  # already printed at 10/10: nothing more
    lines = err.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == [f"{n}/10" for n in range(5, 11)]
