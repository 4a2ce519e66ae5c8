"""The chaos soak's short form (#31 item 2; the long one is bench/chaos.py, its figures in
docs/reliability.md): a seeded schedule of five faults over the 12-step PPO run of the fault tests —
one of each kind (a rank killed, a rank frozen, the newest checkpoint corrupted and a rank killed,
SIGTERM to the driver, the driver SIGKILLed), one of them followed by a second fault while its
recovery runs — and the run still ends as the uninterrupted one did, bit for bit."""

from __future__ import annotations

import pytest

from bench.chaos import Soak, ppo_args, schedule
from tests.launcher.faults import assert_same_run

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_schedule_is_seeded_and_covers_every_kind_and_role():
    faults = schedule(12, 5, seed=3)
    assert faults == schedule(12, 5, seed=3) and faults != schedule(12, 5, seed=4)
    assert sorted(f.kind for f in faults) == ["corrupt", "driver_kill", "freeze", "kill", "sigterm"]
    assert len({f.step for f in faults}) == 5 and all(2 <= f.step <= 10 for f in faults)
    assert sum(f.then is not None for f in faults) == 1
    long = schedule(120, 24, seed=0)
    assert {f.role for f in long} == {"policy", "critic", "reward", "reference"}
    assert sum(f.then is not None for f in long) == 8


def test_a_short_chaos_soak_ends_bit_exact(models, reference, tmp_path):
    faults = schedule(12, 5, seed=0)
    # SIGTERM, the driver killed, a reference rank frozen and a rank killed while the groups come
    # back, the newest checkpoint corrupted and a reward rank killed, a reward rank killed
    assert [(f.kind, f.then) for f in faults] == [("sigterm", None), ("driver_kill", None), ("freeze", "kill"),
                                                  ("corrupt", None), ("kill", None)]
    soak = Soak(ppo_args(models, tmp_path, "run.max_restarts=100", "run.call_timeout_s=10"), tmp_path / "demo",
                tmp_path / "log", timeout_s=300)
    report = soak.go(faults, seed=0)
    assert_same_run(tmp_path / "demo", reference)
    assert report.restarts == 4 and report.driver_restarts == 2 and report.steps_recomputed > 0, report
    text = (tmp_path / "log").read_text()
    assert "no answer within 10 s (run.call_timeout_s)" in text  # the frozen rank
    assert "does not match its checksum" in text  # the corrupted checkpoint, skipped for the one before
