"""Ray nodes on one machine (`ray start` daemons with distinct node resources). Two nodes, the job handed
in with `ray job submit` as a user would: an SFT group of 2 ranks placed STRICT_SPREAD must land one rank
per node, form its gloo group across them, and train (held-out loss falls, model written). Three nodes,
one of them lost in the middle of PPO (#31 item 1): the stage places its groups on the nodes left when
they fit, and otherwise waits for capacity, stops, and resumes once a node joins — bit-exact either way."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.chaos import alive, last_step, ppo_args, rank_pids, records, start
from parallel import checkpoint as ck
from tests.launcher.faults import assert_same_run, finish, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
BIN = Path(sys.executable).parent


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before in this session: the OS may give a just-released
    port again, and two of one node's components on one port stop `ray start`."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def own_ports() -> list[str]:
    """Free ports for a node's agents: the defaults are fixed numbers, which another Ray cluster on this
    machine (the test session's own) already holds, and a raylet that cannot bind them dies."""
    flags = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "node-manager-port", "object-manager-port")
    return [f"--{flag}={free_port()}" for flag in flags]


def ray_start(env: dict, *args: str) -> int:
    """`ray start` in its own session; returns its process group (all daemons it spawns)."""
    proc = subprocess.Popen([str(BIN / "ray"), "start", *args, *own_ports()], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        stop(proc.pid)  # a failed start can leave gcs_server running in its process group
        pytest.fail(f"ray start failed:\n{out[-3000:]}")
    return proc.pid


def running_in(pgid: int) -> bool:
    """Whether a process of the group still runs (a zombie waiting for PID 1 to reap it does not)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, _, group = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def stop(pgid: int) -> None:
    """SIGTERM the group, SIGKILL what is left after 5 s; returns as soon as none of it runs."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while running_in(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not running_in(pgid):
            return


@contextmanager
def ray_nodes(*head: str):
    """A head node started with `head` flags; yields (env, add_node(*flags) → its process group).
    Token authentication, as slurm/instructrl.sbatch runs it: one token for the daemons, the job CLI
    and the driver. Every node is stopped at the end."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    gcs, groups = free_port(), []

    def add_node(*flags: str) -> int:
        groups.append(ray_start(env, f"--address=127.0.0.1:{gcs}", *flags))
        return groups[-1]

    try:
        groups.append(ray_start(env, "--head", f"--port={gcs}", f"--ray-client-server-port={free_port()}", *head))
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}, add_node
    finally:
        for pgid in reversed(groups):
            stop(pgid)
        # `ray start --head` records its address for later `ray.init()` calls; a killed head leaves it behind.
        record = Path("/tmp/ray/ray_current_cluster")
        if record.exists() and record.read_text().strip().endswith(f":{gcs}"):
            record.unlink()


@pytest.fixture
def two_node_cluster(tmp_path):
    dashboard = free_port()
    with ray_nodes("--num-cpus=2", '--resources={"node_a": 1}', "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={dashboard}") as (env, add_node):
        add_node("--num-cpus=2", '--resources={"node_b": 1}')
        env.pop("RAY_ADDRESS")  # the job goes through the dashboard
        yield env, f"http://127.0.0.1:{dashboard}"


def test_group_spreads_across_two_nodes_via_ray_job_submit(two_node_cluster, tmp_path):
    env, dashboard = two_node_cluster
    cmd = [str(BIN / "ray"), "job", "submit", f"--address={dashboard}", "--",
           "instructrl", "sft", "--config", "demo", f"run.out_dir={tmp_path}", "run.name=two-nodes",
           "task.n_sft=600", "task.n_eval=20", "sft.epochs=1", "task.rm_candidates=synthetic",
           "sft.group.ranks=2", "sft.group.strategy=STRICT_SPREAD"]
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    sft = tmp_path / "two-nodes" / "sft"
    ranks = json.loads((sft / "placement.json").read_text())["policy"]
    assert len(ranks) == 2 and len({r["node_id"] for r in ranks}) == 2, ranks  # one rank per node
    evals = [m["eval/loss"] for m in map(json.loads, (sft / "metrics.jsonl").read_text().splitlines())
             if "eval/loss" in m]
    assert evals[-1] < 0.8 * evals[0], evals  # the two-node data-parallel group trains
    assert (sft / "config.json").exists()


# ------------------------------------------------------------------ a lost node (#31 item 1)
# A head node that runs only the driver, node B with 4 CPUs and node C with 2, each its own `ray start`
# (its raylet and every rank it hosts in one process group). The policy has two data-parallel ranks
# placed SPREAD, so one of them lands on C; losing C leaves B. (Quarter CPUs for the other roles: the
# reference run's local cluster has this machine's 2.)
SPREAD = ["ppo.policy.group.ranks=2", "ppo.policy.group.strategy=SPREAD",
          *(f"ppo.{role}.group.cpus_per_rank=0.25" for role in ("critic", "reward", "reference"))]
TOO_BIG_FOR_B = [f"ppo.{role}.group.cpus_per_rank=1" for role in ("policy", "critic", "reward", "reference")]


@pytest.fixture
def three_nodes(tmp_path):
    """(driver env, start_node(name, cpus) → its process group, node C's process group)."""
    with ray_nodes("--num-cpus=0", "--include-dashboard=false") as (env, add_node):
        def start_node(name: str, cpus: int) -> int:
            return add_node(f"--num-cpus={cpus}", f'--resources={{"{name}": 1}}')

        start_node("node_b", 4)
        yield env, start_node, start_node("node_c", 2)


@pytest.fixture(scope="module")
def spread_reference(models, tmp_path_factory):
    """The uninterrupted run of the same layout, on a local cluster of its own."""
    out = tmp_path_factory.mktemp("spread-reference")
    finish(start(ppo_args(models, out, *SPREAD), out / "log"), out / "log")
    return out / "demo"


def session(sid: int) -> list[int]:
    """Every process of a session: a node's `ray start` and all it spawned (Ray gives each worker
    process its own process group, but they stay in the node's session)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    members.append(int(entry))
            except ProcessLookupError:
                pass
    return members


def kill_node(sid: int, run: Path) -> list[int]:
    """SIGKILL node C's raylet and every process on it; returns the run's ranks that were there."""
    on_node = [pid for pids in rank_pids(run).values() for pid in pids if pid in session(sid)]
    assert on_node, f"no rank of the run is on node C: {rank_pids(run)}"
    for pid in session(sid):
        os.kill(pid, signal.SIGKILL)
    return on_node


def test_a_lost_node_is_replaced_on_the_nodes_left_and_the_run_ends_exact(three_nodes, spread_reference, models,
                                                                          tmp_path):
    """Node C (raylet and ranks) is SIGKILLed after step 4: the driver loses a policy rank, the groups
    are placed again on B, which fits them, and the run finishes as the uninterrupted one did."""
    env, _, node_c = three_nodes
    log, run = tmp_path / "log", tmp_path / "demo"
    proc = start(ppo_args(models, tmp_path, *SPREAD), log, env)
    wait_for(lambda: last_step(run) >= 4 and rank_pids(run), proc, log, timeout_s=300)
    lost = kill_node(node_c, run)
    text = finish(proc, log)
    assert not any(alive(pid) for pid in lost)  # the node's ranks went with it
    restarts = [r for r in records(run) if r.get("event") == "restart"]
    assert len(restarts) == 1 and "demo-policy" in restarts[0]["reason"], text[-3000:]
    ranks = [r for group in json.loads((run / "ppo" / "placement.json").read_text()).values() for r in group]
    assert len({r["node_id"] for r in ranks}) == 1, ranks  # all on B now
    assert_same_run(run, spread_reference)


def test_a_lost_node_that_leaves_too_little_waits_then_stops_and_resumes_when_capacity_is_back(
        three_nodes, spread_reference, models, tmp_path):
    """With a CPU a rank the groups need 5 CPUs: B (4) and C (2) fit them, B alone does not. Node C is
    lost: the stage says it waits for capacity, then stops with an error naming the shortfall and the
    resume; its checkpoints are whole. A new node joins, and run.resume=true ends bit-exact."""
    env, start_node, node_c = three_nodes
    log, run = tmp_path / "log", tmp_path / "demo"
    args = ppo_args(models, tmp_path, *SPREAD, *TOO_BIG_FOR_B, "run.capacity_wait_s=20")
    proc = start(args, log, env)
    wait_for(lambda: last_step(run) >= 4 and rank_pids(run), proc, log, timeout_s=300)
    kill_node(node_c, run)
    assert proc.wait(timeout=240) == 2, log.read_text()[-3000:]
    text = log.read_text()
    assert "after 1 node(s) were lost: waiting up to" in text, text[-3000:]
    assert "the groups need 5 CPUs but the Ray cluster has 4" in text, text[-3000:]
    assert "run.resume=true goes on from the newest" in text, text[-3000:]
    saved = ck.latest(run / "ppo")
    assert saved is not None and ck.verify(saved) is None
    start_node("node_d", 2)
    log2 = tmp_path / "log2"
    text = finish(start([*args, "run.resume=true"], log2, env), log2)
    assert f"resumed from {saved} at step {ck.step_of(saved)}" in text
    assert_same_run(run, spread_reference)


def test_the_drivers_calls_per_phase_do_not_grow_with_the_ranks(reference, spread_reference):
    """#30 item 4: the same run with the policy at one rank and at two: in every phase of every step the
    driver makes the same group calls (round trips), and only the rank calls they fan out into grow."""
    phases = ("generate", "score", "train", "sync")
    one, two = ([r for r in records(run) if "time/train" in r] for run in (reference, spread_reference))
    assert len(one) == len(two) > 0
    for a, b in zip(one, two, strict=True):
        for phase in phases:
            assert a[f"driver/calls/{phase}"] == b[f"driver/calls/{phase}"] > 0, (phase, a["step"])
            assert a[f"driver/rank_calls/{phase}"] == a[f"driver/calls/{phase}"]  # every group at one rank
        # the policy's calls (generation, its log-probs, its updates, the sync) reach both its ranks
        assert b["driver/rank_calls/generate"] == 2 and b["driver/rank_calls/sync"] == 2
        assert sum(b[f"driver/rank_calls/{p}"] for p in phases) > sum(a[f"driver/rank_calls/{p}"] for p in phases)
