"""What the fault tests add to bench/chaos.py's run helpers: waiting on a run under pytest, and the
bit-for-bit comparison with an uninterrupted run as an assertion (docs/reliability.md, the fault tests)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from bench.chaos import differences


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout_s: float = 240, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the run ended early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(poll_s)
    proc.kill()
    pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")


def finish(proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> str:
    proc.wait(timeout=timeout_s)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def assert_same_run(run: Path, reference: Path, steps: int = 12) -> None:
    """Every training metric of every step equal, each step logged once, and the same final weights."""
    assert not (diff := differences(run, reference, steps)), diff[:20]
