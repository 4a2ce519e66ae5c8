"""Worker roles: one class per role, each hosting one model shard on one rank.

A worker's public methods are what the coordinator calls through a group (`group.map(Worker.method,
batch)`); they take and return CPU tensors and plain values, and move work to the rank's device.
Shared machinery (engine, checkpoints, export) comes from `ModelWorker`; no role flags.
Must not import ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from models.generation import Generation, SamplingParams, generate, pad_generation
from models.heads import gather_last
from models.transformer import LayerBackend, LocalBackend
from parallel.engine import EngineConfig, OptimConfig
from parallel.host import ModelSource, build_engine, export_hf
from parallel.mesh import Mesh
from rlhf.algo.masked import masked_mean
from rlhf.algo.ranking import ranking_loss
from rlhf.batching import Encoded, LMBatch, collate_lm, collate_prompts

LOCAL = LocalBackend()


def sft_loss(logits: torch.Tensor, batch: LMBatch, backend: LayerBackend = LOCAL) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL over response tokens (InstructGPT §3.5 SFT: the prompt conditions but is not predicted)
    and the token count. logits (B, T, V) predict input_ids[:, 1:]; V may be a TP vocabulary shard."""
    logprobs = backend.token_logprobs(logits[:, :-1], batch.input_ids[:, 1:])  # (B, T-1)
    mask = batch.loss_mask[:, 1:]  # (B, T-1): targets that are response tokens
    return -masked_mean(logprobs, mask), mask.sum()


class ModelWorker:
    """One rank's model in an engine, with the calls every role shares."""

    kind = "lm"

    def __init__(self, mesh: Mesh, source: ModelSource, engine: EngineConfig, optim: OptimConfig | None = None,
                 total_steps: int = 1, micro_batch: int = 1):
        self.mesh = mesh
        self.cfg, state = source.load()
        self.engine = build_engine(self.kind, self.cfg, state, engine, optim, mesh, total_steps, micro_batch)
        self.model = self.engine.module

    def save_state(self, directory: str | Path, client_state: dict) -> None:
        self.engine.save(directory, client_state)

    def load_state(self, directory: str | Path) -> dict:
        return self.engine.load(directory)

    def export(self, path: str | Path) -> str:
        """Consolidated HF checkpoint (collective: call on every rank; rank 0 writes)."""
        return str(export_hf(self.engine, self.mesh, path))

    def describe(self) -> dict:
        """Where this rank lives and how much of the model it stores."""
        return {"pid": os.getpid(), "rank": self.mesh.rank, "tp_rank": self.mesh.tp_rank,
                "dp_rank": self.mesh.dp_rank, "numel": self.engine.partitioned_numel()}


class PolicyWorker(ModelWorker):
    """The policy (InstructGPT's π): SFT here; PPO generation and updates build on it."""

    def logits(self, batch: LMBatch) -> torch.Tensor:
        """Full-vocabulary logits (B, T, V), fp32 on CPU (a test and debugging view)."""
        self.model.eval()
        with torch.no_grad():
            b = batch.to(self.mesh.device)
            out = self.model.backend.gather_vocab(self.engine(b.input_ids, b.attention_mask))
        return out.float().cpu()

    def generate(self, prompts: list[list[int]], width: int, params: SamplingParams, eos_id: int, pad_id: int,
                 seed: int) -> Generation:
        """Sample responses for token-id prompts, left-padded to `width` and right-padded to
        max_new_tokens, so every data-parallel rank returns tensors of the same shape."""
        self.model.eval()
        ids, mask = collate_prompts(prompts, pad_id, width)
        # TP peers share the seed (they must sample identical tokens); DP ranks differ.
        gen = torch.Generator(device=self.mesh.device).manual_seed(seed + 1_000_003 * self.mesh.dp_rank)
        out = generate(self.model, ids.to(self.mesh.device), mask.to(self.mesh.device), params, eos_id, pad_id, gen)
        return pad_generation(out, params.max_new_tokens, pad_id).to("cpu")

    def sft_step(self, batch: LMBatch) -> dict[str, float]:
        """One micro-batch of response-only NLL; the engine updates at accumulation boundaries."""
        self.model.train()
        b = batch.to(self.mesh.device)
        loss, n = sft_loss(self.engine(b.input_ids, b.attention_mask), b, self.model.backend)
        self.engine.backward(loss)
        stepped = self.engine.step() or {}
        return {"loss": loss.item(), "tokens": float(n), **stepped}

    def sft_eval(self, batch: LMBatch) -> dict[str, float]:
        """Summed NLL and token count, so the driver forms a token-weighted mean over ranks."""
        self.model.eval()
        with torch.no_grad():
            b = batch.to(self.mesh.device)
            loss, n = sft_loss(self.engine(b.input_ids, b.attention_mask), b, self.model.backend)
        return {"nll_sum": loss.item() * float(n), "tokens": float(n)}


class RewardWorker(ModelWorker):
    """The reward model r(x, y): a scalar read at the last real token of prompt + response."""

    kind = "score"

    def _rewards(self, groups: list[list[Encoded]], pad_id: int) -> tuple[torch.Tensor, list[int]]:
        # Every response of every prompt in one padded batch: each is forwarded exactly once.
        batch = collate_lm([e for g in groups for e in g], pad_id).to(self.mesh.device)
        values = self.engine(batch.input_ids, batch.attention_mask)  # (N, T)
        return gather_last(values, batch.attention_mask), [len(g) for g in groups]

    def rm_step(self, groups: list[list[Encoded]], pad_id: int) -> dict[str, float]:
        """One batch of rankings (each inner list: one prompt's responses, best first)."""
        self.model.train()
        rewards, sizes = self._rewards(groups, pad_id)
        loss, metrics = ranking_loss(rewards, sizes)
        self.engine.backward(loss)
        stepped = self.engine.step() or {}
        return {"loss": loss.item(), **metrics, "reward_mean": rewards.mean().item(), **stepped}

    def rm_eval(self, groups: list[list[Encoded]], pad_id: int) -> dict:
        """Sums over this rank's prompts (loss, accuracy, margin) and every response's reward."""
        self.model.eval()
        with torch.no_grad():
            rewards, sizes = self._rewards(groups, pad_id)
            loss, m = ranking_loss(rewards, sizes)
        n = float(len(sizes))
        return {"loss_sum": loss.item() * n, "accuracy_sum": m["accuracy"] * n, "margin_sum": m["margin"] * n,
                "prompts": n, "rewards": rewards.float().cpu()}

    def scores(self, batch: LMBatch) -> torch.Tensor:
        """Rewards (B,) of whole sequences, read at each row's last real token."""
        self.model.eval()
        with torch.no_grad():
            b = batch.to(self.mesh.device)
            return gather_last(self.engine(b.input_ids, b.attention_mask), b.attention_mask).float().cpu()
