"""Ray cluster bootstrap and placement groups. With launcher/worker_group.py, the only Ray code.

A job joins the cluster named by --ray-address / RAY_ADDRESS, or starts a local one.
"""

from __future__ import annotations

import os

import ray
from ray.util.placement_group import placement_group, remove_placement_group

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Connect to (or start) Ray; returns the cluster's total resources."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    return ray.cluster_resources()


def make_placement(bundles: int, cpus: float, gpus: float, strategy: str, timeout_s: float = 60.0):
    """A ready placement group of `bundles` × {CPU: cpus, GPU: gpus}; a clear error if it cannot fit."""
    shape = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    pg = placement_group([dict(shape) for _ in range(bundles)], strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise RuntimeError(f"cannot place {bundles} × {shape} with {strategy} on a cluster with "
                           f"{ray.cluster_resources()} (free: {ray.available_resources()})")
    return pg


def release(pg) -> None:
    remove_placement_group(pg)


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
