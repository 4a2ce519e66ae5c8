"""ppo.schedule=colocated through the CLI on Ray (#30 item 3): every role on the policy's bundles, and
the timeline of the run shows one group at work at a time, moves included; each step logs the peak
state bytes on a device (one role's) beside every role's together, and the seconds of the moves."""

from __future__ import annotations

import json

import pytest

from bench.chaos import ppo_args, records, start
from tests.launcher.faults import finish

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
STEPS = 4


def test_one_group_works_at_a_time_and_the_device_holds_one_roles_state(models, tmp_path):
    finish(start(ppo_args(models, tmp_path, "ppo.schedule=colocated", steps=STEPS), tmp_path / "log"), tmp_path / "log")
    run = tmp_path / "demo" / "ppo"
    steps = [r for r in records(tmp_path / "demo") if "time/train" in r]
    assert len(steps) == STEPS
    for r in steps[1:]:  # the first step's peak is the start's, when every group has loaded its weights
        assert r["memory/device_peak_bytes"] == r["memory/largest_role_bytes"] < 0.6 * r["memory/all_roles_bytes"]
    assert all(r["time/moves"] > 0 for r in steps)
    trace = json.loads((run / "timeline.json").read_text())["traceEvents"]
    groups = {e["pid"]: e["args"]["name"] for e in trace if e["name"] == "process_name"}
    spans = sorted((e["ts"], e["ts"] + e["dur"], groups[e["pid"]], e["name"]) for e in trace
                   if e["ph"] == "X" and groups[e["pid"]] != "coordinator")
    assert {g for _, _, g, _ in spans} == {"policy", "reference", "reward", "critic"}
    assert {"to_host", "to_device"} <= {name for _, _, _, name in spans}
    # groups leave the device together (at the start, all but one); anything else runs alone
    overlaps = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1] and a[2] != b[2]
                and not a[3] == b[3] == "to_host"]
    assert not overlaps, overlaps[:3]
