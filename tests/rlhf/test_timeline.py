"""The timeline's arithmetic by hand: busy fractions over a step window, overlapping calls counted once,
and the Chrome trace a browser viewer opens."""

from __future__ import annotations

import json

import pytest

from rlhf.coordinator import PhaseTimer
from rlhf.timeline import COORDINATOR, Timeline, union_length


def test_union_length_counts_overlaps_once():
    assert union_length([(0, 2), (1, 3), (5, 6)]) == 4
    assert union_length([(0, 10), (2, 3)]) == 10 and union_length([]) == 0


def test_busy_fractions_by_hand():
    t = Timeline()
    t.add(COORDINATOR, 0, "generate", 100.0, 110.0)  # the loop's own phases are not a group's work
    t.add("policy", 0, "generate", 100.0, 104.0)
    t.add("policy", 1, "generate", 100.0, 102.0)
    t.add("reward", 0, "score", 103.0, 105.0)
    t.add("reward", 0, "score", 104.0, 106.0)  # overlaps the last: 103-106 is 3 s
    t.add("policy", 0, "train", 108.0, 112.0)  # 2 s of it inside the window
    busy = t.busy(100.0, 110.0)
    # policy: rank 0 (4 + 2) / 10, rank 1 2 / 10 → mean 0.4; reward 3 / 10
    assert busy == pytest.approx({"policy": 0.4, "reward": 0.3})


def test_chrome_trace_has_one_process_per_group_and_a_thread_per_rank(tmp_path):
    t = Timeline(max_spans=3)
    t.add("policy", 1, "drop me", 0.0, 0.5)  # the oldest leaves when a fourth comes
    t.add(COORDINATOR, 0, "generate", 1.0, 2.0)
    t.add("policy", 1, "generate", 1.0, 1.5)
    t.add("critic", 0, "values", 1.6, 1.9)
    trace = json.loads(t.write(tmp_path / "timeline.json").read_text())
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert names == {0: "coordinator", 1: "critic", 2: "policy"}
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [(names[e["pid"]], e["tid"], e["name"]) for e in spans] == [
        ("coordinator", 0, "generate"), ("policy", 1, "generate"), ("critic", 0, "values")]
    assert spans[1]["ts"] == 1.0e6 and spans[1]["dur"] == pytest.approx(0.5e6)


def test_phase_timer_counts_the_drivers_calls_per_phase():
    t = Timeline()
    timer = PhaseTimer(t)
    with timer("generate"):
        t.called(4)  # one group call to 4 ranks
    with timer("score"):
        t.called(4)
        t.called(2)
    with timer("generate"):  # a phase entered twice in a step adds up
        t.called(4)
    d = timer.driver
    assert (d["driver/calls/generate"], d["driver/rank_calls/generate"]) == (2, 8)
    assert (d["driver/calls/score"], d["driver/rank_calls/score"]) == (2, 6)
    assert d["time/driver_cpu/generate"] >= 0 and set(timer.seconds) == {"generate", "score"}
    assert "driver/calls/generate" not in PhaseTimer(None).driver  # no timeline: no counts, CPU time only
