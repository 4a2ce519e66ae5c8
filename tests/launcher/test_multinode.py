"""Two Ray nodes on one machine (two `ray start` daemons with distinct node resources), the job handed
in with `ray job submit` as a user would: an SFT group of 2 ranks placed STRICT_SPREAD must land one rank
per node, form its gloo group across them, and train (held-out loss falls, model written)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def stop(pgid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(wait)


@pytest.fixture
def two_node_cluster(tmp_path):
    # Token authentication, as slurm/instructrl.sbatch runs it: one token for the daemons, the job
    # CLI and the driver.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    groups = []
    try:
        groups.append(ray_start(env, "--head", f"--port={gcs}", "--num-cpus=2", '--resources={"node_a": 1}',
                                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                                f"--ray-client-server-port={free_port()}"))
        groups.append(ray_start(env, f"--address=127.0.0.1:{gcs}", "--num-cpus=2", '--resources={"node_b": 1}'))
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        for pgid in reversed(groups):
            stop(pgid)
        # `ray start --head` records its address for later `ray.init()` calls; a killed head leaves it behind.
        record = Path("/tmp/ray/ray_current_cluster")
        if record.exists() and record.read_text().strip().endswith(f":{gcs}"):
            record.unlink()


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
