"""DeepSpeed ZeRO engine (stages 1-3, CPU offload). The only file that imports deepspeed.

DeepSpeed picks its accelerator itself: CUDA + NCCL on a GPU node, its CPU accelerator + gloo here.
Tensor parallelism reaches DeepSpeed through `MegatronMPU`, so ZeRO shards over the data-parallel
group only and gradient clipping counts each TP shard once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from parallel.engine import (
    EngineConfig,
    OptimConfig,
    make_scheduler,
    optimizer_state_tensors,
    param_groups,
    rng_state,
    set_rng_state,
    state_bytes,
)
from parallel.mesh import MegatronMPU, Mesh, tp_slice


def deepspeed_config(cfg: EngineConfig, optim: OptimConfig | None, micro_batch: int, mesh: Mesh) -> dict:
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    if cfg.param_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = cfg.param_persistence_threshold
    accum = optim.grad_accum if optim else 1
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": optim.grad_clip if optim else 0.0,
        "zero_optimization": zero,
        # A non-finite global gradient norm skips the step on every rank (fp32 does so by default).
        "bf16": {"enabled": cfg.dtype() == torch.bfloat16, "check_grad_overflow": True},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def _ensure_env(mesh: Mesh) -> None:
    # DeepSpeed reads these even when the process group already exists.
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("RANK", str(mesh.rank))
    os.environ.setdefault("WORLD_SIZE", str(mesh.world_size))


class ZeroEngine:
    """A model wrapped by `deepspeed.initialize`. Without an OptimConfig it is inference-only
    (ZeRO-3 then still partitions the parameters: the reference and reward models' memory saver)."""

    def __init__(self, build_model: Callable[[], nn.Module], init_state: dict[str, torch.Tensor] | None,
                 cfg: EngineConfig, optim: OptimConfig | None, mesh: Mesh, total_steps: int = 1,
                 micro_batch: int = 1):
        import deepspeed

        _ensure_env(mesh)
        self.cfg, self.optim_cfg, self.mesh = cfg, optim, mesh
        ds_config = deepspeed_config(cfg, optim, micro_batch, mesh)
        mpu = MegatronMPU(mesh) if mesh.tp_size > 1 else None
        if cfg.zero_stage == 3:
            # Parameters are partitioned as each layer is built: no rank ever holds the whole model.
            with deepspeed.zero.Init(config_dict_or_path=ds_config, mpu=mpu):
                model = build_model()
            tied = getattr(getattr(model, "body", None), "embed", None)
            if getattr(model, "lm_head", "absent") is None and tied is not None:
                deepspeed.zero.register_external_parameter(model, tied.weight)  # used by the tied LM head
        else:
            model = build_model()
        model = model.to(cfg.dtype())
        if init_state is not None:
            load_into(model, init_state, cfg.zero_stage == 3, mesh)
        optimizer = scheduler = None
        if optim is not None:
            groups = param_groups(model, optim.weight_decay)
            if cfg.offload_optimizer:
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                optimizer = DeepSpeedCPUAdam(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, adamw_mode=True)
            else:
                optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=True)
            scheduler = lambda opt: make_scheduler(opt, optim, total_steps)  # noqa: E731
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, mpu=mpu)
        self.module = self.engine.module
        self.micro_steps = 0
        self.offloaded = False  # ppo.schedule=colocated: the state is in host memory
        # Every file DeepSpeed reads back goes through its checkpoint engine's `load`, which unpickles
        # (weights_only=False): a checkpoint a user was sent could run code. Ours cannot.
        self.engine.checkpoint_engine.load = load_safely

    @property
    def global_steps(self) -> int:
        return self.engine.global_steps

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        self.micro_steps += 1

    def step(self) -> dict[str, float] | None:
        boundary = self.engine.is_gradient_accumulation_boundary()
        lr = self.scheduler.get_last_lr()[0] if boundary else None
        self.engine.step()
        if not boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        return {"lr": lr, "grad_norm": float(norm) if norm is not None else float("nan")}

    def save(self, directory: str | Path, client_state: dict) -> None:
        self.engine.save_checkpoint(str(directory), tag="state",
                                    client_state={"client": client_state, "rng": rng_state(),
                                                  "micro_steps": self.micro_steps})

    def load(self, directory: str | Path) -> dict:
        _, state = self.engine.load_checkpoint(str(directory), tag="state")
        if state is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint")
        set_rng_state(state["rng"])
        self.micro_steps = state["micro_steps"]
        return state["client"]

    def local_state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's TP shard of every weight, gathered across the ZeRO-3 data-parallel partition."""
        import deepspeed

        params = dict(self.module.named_parameters())
        out = {}
        for name, p in params.items():
            with deepspeed.zero.GatheredParameters([p], enabled=self.cfg.zero_stage == 3):
                out[name] = p.detach().clone().float()
        return out

    def set_local_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy weights in local_state_dict's form (the same on every data-parallel rank) into this rank's
        parameters, re-partitioned under ZeRO-3; the optimizer's fp32 master weights are left as they are."""
        import deepspeed

        for name, p in self.module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0, enabled=self.cfg.zero_stage == 3), \
                    torch.no_grad():
                p.copy_(state[name].to(p.dtype))

    def stored_parameters(self) -> list[torch.Tensor]:
        """The parameter tensors this rank stores: its ZeRO-3 partitions, or the whole parameters."""
        if self.cfg.zero_stage == 3:
            return [p.ds_tensor for p in self.module.parameters()]
        return list(self.module.parameters())

    def partitioned_numel(self) -> int:
        """Elements this rank stores: its ZeRO-3 partition, or the whole (TP-sharded) parameters."""
        if self.cfg.zero_stage == 3:
            return sum(p.ds_tensor.numel() for p in self.module.parameters())
        return sum(p.numel() for p in self.module.parameters())

    def state_bytes(self) -> dict[str, int]:
        """Bytes of this rank's parameters (its ZeRO-3 partition) and optimizer state: the fp32 master
        partitions ZeRO keeps beside the parameters and the Adam moments (after the first step)."""
        opt = self.engine.optimizer
        params = self.stored_parameters()
        if self.cfg.zero_stage == 3:  # parameters kept whole (under the persistence threshold) hold their data too
            params += [p.data for p in self.module.parameters()]
        master = getattr(opt, "fp32_partitioned_groups_flat", None) or getattr(opt, "single_partition_of_fp32_groups",
                                                                               None) or []
        return state_bytes(params, list(master) + optimizer_state_tensors(getattr(opt, "optimizer", None)))

    @property
    def on_host(self) -> bool:
        return self.offloaded

    def to_host(self) -> None:
        """Weights, gradients and optimizer state to host memory (ppo.schedule=colocated) with DeepSpeed's own
        `offload_states`: its flat buffers and the parameters that view them move together. Stages 1-2 with an
        optimizer (an inference-only DeepSpeed engine is stage 3 here, whose states DeepSpeed moves only with
        its CUDA FusedAdam)."""
        if self.optim_cfg is None or self.cfg.zero_stage == 3:
            which = "without" if self.optim_cfg is None else "with"
            raise ValueError(f"ZeRO-{self.cfg.zero_stage} {which} an optimizer: its state cannot move to host memory "
                             f"between phases; use zero_stage 0-2")
        if not self.offloaded:
            self.engine.offload_states(pin_memory=True)
            self.offloaded = True

    def to_device(self) -> None:
        if self.offloaded:
            self.engine.reload_states()
            self.offloaded = False


