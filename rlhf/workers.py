"""Worker roles: one class per role, each hosting one model shard on one rank.

A worker's public methods are what the coordinator calls through a group (`group.map(Worker.method,
batch)`); they take and return CPU tensors / plain values, and run on the rank's device inside.
Shared machinery is composition (an engine from parallel/host.py), never role flags.
Must not import ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from parallel.engine import EngineConfig, OptimConfig
from parallel.host import ModelSource, build_engine, export_hf
from parallel.mesh import Mesh
from rlhf.batching import LMBatch
from rlhf.sft import sft_loss


class PolicyWorker:
    """The policy (InstructGPT's π): SFT training here; PPO generation and updates build on it."""

    def __init__(self, mesh: Mesh, source: ModelSource, engine: EngineConfig, optim: OptimConfig | None = None,
                 total_steps: int = 1, micro_batch: int = 1):
        self.mesh = mesh
        self.cfg, state = source.load()
        self.engine = build_engine("lm", self.cfg, state, engine, optim, mesh, total_steps, micro_batch)
        self.model = self.engine.module

    def logits(self, batch: LMBatch) -> torch.Tensor:
        """Full-vocabulary logits (B, T, V), fp32 on CPU (a test and debugging view)."""
        self.model.eval()
        with torch.no_grad():
            b = batch.to(self.mesh.device)
            out = self.model.backend.gather_vocab(self.engine(b.input_ids, b.attention_mask))
        return out.float().cpu()

    def sft_step(self, batch: LMBatch) -> dict[str, float]:
        """One micro-batch of response-only NLL; the engine updates at accumulation boundaries."""
        self.model.train()
        b = batch.to(self.mesh.device)
        loss, n = sft_loss(self.engine(b.input_ids, b.attention_mask), b, self.model.backend)
        self.engine.backward(loss)
        stepped = self.engine.step() or {}
        return {"loss": loss.item(), "tokens": float(n), **stepped}

    def sft_eval(self, batch: LMBatch) -> dict[str, float]:
        """Summed NLL and token count, so the driver can form a token-weighted mean over ranks."""
        self.model.eval()
        with torch.no_grad():
            b = batch.to(self.mesh.device)
            loss, n = sft_loss(self.engine(b.input_ids, b.attention_mask), b, self.model.backend)
        return {"nll_sum": loss.item() * float(n), "tokens": float(n)}

    def save_state(self, directory: str | Path, client_state: dict) -> None:
        self.engine.save(directory, client_state)

    def load_state(self, directory: str | Path) -> dict:
        return self.engine.load(directory)

    def export(self, path: str | Path, tokenizer_dir: str | None = None) -> str:
        tok = None
        if tokenizer_dir:
            from models.tokenizer import load_tokenizer

            tok = load_tokenizer(tokenizer_dir)
        return str(export_hf(self.engine, self.mesh, path, tok))

    def describe(self) -> dict:
        """Where this rank lives and how much of the model it stores."""
        return {"pid": os.getpid(), "rank": self.mesh.rank, "tp_rank": self.mesh.tp_rank,
                "dp_rank": self.mesh.dp_rank, "numel": self.engine.partitioned_numel()}
