"""Training engines: optimizer, LR schedule, accumulation, clipping and sharding around one model.

`TorchEngine` is plain torch AdamW (ZeRO stage 0) with data-parallel gradient averaging: the parity
reference every sharded engine is compared with. `ZeroEngine` (parallel/zero.py) wraps DeepSpeed for
stages 1-3. Both answer the same calls: `__call__` (forward), `backward`, `step`, `save`, `load`,
`full_state_dict`.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from parallel.mesh import Mesh


class OptimConfig(BaseModel):
    """AdamW with linear warm-up and cosine decay to min_lr_ratio × lr (GPT-3, Brown et al. 2020 §B)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(3e-4, gt=0)  # peak learning rate (AdamW)
    weight_decay: float = Field(0.0, ge=0)  # decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.95)  # Adam β1, β2
    eps: float = 1e-8  # Adam ε
    warmup_steps: int = Field(20, ge=0)  # linear warm-up steps, then cosine decay
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # final learning rate as a share of lr (1.0: constant)
    grad_clip: float = Field(1.0, ge=0)  # 0 → off
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
class EngineConfig(BaseModel):
    """How one worker group shards and updates its model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zero_stage: Literal[0, 1, 2, 3] = 0  # DeepSpeed ZeRO stage; 0: plain AdamW with data-parallel all-reduce
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer state and step on the CPU (stages 1-3)
    offload_params: bool = False  # ZeRO-Infinity style parameter offload (stage 3 only)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    param_persistence_threshold: int | None = None  # ZeRO-3: params below this many elements stay whole
    # Forwards (scoring and training) on packed rows: each batch's real tokens regrouped into rows no
    # wider than its longest sequence, attention kept within each sequence (varlen). Same numbers to
    # rounding, no work on padding. false: the padded batch as is.
    packing: bool = True

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage=3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        return self

    def dtype(self) -> torch.dtype:
        if self.precision == "bf16" or (self.precision == "auto" and torch.cuda.is_available()):
            return torch.bfloat16
        return torch.float32


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm gains (1-D parameters), GPT-2/3 practice."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_scheduler(optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def tp_aware_grad_norm(params: list[nn.Parameter], mesh: Mesh) -> torch.Tensor:
    """Global L2 norm of the gradients: TP-sharded parameters are summed over the TP group once,
    replicated ones (norms, biases of row-parallel layers) counted once."""
    sharded = sum((p.grad.float().pow(2).sum() for p in params if getattr(p, "tensor_model_parallel", False)),
                  torch.zeros((), device=mesh.device))
    replicated = sum((p.grad.float().pow(2).sum() for p in params if not getattr(p, "tensor_model_parallel", False)),
                     torch.zeros((), device=mesh.device))
    if mesh.tp_size > 1:
        dist.all_reduce(sharded, group=mesh.tp_group())
    return (sharded + replicated).sqrt()


def storage_bytes(tensors, skip: set[int] | None = None) -> tuple[int, set[int]]:
    """Bytes of the distinct storages under `tensors` (views of one buffer counted once), leaving out
    the storages in `skip`; and the set of storages counted."""
    seen = set(skip or ())
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() == 0:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total, seen - set(skip or ())


def optimizer_state_tensors(optimizer) -> list[torch.Tensor]:
    """The tensors a torch optimizer keeps per parameter (Adam's moments; not the step counts' scalars)."""
    if optimizer is None:
        return []
    return [v for state in optimizer.state.values() for v in state.values()
            if isinstance(v, torch.Tensor) and v.numel() > 1]


def state_bytes(params: list[torch.Tensor], optimizer_tensors: list[torch.Tensor]) -> dict[str, int]:
    """{"param_bytes", "optimizer_bytes"} this rank holds, each buffer once; optimizer tensors that
    share a parameter's storage are not counted twice."""
    param_bytes, param_storages = storage_bytes(params)
    optimizer_bytes, _ = storage_bytes(optimizer_tensors, skip=param_storages)
    return {"param_bytes": param_bytes, "optimizer_bytes": optimizer_bytes}