log = logging.getLogger("instructrl")
STALE_LOCK_S = 600  # a compile takes about a minute here; a lock this old was left by a killed process


def build_ops(offload: bool = False) -> None:
    """Compile the DeepSpeed ops a CPU run JIT-compiles on first use — the shared-memory collective
    op every ZeRO group loads, and CPU Adam for offload — in this process, saying so. Run at install
    (`make install`) and by the driver before it starts ZeRO groups, so that no rank compiles
    silently, and a lock left by a process killed mid-compile (on which every later run would wait
    forever) is cleared first."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    for name in ("ShareMemCommBuilder", *(("CPUAdamBuilder",) if offload else ())):
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not builder.is_compatible(verbose=False):
            continue
        directory = extension_dir(builder.NAME)
        clear_stale_lock(directory)
        if not (directory / f"{builder.NAME}.so").exists():
            log.info("compiling DeepSpeed's %s op into %s (once per machine, about a minute)", builder.NAME, directory)
        builder.load(verbose=False)


def extension_dir(name: str) -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def clear_stale_lock(directory: Path) -> None:
    lock = directory / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        log.warning("removing %s: a compile lock %d s old, left by a process killed while compiling", lock,
                    time.time() - lock.stat().st_mtime)
        lock.unlink(missing_ok=True)


def load_safely(path: str, map_location=None):
    """A DeepSpeed checkpoint file through torch's weights-only unpickler: tensors, containers and the
    three plain value types that ZeRO's optimizer state holds (an enum, a dataclass of two ints, the
    loss scaler's settings). Any other object in the file fails the load instead of being built."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], partitioned: bool, mesh: Mesh) -> None:
    """Copy a full state dict into this rank's TP shards, whose parameters may be ZeRO-3 partitions."""
    import deepspeed

    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ValueError(f"weights for unknown parameters: {unknown[:5]}")
    for name, p in params.items():
        if name not in state:
            continue  # e.g. a fresh reward head on an LM checkpoint
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0, enabled=partitioned), torch.no_grad():
            p.copy_(tp_slice(p, state[name], mesh).to(p.dtype))
