"""Worker groups: N ranks of one role, each a process holding a shard of one model.

The coordinator calls a group with the worker method itself, never a string:
    group.map(PolicyWorker.logprobs, batch)   # split by data-parallel rank, run, gather
    group.broadcast(PolicyWorker.save, path)  # the same call on every rank
Both return a Handle at once, so independent groups work in parallel; `.get()` waits.
`RayGroup` places ranks as Ray actors; `LocalGroup` runs one rank in-process with the same API.
This file and launcher/cluster.py are the only places that import ray.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from launcher.cluster import place, rank_env, release
from models.errors import InputError
from parallel.mesh import GroupSpec, init_mesh
from rlhf.batching import part_bounds

# ---------------------------------------------------------------- batches across data-parallel ranks

def split_batch(batch: Any, n: int) -> list[Any]:
    """Split along dim 0 into n near-equal parts (the same bounds for tensors and lists, so a
    dataclass's fields stay row for row): tensors, lists, dicts and dataclasses of those."""
    if n == 1 or batch is None or isinstance(batch, int | float | str):
        return [batch] * n  # shared scalars (e.g. prompt_len) go to every rank as they are
    if isinstance(batch, torch.Tensor):
        return list(torch.tensor_split(batch, part_bounds(batch.shape[0], n)[1:-1]))
    if isinstance(batch, list | tuple):
        bounds = part_bounds(len(batch), n)
        return [batch[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if isinstance(batch, dict):
        parts = {k: split_batch(v, n) for k, v in batch.items()}
        return [{k: parts[k][i] for k in batch} for i in range(n)]
    if dataclasses.is_dataclass(batch):
        parts = {f.name: split_batch(getattr(batch, f.name), n) for f in dataclasses.fields(batch)}
        return [dataclasses.replace(batch, **{k: v[i] for k, v in parts.items()}) for i in range(n)]
    raise TypeError(f"cannot split a {type(batch).__name__} by data-parallel rank")


def merge_outputs(outputs: list[Any]) -> Any:
    """Inverse of split_batch for results: tensors concatenated, numbers averaged (metrics)."""
    first = outputs[0]
    if len(outputs) == 1 or first is None:
        return first
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, int | float):
        if all(o == first for o in outputs):
            return first  # e.g. a shared shape such as prompt_len
        return sum(outputs) / len(outputs)
    if isinstance(first, list):
        return [x for out in outputs for x in out]
    if isinstance(first, tuple):
        return tuple(merge_outputs(list(parts)) for parts in zip(*outputs, strict=True))
    if isinstance(first, dict):
        return {k: merge_outputs([o[k] for o in outputs]) for k in first}
    if dataclasses.is_dataclass(first):
        return dataclasses.replace(first, **{f.name: merge_outputs([getattr(o, f.name) for o in outputs])
                                             for f in dataclasses.fields(first)})
    raise TypeError(f"cannot merge outputs of type {type(first).__name__}")


class WorkerLost(RuntimeError):
    """A rank died (its process killed, or its node lost), or stopped answering: the groups must be
    torn down and started again. The message names the group, the rank and the call."""


PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


def _fetch(ref, label: str):
    """ray.get of one rank's result. A user's error from a rank (a failing reward function, a bad
    checkpoint) reaches the caller as itself, so the CLI prints its one paragraph; a dead rank, or a
    collective broken because a peer died, becomes WorkerLost."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, InputError):
            raise cause from None
        # NCCL raises DistBackendError (a DistError); gloo a plain RuntimeError naming the broken
        # connection: closed by a peer process that died, reset when the peer's whole node went.
        if isinstance(cause, dist.DistError) or any(m in str(cause) for m in PEER_GONE):
            raise WorkerLost(f"{label}: a collective failed, a peer rank is gone ({type(cause).__name__})") from e
        raise
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
        raise WorkerLost(f"{label}: the rank's process died ({type(e).__name__})") from e


def wait_all(refs: list, labels: list[str], timeout_s: float) -> list:
    """Every ref's result, failing as soon as one fails, or when some have not answered within
    timeout_s: a killed rank is noticed in about a second, a stalled one names itself."""
    import ray

    pending, done = dict(zip(refs, labels, strict=True)), {}
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise WorkerLost(f"{'; '.join(pending.values())}: no answer within {timeout_s:g} s (run.call_timeout_s); "
                             f"the rank is stalled or its node unreachable")
        for ref in ready:
            done[ref] = _fetch(ref, pending.pop(ref))
    return [done[ref] for ref in refs]


class Handle:
    """A pending group call; `get()` waits and returns the merged result (map) or one per rank (broadcast)."""

    def __init__(self, fetch: Callable[[], Any]):
        self._fetch, self._done, self._value = fetch, False, None

    def get(self) -> Any:
        if not self._done:
            self._value, self._done = self._fetch(), True
        return self._value


# ---------------------------------------------------------------- one rank

class Rank:
    """The body of every rank: joins the group's mesh, then hosts one worker object.

    With a log file, everything the process prints (Python and C++ alike: DeepSpeed's and Megatron's
    notices, warnings, NCCL/gloo messages) goes there instead of the driver's terminal, where N ranks
    would repeat each line N times.
    """

    def __init__(self, rank: int, world_size: int, tp_size: int, num_threads: int, use_gpu: bool = False,
                 log_file: str | None = None, timeout_s: float = 900.0):
        if log_file:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
                os.dup2(fd, stream.fileno())
            os.close(fd)
        self.rank, self.world_size, self.tp_size, self.use_gpu = rank, world_size, tp_size, use_gpu
        self.timeout_s = timeout_s  # of every collective: a peer that stopped answering fails the call
        torch.set_num_threads(max(1, num_threads))
        self.worker = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0 hosts the group's rendezvous."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            return os.environ.get("INSTRUCTRL_MASTER_ADDR") or ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, master: tuple[str, int], worker_cls: type, args: tuple, kwargs: dict) -> dict:
        import ray

        mesh = init_mesh(self.rank, self.world_size, self.tp_size, *master, use_gpu=self.use_gpu,
                         timeout_s=int(self.timeout_s))
        self.worker = worker_cls(mesh, *args, **kwargs)
        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "rank": self.rank, "node_id": ctx.get_node_id(),
                "node_ip": ray.util.get_node_ip_address(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "device": str(mesh.device), "placement_group": ctx.get_placement_group_id()}

    def execute(self, fn: Callable, args: tuple, kwargs: dict) -> tuple[Any, float, float]:
        """The call's result, and when it started and ended on this rank (for the timeline)."""
        start = time.time()
        value = fn(self.worker, *args, **kwargs)
        return value, start, time.time()


def _dp_layout(world: int, tp: int) -> list[int]:
    """For each rank, the data-parallel index it serves (Megatron order: TP peers adjacent)."""
    return [r // tp for r in range(world)]


class LocalGroup:
    """One rank in this process, for tests and the single-process path. Same API as RayGroup."""

    def __init__(self, worker_cls: type, *args, **kwargs):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # Joins nothing if this process already has its world; one in-process rank uses a GPU if it sees one.
        mesh = init_mesh(0, 1, 1, "127.0.0.1", port, use_gpu=torch.cuda.is_available())
        self.spec = GroupSpec()
        self._rank = Rank(0, 1, 1, torch.get_num_threads())
        self._rank.worker = worker_cls(mesh, *args, **kwargs)
        self.info = [{"pid": os.getpid(), "rank": 0}]
        self.label, self.timeline = worker_cls.__name__, None  # the role, and where its calls are traced
        self.before: Callable[[Callable], None] | None = None  # called with fn before each call is sent

    def _call(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        if self.before is not None:
            self.before(fn)
        if self.timeline is not None:
            self.timeline.called(1)
        value, start, end = self._rank.execute(fn, args, kwargs)
        if self.timeline is not None:
            self.timeline.add(self.label, 0, getattr(fn, "__name__", "call"), start, end)
        return value

    def map(self, fn: Callable, batch: Any, *args, **kwargs) -> Handle:
        value = self._call(fn, (batch, *args), kwargs)
        return Handle(lambda: value)

    def broadcast(self, fn: Callable, *args, **kwargs) -> Handle:
        value = [self._call(fn, args, kwargs)]
        return Handle(lambda: value)

    def shutdown(self) -> None:
        self._rank.worker = None


class RayGroup:
    """`spec.ranks` Ray actors, one process each, placed on the bundles of a placement group."""

    def __init__(self, name: str, worker_cls: type, spec: GroupSpec, placement, args: tuple = (),
                 kwargs: dict | None = None, log_dir: str | Path | None = None, timeout_s: float = 900.0):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.name, self.spec, self.placement, self.timeout_s = name, spec, placement, timeout_s
        self.label, self.timeline = name, None  # the role, and where its calls are traced
        self.before: Callable[[Callable], None] | None = None  # called with fn before each call is sent
        actor_cls = ray.remote(Rank)
        threads = spec.threads or max(1, int(spec.cpus_per_rank))
        self.actors = [
            actor_cls.options(
                name=f"{name}-{r}", num_cpus=spec.cpus_per_rank, num_gpus=spec.gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=placement,
                                                                     placement_group_bundle_index=r),
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads), **rank_env()}},
            ).remote(r, spec.ranks, spec.tp_size, threads, spec.gpus_per_rank > 0,
                     str(Path(log_dir).resolve() / f"{name}-rank{r}.log") if log_dir else None, timeout_s)
            for r in range(spec.ranks)
        ]
        master = wait_all([self.actors[0].address.remote()], [f"{name} rank 0: start"], timeout_s)[0]
        # Setup (joining the process group, building and loading the model) runs in the background,
        # so several groups load at once; `info` or the first call waits for it.
        self._setup = [a.setup.remote(master, worker_cls, args, kwargs or {}) for a in self.actors]
        self._info = None
        self.dp_of_rank = _dp_layout(spec.ranks, spec.tp_size)

    @property
    def info(self) -> list[dict]:
        if self._info is None:
            self._info = self._wait(self._setup, "setup (join the group, build and load the model)")
        return self._info

    def _wait(self, refs: list, call: str) -> list:
        """One result per rank (refs in rank order); errors name this group, the rank and the call."""
        return wait_all(refs, [f"{self.name} rank {r}: {call}" for r in range(len(refs))], self.timeout_s)

    def _results(self, refs: list, fn: Callable) -> list:
        """Each rank's result of an `execute`, its span added to the timeline."""
        timed = self._wait(refs, getattr(fn, "__qualname__", "call"))
        if self.timeline is not None:
            for r, (_, start, end) in enumerate(timed):
                self.timeline.add(self.label, r, getattr(fn, "__name__", "call"), start, end)
        return [value for value, _, _ in timed]

    def _submit(self, fn: Callable) -> None:
        if self.before is not None:
            self.before(fn)
        if self.timeline is not None:
            self.timeline.called(len(self.actors))

    def map(self, fn: Callable, batch: Any, *args, **kwargs) -> Handle:
        self._submit(fn)
        parts = split_batch(batch, self.spec.ranks // self.spec.tp_size)
        refs = [a.execute.remote(fn, (parts[self.dp_of_rank[r]], *args), kwargs) for r, a in enumerate(self.actors)]
        # TP peers return the same result; keep the first rank of each data-parallel slot.
        keep = [r for r in range(self.spec.ranks) if r % self.spec.tp_size == 0]
        return Handle(lambda: merge_outputs([v for r, v in enumerate(self._results(refs, fn)) if r in keep]))

    def broadcast(self, fn: Callable, *args, **kwargs) -> Handle:
        import ray

        self._submit(fn)
        # Stored once for every rank (the policy's weights for a generator group are large)
        shared_args, shared_kwargs = (ray.put(args), ray.put(kwargs)) if len(self.actors) > 1 else (args, kwargs)
        refs = [a.execute.remote(fn, shared_args, shared_kwargs) for a in self.actors]
        return Handle(lambda: self._results(refs, fn))

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


def build_groups(roles: dict[str, tuple[type, GroupSpec, tuple, dict]], name_prefix: str = "",
                 log_dir: str | Path | None = None, timeout_s: float = 900.0,
                 capacity_wait_s: float = 0.0) -> dict[str, RayGroup]:
    """Place and start one RayGroup per role. A role with `colocate_with` shares the bundles of the
    named role (rank i on bundle i), so colocated roles split each bundle's CPUs/GPUs between them.
    On a cluster that has lost nodes, placing waits up to capacity_wait_s for the capacity to return.
    With log_dir, each rank writes its output to <log_dir>/<name>-rank<i>.log; with --verbose
    (INSTRUCTRL_VERBOSE=1) it keeps Ray's streams, which Ray forwards to the driver's terminal."""
    if os.environ.get("INSTRUCTRL_VERBOSE") == "1":
        log_dir = None

    anchors = {}
    for role, (_, spec, _, _) in roles.items():
        anchor = spec.colocate_with or role
        if anchor not in roles:
            raise ValueError(f"{role}.colocate_with names unknown role {anchor!r}")
        if roles[anchor][1].colocate_with:
            raise ValueError(f"{role} colocates with {anchor}, which itself colocates with another role")
        if roles[anchor][1].ranks != spec.ranks:
            raise ValueError(f"{role} ({spec.ranks} ranks) cannot share bundles with {anchor} "
                             f"({roles[anchor][1].ranks} ranks)")
        anchors[role] = anchor
    bundles = {}  # anchor role → (bundles, CPUs, GPUs per bundle), colocated members summed
    for anchor in dict.fromkeys(anchors.values()):
        members = [roles[r][1] for r in roles if anchors[r] == anchor]
        bundles[anchor] = (roles[anchor][1].ranks, sum(m.cpus_per_rank for m in members),
                           sum(m.gpus_per_rank for m in members))
    placed = place({f"{name_prefix}{a}": (*b, roles[a][1].strategy) for a, b in bundles.items()}, capacity_wait_s)
    placements = {a: placed[f"{name_prefix}{a}"] for a in bundles}
    groups = {}
    try:
        for role, (cls, spec, args, kwargs) in roles.items():
            groups[role] = RayGroup(f"{name_prefix}{role}", cls, spec, placements[anchors[role]], args, kwargs, log_dir,
                                    timeout_s)
        for group in groups.values():
            group.info  # noqa: B018 — wait until every group has loaded its model; errors surface here
    except BaseException:
        for g in groups.values():
            g.shutdown()
        for pg in placements.values():
            release(pg)
        raise
    return groups


def shutdown_groups(groups: dict[str, RayGroup]) -> None:
    """Kill every rank, then free the placement groups (once each, colocated or not)."""

    for g in groups.values():
        g.shutdown()
    for pg in {id(g.placement): g.placement for g in groups.values()}.values():
        release(pg)
