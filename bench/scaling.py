"""A scaling simulation (#30 item 4): PPO on a Ray cluster of several simulated nodes on this machine
(`ray.cluster_utils.Cluster`), every group — policy, critic, reward, reference — at the same data-parallel
degree and spread over the nodes, with tiny models and a constant number of rollouts per rank (weak
scaling). Per step it reads the driver's own figures from the run's metrics (rlhf/coordinator.py
PhaseTimer): each phase's wall time, the driver's group calls (round trips), the rank calls they fan out
into, and the driver's CPU time.

    python bench/scaling.py --dp 1 2 4 8 --nodes 4 --out runs/scaling

writes <out>/scaling.json, <out>/scaling.md (the table) and <out>/scaling.png (the plot). Every rank here
shares the same two cores, so step times grow with the rank count for that reason alone: what this
measures is the coordinator's share, and that its calls per phase do not grow with the ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos import ppo_args, records, train_models  # noqa: E402

ROLES = ("policy", "critic", "reward", "reference")
PHASES = ("generate", "score", "train", "sync")
ROLLOUTS_PER_RANK = 8


def layout(dp: int, cpus_per_rank: float) -> list[str]:
    """Every role at `dp` ranks, spread over the nodes; `ROLLOUTS_PER_RANK` rollouts per policy rank."""
    groups = [f"ppo.{role}.group.{key}={value}" for role in ROLES
              for key, value in (("ranks", dp), ("strategy", "SPREAD"), ("cpus_per_rank", cpus_per_rank))]
    return [*groups, f"ppo.prompts_per_step={ROLLOUTS_PER_RANK * dp}", "ppo.samples_per_prompt=2",
            "ppo.minibatches=1", "ppo.ppo_epochs=1", "ppo.save_every=0"]


def per_step(rows: list[dict], warmup: int) -> dict[str, float]:
    """The median over the steps after the first `warmup` of each phase's figures."""
    steps = [r for r in rows if "time/train" in r][warmup:]
    if not steps:
        raise RuntimeError("no PPO step after the warm-up was logged")
    keys = [f"{k}/{p}" for k in ("time", "time/driver_cpu", "driver/calls", "driver/rank_calls") for p in PHASES]
    out = {k: statistics.median(r.get(k, 0.0) for r in steps) for k in keys}
    out["time/step"] = statistics.median(sum(r[f"time/{p}"] for p in PHASES) for r in steps)
    out["perf/samples_per_s"] = statistics.median(r["perf/samples_per_s"] for r in steps)
    return out


def run_one(cluster_address: str, models: Path, out: Path, dp: int, steps: int, cpus_per_rank: float) -> dict:
    run = out / f"dp{dp}"
    args = ppo_args(models, out, f"run.name=dp{dp}", f"run.ray_address={cluster_address}", "run.overwrite=true",
                    "ppo.eval_every=1000", *layout(dp, cpus_per_rank), steps=steps)
    log = out / f"dp{dp}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "RAY_ADDRESS")}
    env |= {"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    began = time.time()
    with open(log, "w") as f:
        code = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=3600).returncode
    if code:
        raise RuntimeError(f"DP={dp}: exit {code}; see {log}")
    nodes = set(placement_nodes(run))
    return {"dp": dp, "ranks": dp * len(ROLES), "rollouts_per_step": ROLLOUTS_PER_RANK * dp,
            "nodes_used": len(nodes), "wall_s": time.time() - began, **per_step(records(run), warmup=1)}


def placement_nodes(run: Path) -> list:
    """The nodes the run's ranks were placed on (ppo/placement.json)."""
    placed = json.loads((run / "ppo" / "placement.json").read_text())
    return [r["node_id"] for ranks in placed.values() for r in ranks]


def table(rows: list[dict]) -> str:
    head = ("| DP | ranks (4 groups) | nodes used | rollouts / step | step (s) | generate · score · train · sync (s) "
            "| driver CPU per step (s) | group calls per step (generate · score · train · sync) "
            "| rank calls per step |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        phases = " · ".join(f"{r[f'time/{p}']:.2f}" for p in PHASES)
        calls = " · ".join(f"{r[f'driver/calls/{p}']:.0f}" for p in PHASES)
        cpu = sum(r[f"time/driver_cpu/{p}"] for p in PHASES)
        rank_calls = sum(r[f"driver/rank_calls/{p}"] for p in PHASES)
        lines.append(f"| {r['dp']} | {r['ranks']} | {r['nodes_used']} | {r['rollouts_per_step']} | "
                     f"{r['time/step']:.2f} | {phases} | {cpu:.3f} | {calls} | {rank_calls:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dps = [r["dp"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bottom = [0.0] * len(rows)
    for p in PHASES:
        values = [r[f"time/{p}"] for r in rows]
        left.bar([str(d) for d in dps], values, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    left.set(xlabel="data-parallel ranks per group", ylabel="seconds per step (median)",
             title="Step time by phase (all ranks share 2 cores)")
    left.legend()
    for key, style, label in (("calls", "o-", "group calls (round trips)"), ("rank_calls", "s--", "rank calls")):
        right.plot(dps, [sum(r[f"driver/{key}/{p}"] for p in PHASES) for r in rows], style, label=label)
    right.set(xscale="log", xlabel="data-parallel ranks per group", ylabel="per step",
              title="The driver's calls per step")
    right.minorticks_off()
    right.set_xticks(dps, [str(d) for d in dps])
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dp", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--nodes", type=int, default=4, help="simulated worker nodes (plus a head with no CPUs)")
    parser.add_argument("--steps", type=int, default=4, help="PPO steps per layout; the first is not counted")
    parser.add_argument("--cpus-per-rank", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=Path("runs/scaling"))
    parser.add_argument("--plot", type=Path, default=None, help="also write the plot here (docs/scaling.png)")
    args = parser.parse_args()
    # The cluster's daemons and the PPO driver share one token, as slurm/instructrl.sbatch runs them.
    os.environ |= {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    from ray.cluster_utils import Cluster

    args.out.mkdir(parents=True, exist_ok=True)
    models = train_models(args.out / "models")
    per_node = max(1.0, max(args.dp) * len(ROLES) * args.cpus_per_rank / args.nodes)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    rows = []
    try:
        for i in range(args.nodes):
            cluster.add_node(num_cpus=per_node, resources={f"node_{i}": 1})
        cluster.wait_for_nodes()
        for dp in args.dp:
            rows.append(run_one(cluster.address, models, args.out, dp, args.steps, args.cpus_per_rank))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        cluster.shutdown()
    (args.out / "scaling.json").write_text(json.dumps(rows, indent=1))
    (args.out / "scaling.md").write_text(table(rows) + "\n")
    for path in (args.out / "scaling.png", args.plot):
        if path is not None:
            plot(rows, path)
    print(table(rows))


if __name__ == "__main__":
    main()
