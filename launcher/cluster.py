"""Ray cluster bootstrap and placement groups. With launcher/worker_group.py, the only Ray code.

A job joins the cluster named by --ray-address / RAY_ADDRESS, or starts a local one. Either way Ray
runs with token authentication (RAY_AUTH_MODE=token): Ray 2.60's servers listen on every interface
and turn a loopback node address into the machine's own, so the token is what stops anyone who can
reach the node from running code on it. A local cluster gets a fresh random token for this process
(its ranks inherit it); joining a cluster needs the cluster's token (docs/reliability.md, Network).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time

from launcher.presets import ConfigError
from launcher.signals import STOP

log = logging.getLogger("instructrl")
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def _auth_env(joining: bool) -> None:
    """Token authentication unless the user set RAY_AUTH_MODE; a new local cluster's own token."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    if os.environ["RAY_AUTH_MODE"] == "token" and not joining and not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if "ray._raylet" in sys.modules:  # Ray reads its config once; re-read it after the change
        sys.modules["ray._raylet"].Config.initialize("")


def has_token() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.exists(path)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Connect to (or start) Ray; returns the cluster's total resources.

    Workers' output reaches the driver's terminal only with INSTRUCTRL_VERBOSE=1 (`--verbose`): the
    ranks write it to their log files under the run directory (launcher/worker_group.py `Rank`).
    """
    verbose = os.environ.get("INSTRUCTRL_VERBOSE") == "1"
    address = address or os.environ.get("RAY_ADDRESS")
    _auth_env(joining=bool(address))
    import ray

    if not ray.is_initialized():
        if address:
            if os.environ["RAY_AUTH_MODE"] == "token" and not has_token():
                raise ConfigError(f"run.ray_address={address}: joining a Ray cluster needs its authentication "
                                  f"token: export RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as the cluster was "
                                  f"started with; docs/reliability.md (Network) says how")
            ray.init(address=address, log_to_driver=verbose, logging_level="INFO" if verbose else "WARNING")
        else:
            # "local": a fresh cluster for this job; without it Ray would join whatever cluster a past
            # `ray start` on this machine left recorded (even a dead one), which is not what was asked.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=verbose,
                     logging_level="INFO" if verbose else "WARNING")
            global STARTED_LOCAL
            STARTED_LOCAL = True
        STOP.reclaim()
    return ray.cluster_resources()


def rank_env() -> dict[str, str]:
    """Environment of every rank: on a cluster this process started (one machine), the groups'
    rendezvous and gloo/NCCL traffic stay on loopback instead of listening on every interface."""
    return dict(LOOPBACK_ENV) if STARTED_LOCAL else {}


LOOPBACK_ENV = {"INSTRUCTRL_MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
STARTED_LOCAL = False


def shortfall(requests: dict[str, tuple[int, float, float]], nodes: list[dict]) -> str | None:
    """Why {name: (bundles, cpus, gpus per bundle)} cannot fit on nodes (their Ray resources) at all — in
    total, or one bundle on the largest node — or None when it may."""
    have = {k: sum(n.get(k, 0) for n in nodes) for k in ("CPU", "GPU")}
    need = {"CPU": sum(b * c for b, c, _ in requests.values()), "GPU": sum(b * g for b, _, g in requests.values())}
    largest = {k: max((n.get(k, 0) for n in nodes), default=0) for k in ("CPU", "GPU")}
    detail = ", ".join(f"{name}: {b} × ({c:g} CPU, {g:g} GPU)" for name, (b, c, g) in requests.items())
    for k in ("CPU", "GPU"):
        if need[k] > have[k] + 1e-9:
            return (f"the groups need {need[k]:g} {k}s but the Ray cluster has {have[k]:g} on {len(nodes)} "
                    f"node(s) [{detail}]")
        for name, (_, c, g) in requests.items():
            if (c if k == "CPU" else g) > largest[k] + 1e-9:
                return f"{name}: one rank needs {c if k == 'CPU' else g:g} {k}s but the largest node has {largest[k]:g}"
    return None


def check_capacity(requests: dict[str, tuple[int, float, float]], wait_s: float = 0.0, poll_s: float = 1.0) -> None:
    """Fail at once, naming the groups, when the requests cannot fit the cluster (shortfall) — rather
    than after a placement timeout. On a cluster that has lost nodes (a restart after a node went), wait
    up to wait_s for capacity to come back, saying so, before failing: the stage's checkpoints stay."""
    import ray

    deadline, said = time.monotonic() + wait_s, None
    while True:
        nodes = ray.nodes()
        short = shortfall(requests, [n["Resources"] for n in nodes if n["Alive"]])
        lost = sum(not n["Alive"] for n in nodes)
        if short is None:
            if said is not None:
                log.warning("the cluster fits the groups again: placing them")
            return
        left = deadline - time.monotonic()
        if not lost:
            raise ConfigError(short)
        if left <= 0:
            raise ConfigError(f"{short}, after {lost} node(s) were lost; waited {wait_s:g} s (run.capacity_wait_s) "
                              f"for capacity. {KEPT}")
        if said is None or time.monotonic() - said >= 30:
            log.warning("%s, after %d node(s) were lost: waiting up to %.0f s more for capacity (run.capacity_wait_s)",
                        short, lost, left)
            said = time.monotonic()
        time.sleep(min(poll_s, left))


KEPT = "The run's checkpoints are kept: once the cluster has the capacity, run.resume=true goes on from the newest"


def place(requests: dict[str, tuple[int, float, float, str]], wait_s: float = 0.0, try_s: float = 30.0) -> dict:
    """A ready placement group per {name: (bundles, cpus, gpus per bundle, strategy)}. The cluster can
    change while they are placed: Ray takes a while to declare a lost node dead, and until then counts
    its resources. A placement not ready within try_s is withdrawn and the capacity checked again
    (waiting up to wait_s from when a shortfall is seen, as check_capacity does); once placing has
    taken wait_s (at least 60 s), a placement that is still not ready is an error."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    deadline = time.monotonic() + max(60.0, wait_s)
    shapes = {name: (b, c, g) for name, (b, c, g, _) in requests.items()}
    while True:
        check_capacity(shapes, wait_s)
        pgs = {name: placement_group([{"CPU": c, **({"GPU": g} if g else {})} for _ in range(b)], strategy=s)
               for name, (b, c, g, s) in requests.items()}
        ready, _ = ray.wait([pg.ready() for pg in pgs.values()], num_returns=len(pgs), timeout=try_s)
        if len(ready) == len(pgs):
            return pgs
        for pg in pgs.values():
            remove_placement_group(pg)
        if time.monotonic() >= deadline:
            detail = ", ".join(f"{name}: {b} × ({c:g} CPU, {g:g} GPU) {s}" for name, (b, c, g, s) in requests.items())
            raise ConfigError(f"cannot place the groups [{detail}] within {max(60.0, wait_s):g} s on a cluster with "
                              f"{ray.cluster_resources()} (free: {ray.available_resources()}). {KEPT}")


def release(pg) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(pg)


def shutdown_ray() -> None:
    import ray

    global STARTED_LOCAL
    if ray.is_initialized():
        ray.shutdown()
    STARTED_LOCAL = False
