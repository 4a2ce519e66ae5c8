"""ppo.schedule=async through the CLI on Ray (#30 item 2): the generator group samples the next step
while the policy trains (the timeline shows both at once), and the fault paths hold as for the
synchronous loop: a SIGTERM saves (with the sample drawn for the next step) and the resumed run,
which then loses a generator rank and restarts its groups, ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal

import pytest

from bench.chaos import alive, last_step, ppo_args, rank_pids, records, start
from parallel import checkpoint as ck
from tests.launcher.faults import assert_same_run, finish, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ASYNC = ["ppo.schedule=async"]
STEPS = 12  # the steps are short: most of each run is starting its groups


@pytest.fixture(scope="module")
def uninterrupted(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("async-reference")
    finish(start(ppo_args(models, out, *ASYNC, steps=STEPS), out / "log"), out / "log")
    return out / "demo"


def test_generation_overlaps_training_and_every_step_after_the_first_is_one_update_stale(uninterrupted):
    steps = [r for r in records(uninterrupted) if "time/train" in r]
    assert [r["rollout/staleness"] for r in steps] == [0.0] + [1.0] * (STEPS - 1)
    assert all("rollout/tis_weight_mean" in r for r in steps)
    trace = json.loads((uninterrupted / "ppo" / "timeline.json").read_text())["traceEvents"]
    groups = {e["pid"]: e["args"]["name"] for e in trace if e["name"] == "process_name"}
    spans = [(groups[e["pid"]], e["name"], e["ts"], e["ts"] + e["dur"]) for e in trace if e["ph"] == "X"]
    sampling = [(a, b) for g, name, a, b in spans if g == "generator" and name == "generate"]
    training = [(a, b) for g, name, a, b in spans if g in ("policy", "critic") and name in ("ppo_step", "value_step")]
    assert len(sampling) == STEPS  # every step's samples come from the generator, none from the policy
    # the policy samples for the evaluations alone (the first and the last step)
    assert len([1 for g, name, _, _ in spans if g == "policy" and name == "generate"]) == 2
    assert any(a < d and c < b for a, b in sampling for c, d in training), "no sample drawn during an update"


def test_sigterm_then_a_lost_generator_rank_end_as_the_uninterrupted_run(models, uninterrupted, tmp_path):
    log, run = tmp_path / "log", tmp_path / "demo"
    proc = start(ppo_args(models, tmp_path, *ASYNC, steps=STEPS), log)
    wait_for(lambda: last_step(run) >= 3, proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    saved = ck.latest(run / "ppo")
    assert (saved / "pending.pt").exists()  # the sample the next step drew before the save
    log2 = tmp_path / "log2"
    proc = start(ppo_args(models, tmp_path, *ASYNC, "run.resume=true", steps=STEPS), log2)
    first = wait_for(lambda: last_step(run) >= ck.step_of(saved) + 2 and rank_pids(run).get("generator"), proc, log2)
    os.kill(first[0], signal.SIGKILL)
    text = finish(proc, log2)
    assert not alive(first[0]) and "demo-generator" in text
    restarts = [r for r in records(run) if r.get("event") == "restart"]
    assert len(restarts) == 1 and "demo-generator" in restarts[0]["reason"], text[-3000:]
    assert_same_run(run, uninterrupted, steps=STEPS)
