"""One rank's model: pick the layer backend for its mesh, build, load weights, wrap in an engine.

Workers (rlhf/workers.py) compose this instead of inheriting shared machinery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, model_validator

from models.config import ModelConfig, check_tp_shape
from models.heads import CausalLM, ScoreModel
from models.hf import HEADS, from_hf_state_dict, read_hf_config, read_hf_weights, save_pretrained
from models.transformer import LocalBackend
from parallel.engine import EngineConfig, OptimConfig, TorchEngine
from parallel.mesh import Mesh, tp_slice


class ModelSource(BaseModel):
    """Where a worker's model comes from: an HF checkpoint directory, or a fresh model of a shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    config: ModelConfig | None = None
    seed: int = 0
    attention: Literal["auto", "sdpa", "triton"] | None = None  # None: the checkpoint's / config's own


    @model_validator(mode="after")
    def _check(self) -> ModelSource:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of path (an HF checkpoint) or config (a fresh model)")
        return self

    def load(self) -> tuple[ModelConfig, dict[str, torch.Tensor] | None]:
        torch.manual_seed(self.seed)  # fresh models: every rank draws the same full weights, then slices
        cfg, state = read_checkpoint(self.path) if self.path else (self.config, None)
        if self.attention is not None:
            cfg = cfg.model_copy(update={"attention": self.attention})
        return cfg, state


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and full (unsharded) state dict of an HF checkpoint directory, in our names."""
    cfg = read_hf_config(path)
    return cfg, from_hf_state_dict(cfg, read_hf_weights(path))


def make_backend(cfg: ModelConfig, mesh: Mesh, dtype: torch.dtype):
    if mesh.tp_size == 1:
        return LocalBackend()
    from parallel.tensor_parallel import MegatronBackend

    check_tp_shape(cfg, mesh.tp_size)
    return MegatronBackend(mesh.tp_size, dtype)


def build_engine(kind: str, cfg: ModelConfig, full_state: dict[str, torch.Tensor] | None, engine_cfg: EngineConfig,
                 optim: OptimConfig | None, mesh: Mesh, total_steps: int = 1, micro_batch: int = 1):
    """A CausalLM (kind="lm") or ScoreModel ("score") on this rank, sharded as engine_cfg says.

    full_state: weights to start from (an LM checkpoint may start a score model: its head stays fresh).
    optim=None builds an inference-only engine (reference, reward).
    """
    dtype = engine_cfg.dtype()
    backend = make_backend(cfg, mesh, dtype)
    model_cls = CausalLM if kind == "lm" else ScoreModel

    def build():
        return model_cls(cfg, backend)

    state = None
    if full_state is not None:
        state = {k: v for k, v in full_state.items() if not (k in HEADS and k not in _expected_heads(cfg, kind))}
    if engine_cfg.zero_stage == 0:
        model = build().to(dtype)
        if state is not None:
            params = dict(model.named_parameters())
            missing, unexpected = model.load_state_dict(
                {k: tp_slice(params[k], v, mesh) if k in params else v for k, v in state.items()}, strict=False)
            if unexpected or [k for k in missing if k not in HEADS]:
                raise ValueError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
        engine = TorchEngine(model.to(mesh.device), optim, mesh, total_steps)
        if optim is None:
            model.requires_grad_(False)
        return engine
    from parallel.zero import ZeroEngine

    return ZeroEngine(build, state, engine_cfg, optim, mesh, total_steps, micro_batch)


def _expected_heads(cfg: ModelConfig, kind: str) -> set[str]:
    if kind == "score":
        return {"score.weight"}
    return set() if cfg.tied else {"lm_head.weight"}


def full_state_dict(engine, mesh: Mesh) -> dict[str, torch.Tensor]:
    """Whole weights on every rank, merged across ZeRO-3 partitions and TP shards."""
    local = engine.local_state_dict()
    if mesh.tp_size == 1:
        return local
    from parallel.tensor_parallel import gather_state_dict

    return gather_state_dict(engine.module, local, mesh.tp_size)


def export_hf(engine, mesh: Mesh, path: str | Path, tokenizer=None) -> Path | None:
    """Consolidated HF checkpoint written by rank 0 (every rank must call: gathering is collective)."""
    state = full_state_dict(engine, mesh)
    path = Path(path)
    if mesh.rank == 0:
        save_pretrained(engine.module, path, state={k: v.float() for k, v in state.items()})
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    if mesh.distributed:
        dist.barrier()
    return path
