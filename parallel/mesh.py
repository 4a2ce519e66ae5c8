"""Process groups of one worker group: the world of its ranks, split tensor-parallel × data-parallel.

The sole caller of Megatron-core's `parallel_state`. Ranks 0..tp-1 form the first tensor-parallel
group (Megatron's default order), so TP peers sit on adjacent ranks, i.e. on the same node. A group
without tensor parallelism never imports Megatron: its data-parallel group is the whole world, and
importing megatron.core costs each rank seconds at every start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, model_validator


class GroupSpec(BaseModel):
    """Size and placement of one role's group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ranks: int = Field(1, ge=1)  # processes in the group (TP × DP)
    tp_size: int = Field(1, ge=1)  # Megatron tensor-parallel degree; must divide heads, MLP width, vocabulary
    cpus_per_rank: float = Field(0.5, gt=0)  # Ray CPUs reserved per rank (fractions share cores)
    gpus_per_rank: float = Field(0.0, ge=0)  # > 0 on GPU clusters; a fraction when roles share a GPU
    strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD (Ray placement strategies)
    colocate_with: str | None = None  # another role's name: share its placement-group bundles
    # torch (OpenMP) threads of each rank; null: its whole CPUs, at least 1. ppo.schedule=colocated gives
    # every role the bundle's CPUs: the roles on a bundle work one at a time there.
    threads: int | None = Field(None, ge=1)

    @property
    def dp_size(self) -> int:
        return self.ranks // self.tp_size

    @model_validator(mode="after")
    def _check(self) -> GroupSpec:
        if self.ranks % self.tp_size:
            raise ValueError(f"ranks={self.ranks} is not divisible by tp_size={self.tp_size}")
        if self.strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError(f"unknown placement strategy {self.strategy!r}")
        return self


@dataclass(frozen=True)
class Mesh:
    world_size: int
    rank: int
    tp_size: int
    device: torch.device

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def dp_size(self) -> int:
        return self.world_size // self.tp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp_size

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def tp_group(self):
        if self.tp_size == 1:
            return None
        from megatron.core import parallel_state

        return parallel_state.get_tensor_model_parallel_group()

    def dp_group(self):
        if not self.distributed:
            return None
        if self.tp_size == 1:
            return dist.group.WORLD
        from megatron.core import parallel_state

        return parallel_state.get_data_parallel_group() if parallel_state.model_parallel_is_initialized() \
            else dist.group.WORLD


def init_mesh(rank: int, world_size: int, tp_size: int, master_addr: str, master_port: int,
              use_gpu: bool = False, timeout_s: int = 600) -> Mesh:
    """Join this process's group (gloo on CPU, NCCL on GPU) and, with tensor parallelism, set up Megatron's
    TP × DP groups.

    use_gpu comes from the group's spec (gpus_per_rank > 0), never from what the process can see:
    Ray assigns each such rank its GPU(s) and exposes them as devices 0.., so the rank uses cuda:0.
    """
    if world_size % tp_size:
        raise ValueError(f"world size {world_size} is not divisible by tensor-parallel size {tp_size}")
    device = torch.device("cpu")
    if use_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError(f"rank {rank} was given a GPU (gpus_per_rank > 0) but CUDA is not available")
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", master_addr)
        os.environ.setdefault("MASTER_PORT", str(master_port))
        dist.init_process_group("nccl" if use_gpu else "gloo", init_method=f"tcp://{master_addr}:{master_port}",
                                rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    if tp_size > 1:
        from megatron.core import parallel_state

        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp_size,
                                                     create_gloo_process_groups=False)
    return Mesh(world_size, rank, tp_size, device)


def tp_slice(param: torch.Tensor, full: torch.Tensor, mesh: Mesh) -> torch.Tensor:
    """This rank's slice of a full tensor along the parameter's Megatron partition_dim
    (0 for column-parallel layers and the vocabulary embedding, 1 for row-parallel layers)."""
    if mesh.tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    return full.chunk(mesh.tp_size, dim=param.partition_dim)[mesh.tp_rank].contiguous()


class MegatronMPU:
    """The `mpu` object DeepSpeed asks for, answering from the mesh's Megatron groups."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh

    def get_model_parallel_rank(self) -> int:
        return self.mesh.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.mesh.tp_size

    def get_model_parallel_group(self):
        from megatron.core import parallel_state

        return parallel_state.get_tensor_model_parallel_group()

    def get_data_parallel_rank(self) -> int:
        return self.mesh.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.mesh.dp_size

    def get_data_parallel_group(self):
        return self.mesh.dp_group()