def host_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` in host memory, page-locked when it comes from a GPU (so the way back is one DMA)."""
    return torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda).copy_(t)


class HostStore:
    """An engine's state tensors in host memory between the phases that use them (ppo.schedule=colocated):
    each tensor's device storage is released, the tensor object kept, so the model and optimizer that
    hold it see their own tensors again once they are back. On a CPU-only machine host and device are
    the same memory: the copy is made and the working storage freed all the same."""

    def __init__(self):
        self.moved: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def on_host(self) -> bool:
        return self.moved is not None

    def send(self, tensors) -> None:
        if self.moved is not None:
            return
        unique = {id(t): t for t in tensors if t is not None and t.numel()}
        self.moved = [(t, host_copy(t.data)) for t in unique.values()]
        for t, _ in self.moved:
            t.data = torch.empty(0, dtype=t.dtype, device=t.device)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the freed blocks back: the other roles' processes share the device

    def bring_back(self, device: torch.device) -> None:
        for t, host in self.moved or ():
            t.data = host.to(device, non_blocking=False)
        self.moved = None


def copy_parameters(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into the model's parameters in place, by name (dtype and device converted)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state[name])


class TorchEngine:
    """ZeRO stage 0: every rank holds the whole (TP-sharded) model and optimizer state."""

    def __init__(self, model: nn.Module, cfg: OptimConfig | None, mesh: Mesh, total_steps: int = 1):
        self.module, self.cfg, self.mesh = model, cfg, mesh
        self.optimizer = self.scheduler = None
        if cfg is not None:
            # fused: one kernel over all parameters; torch's default on CPU loops over them one by one
            # (8.5% of the PPO train phase in bench/ppo_throughput.py's profile, 2.3% fused).
            self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                               eps=cfg.eps, fused=True)
            self.scheduler = make_scheduler(self.optimizer, cfg, total_steps)
        self.micro_steps = 0
        self.global_steps = 0
        self.host = HostStore()

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        # Scaled so that accumulated gradients equal those of one large batch.
        (loss / self.cfg.grad_accum).backward()
        self.micro_steps += 1

    def step(self) -> dict[str, float] | None:
        """Update at an accumulation boundary; returns {lr, grad_norm} then, else None."""
        if self.micro_steps % self.cfg.grad_accum:
            return None
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.mesh.dp_size > 1:
            # One flat buffer, one collective: a per-parameter all-reduce is a latency-bound loop.
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat, group=self.mesh.dp_group())
            flat.div_(self.mesh.dp_size)
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.grad.numel()].view_as(p.grad))
                offset += p.grad.numel()
        norm = tp_aware_grad_norm(params, self.mesh)
        if not math.isfinite(float(norm)):
            # The norm is global (all-reduced), so every rank skips this update together, as
            # DeepSpeed's ZeRO optimizers do on overflow; the LR schedule does not advance either.
            self.optimizer.zero_grad(set_to_none=True)
            return {"lr": self.scheduler.get_last_lr()[0], "grad_norm": float(norm)}
        if self.cfg.grad_clip and float(norm) > self.cfg.grad_clip:
            for p in params:
                p.grad.mul_(self.cfg.grad_clip / (float(norm) + 1e-6))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_steps += 1
        return {"lr": lr, "grad_norm": float(norm)}

    def save(self, directory: str | Path, client_state: dict) -> None:
        """Full training state of this rank: weights as safetensors; optimizer, scheduler, RNG and step
        counters as tensors and plain values, which load without unpickling any object."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # The parameters by name, not the module's state_dict: a Megatron layer's holds `_extra_state` (None),
        # which safetensors cannot write.
        save_file({k: v.contiguous() for k, v in self.local_state_dict().items()},
                  directory / f"rank-{self.mesh.rank:05d}.safetensors")
        state = {"micro_steps": self.micro_steps, "global_steps": self.global_steps, "rng": rng_state(),
                 "client": client_state}
        if self.optimizer is not None:
            state |= {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        torch.save(state, directory / f"rank-{self.mesh.rank:05d}-state.pt")

    def load(self, directory: str | Path) -> dict:
        from safetensors.torch import load_file

        directory = Path(directory)
        weights = load_file(directory / f"rank-{self.mesh.rank:05d}.safetensors", device=str(self.mesh.device))
        self.set_local_state(weights)
        state = torch.load(directory / f"rank-{self.mesh.rank:05d}-state.pt", weights_only=True)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps, self.global_steps = state["micro_steps"], state["global_steps"]
        set_rng_state(state["rng"])
        return state["client"]

    def local_state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's (TP-sharded) weights, whole across data-parallel ranks."""
        return {k: p.detach() for k, p in self.module.named_parameters()}

    def set_local_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy weights in local_state_dict's form into this rank's parameters (the optimizer's state untouched)."""
        copy_parameters(self.module, state)

    def partitioned_numel(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def state_bytes(self) -> dict[str, int]:
        return state_bytes(self.stored_parameters(), optimizer_state_tensors(self.optimizer))

    def stored_parameters(self) -> list[torch.Tensor]:
        """The parameter tensors this rank stores."""
        return list(self.module.parameters())

    @property
    def on_host(self) -> bool:
        return self.host.on_host

    def to_host(self) -> None:
        """Weights, gradients and optimizer state to host memory (ppo.schedule=colocated)."""
        params = list(self.module.parameters())
        self.host.send([*params, *(p.grad for p in params), *optimizer_state_tensors(self.optimizer)])

    def to_device(self) -> None:
        self.host.bring_back(self.mesh.device)
