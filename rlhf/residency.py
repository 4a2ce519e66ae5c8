"""A worker's state between its device and host memory (ppo.schedule=colocated): `Movable`, the calls a
worker answers, and the two group calls the driver sends (rlhf/colocation.py). Must not import ray."""

from __future__ import annotations

import time

import torch


class Movable:
    """What ModelWorker (its `engine` and `mesh`) answers for the colocated schedule."""

    def _resident(self) -> None:
        """A schedule that calls a role while its state is in host memory has lost track of it: say so,
        rather than run on the empty tensors left on the device."""
        if self.engine.on_host:
            raise RuntimeError(f"{type(self).__name__} rank {self.mesh.rank} was called while its state is in host "
                               f"memory (ppo.schedule=colocated): bring it back with to_device first")

    def to_host(self) -> dict:
        """ppo.schedule=colocated: this rank's weights, gradients and optimizer state leave the device for
        host memory. Returns the state bytes that left, the seconds and the device's allocated bytes after."""
        moving = self._device_bytes()
        return {"bytes": moving, **self._timed(self.engine.to_host)}

    def to_device(self) -> dict:
        """The state back on the device from host memory; the bytes now there, the seconds, the allocated bytes."""
        out = self._timed(self.engine.to_device)
        return {"bytes": self._device_bytes(), **out}

    def _device_bytes(self) -> int:
        """The state bytes on the device: the engine's own counters (state_bytes), none while the state is on
        the host (DeepSpeed points an offloaded optimizer's parameters at its host buffers, which on a
        CPU-only machine are CPU tensors like the device's)."""
        return 0 if self.engine.on_host else sum(self.engine.state_bytes().values())

    def _timed(self, move) -> dict:
        if self.mesh.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        move()
        if self.mesh.device.type == "cuda":
            torch.cuda.synchronize()
        allocated = torch.cuda.memory_allocated() if self.mesh.device.type == "cuda" else None
        return {"seconds": time.perf_counter() - start, "allocated": allocated}


def to_host(worker) -> dict:
    """Group call of ppo.schedule=colocated: the role's state off the device (Movable.to_host)."""
    return worker.to_host()


def to_device(worker) -> dict:
    """Group call of ppo.schedule=colocated: the role's state back on the device."""
    return worker.to_device()
