"""ppo.schedule=colocated: which role holds its state on the shared devices, and what that costs.

Every role's rank i sits on the same bundle (device) i. Before any call to a role is sent, `keep(role)`
sends the other roles' weights, gradients and optimizer state to host memory and brings that role's
back, so a device holds one role's state at a time, not the sum: the schedule's phases, an evaluation
and a save alike. A group runs its calls in the order sent, so a move out waits for the calls already
sent to that role. Each move reports the state bytes it moved (the engines' own counters,
`state_bytes`), its seconds and, on a GPU, the bytes allocated on the device after it.
Must not import ray.
"""

from __future__ import annotations

import time
from functools import partial

from rlhf.residency import to_device, to_host

ROLES = ("policy", "reference", "reward", "critic")


class SharedDevices:
    """The roles' groups of one colocated run, each call to them preceded by its role's move in."""

    def __init__(self, roles):
        self.groups = {name: group for name in ROLES if (group := getattr(roles, name)) is not None}
        self.on_device = set(self.groups)  # as the groups start: every role's weights loaded (the first step's peak)
        ranks = {group.spec.ranks for group in self.groups.values()}
        if len(ranks) != 1:
            raise ValueError(f"schedule=colocated: every role needs the same number of ranks, not {sorted(ranks)}")
        n = ranks.pop()
        self.state = {name: [0] * n for name in self.groups}  # the most state bytes each rank has held on its device
        self.allocated: dict[str, list[int]] = {}  # on a GPU: each rank's allocated bytes after its last move
        self.step_peak = self.step_seconds = self.step_copy_seconds = 0.0
        self.step_allocated_peak = self.step_arrivals = 0
        for name, group in self.groups.items():
            group.before = partial(self._before, name)

    def _before(self, name: str, fn) -> None:
        if fn not in (to_host, to_device) and self.on_device != {name}:
            self.keep(name)

    def detach(self) -> None:
        """The groups' calls no longer move anything."""
        for group in self.groups.values():
            group.before = None

    def keep(self, *names: str) -> None:
        """Only `names` on the devices: the others leave first (at once), then these come back (at once)."""
        start = time.perf_counter()
        leaving = [n for n in self.groups if n in self.on_device and n not in names]
        arriving = [n for n in names if n not in self.on_device]
        self.step_arrivals += len(arriving)
        for move, group_names in ((to_host, leaving), (to_device, arriving)):
            handles = [(n, self.groups[n].broadcast(move)) for n in group_names]
            for n, handle in handles:
                self._record(n, handle.get())
            # what the roles that just left held there (a trainer's optimizer state appears while it is on
            # the device), then what the arrivals hold
            self.step_peak = max(self.step_peak, self.device_bytes(self.on_device))
            self.on_device = (self.on_device - set(leaving)) | set(arriving)
        self.step_seconds += time.perf_counter() - start
        if self.allocated:
            self.step_allocated_peak = max(self.step_allocated_peak,
                                           max(map(sum, zip(*self.allocated.values(), strict=True))))

    def _record(self, name: str, ranks: list[dict]) -> None:
        self.step_copy_seconds += max(r["seconds"] for r in ranks)
        self.state[name] = [max(old, r["bytes"]) for old, r in zip(self.state[name], ranks, strict=True)]
        if ranks[0]["allocated"] is not None:
            self.allocated[name] = [r["allocated"] for r in ranks]

    def device_bytes(self, names) -> int:
        """The most state bytes any one device holds with `names` on it."""
        return max(sum(self.state[n][i] for n in names) for i in range(len(next(iter(self.state.values())))))

    def metrics(self) -> dict[str, float]:
        """This step's: the peak state bytes on one device, what every role's state would take there
        together (colocated without moves), and the largest role's alone (a device of its own in the
        separate layout); how many roles came onto the devices; the seconds the ranks spent moving
        state, and the driver's wait for the moves (which includes the calls queued before them at the
        ranks leaving); on a GPU, the peak of the bytes allocated."""
        out = {"memory/device_peak_bytes": float(self.step_peak),
               "memory/all_roles_bytes": float(self.device_bytes(self.groups)),
               "memory/largest_role_bytes": float(max(self.device_bytes([n]) for n in self.groups)),
               "memory/roles_moved_in": float(self.step_arrivals),
               "time/moves": self.step_copy_seconds, "time/moves_wait": self.step_seconds}
        if self.allocated:
            out["memory/device_allocated_peak_bytes"] = float(self.step_allocated_peak)
        self.step_peak = self.step_seconds = self.step_copy_seconds = 0.0
        self.step_allocated_peak = self.step_arrivals = 0
        return out
