"""Training engines: the optimizer, LR schedule, accumulation and clipping around one model.

`Engine` is plain torch AdamW (ZeRO stage 0): the parity reference every sharded engine is
compared with. Both expose the same three calls as a DeepSpeed engine: forward via `module`,
`backward(loss)`, `step()`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field


class OptimConfig(BaseModel):
    """AdamW with linear warm-up and cosine decay to min_lr_ratio × lr (GPT-3, Brown et al. 2020 §B)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = Field(20, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)  # 0 → off
    grad_accum: int = Field(1, ge=1)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and embeddings' 1-D parameters (GPT-2/3 practice)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Engine:
    """Plain AdamW engine. `step()` applies an update every `grad_accum` micro-batches."""

    def __init__(self, model: nn.Module, cfg: OptimConfig, total_steps: int):
        self.module, self.cfg = model, cfg
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                           betas=cfg.betas, eps=cfg.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
        self.micro_steps = 0
        self.global_steps = 0

    def backward(self, loss: torch.Tensor) -> None:
        # Scale so that accumulated gradients equal those of one large batch.
        (loss / self.cfg.grad_accum).backward()
        self.micro_steps += 1

    def step(self) -> dict[str, float] | None:
        """Update at an accumulation boundary; returns {lr, grad_norm} then, else None."""
        if self.micro_steps % self.cfg.grad_accum:
            return None
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_steps += 1
        return {"lr": lr, "grad_norm": float(norm)}

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "micro_steps": self.micro_steps,
                "global_steps": self.global_steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps, self.global_steps = state["micro_steps"], state["global_steps"]
