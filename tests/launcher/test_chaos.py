"""The chaos soak's short form (#31 item 2; the long one is bench/chaos.py, its figures in
docs/reliability.md): a seeded schedule of five faults over the 12-step PPO run of the fault tests —
one of each kind (a rank killed, a rank frozen, a rank killed and the checkpoint its restart loads
corrupted, SIGTERM to the driver, the driver SIGKILLed), one of them followed by a second fault while
its recovery runs, a rank of every role lost — and the run still ends as the uninterrupted one did,
bit for bit."""

from __future__ import annotations

import pytest

from bench.chaos import Soak, ppo_args, records, schedule
from parallel import checkpoint as ck
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


def test_records_read_mid_write_leave_the_unfinished_line_for_the_next_read(tmp_path):
    """The fault tests poll a live run's metrics; a record caught half written is not yet a record."""
    (tmp_path / "ppo").mkdir()
    metrics = tmp_path / "ppo" / "metrics.jsonl"
    metrics.write_text('{"step": 1, "reward/score": 0.5}\n{"step": 2, "reward/sc')
    assert records(tmp_path) == [{"step": 1, "reward/score": 0.5}]
    metrics.write_text('{"step": 1, "reward/score": 0.5}\n{"step": 2, "reward/score": 0.7}\n')
    assert [r["step"] for r in records(tmp_path)] == [1, 2]


def test_a_short_chaos_soak_ends_bit_exact(models, reference, tmp_path):
    """Every role loses a rank; the restarts name the group, the rank and the cause."""
    faults = schedule(12, 5, seed=7)
    assert [(f.step, f.kind, f.role, f.then and f"{f.then} {f.then_role}") for f in faults] == [
        (2, "kill", "critic", None), (4, "driver_kill", "policy", None), (5, "freeze", "reference", "kill reward"),
        (7, "sigterm", "reward", None), (10, "corrupt", "policy", None)]
    run = tmp_path / "demo"
    soak = Soak(ppo_args(models, tmp_path, "run.max_restarts=100", "run.call_timeout_s=10"), run, tmp_path / "log",
                timeout_s=300)
    report = soak.go(faults, seed=7)
    assert_same_run(run, reference)
    assert report.driver_restarts == 2 and report.steps_recomputed > 0, report
    reasons = [r["reason"] for r in records(run) if r.get("event") == "restart"]
    expected = [("critic", "died"), ("reference", "no answer within 10 s (run.call_timeout_s)"), ("reward", "died"),
                ("policy", "died")]
    assert len(reasons) == len(expected), reasons
    for reason, (role, cause) in zip(reasons, expected, strict=True):
        assert f"demo-{role} rank 0" in reason and cause in reason, reason
    assert "does not match its checksum" in (tmp_path / "log").read_text()  # the corrupted checkpoint, skipped
    assert [p.name for p in ck.list_checkpoints(run / "ppo")] == ["checkpoint-12", "checkpoint-10"]  # save_total_limit
