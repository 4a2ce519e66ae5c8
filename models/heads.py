"""Models with heads: the LM (policy, reference) and the scalar model (critic per token, reward at the end).

Must not import torch.distributed, deepspeed, megatron or ray.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models.config import ModelConfig
from models.transformer import KVCache, LayerBackend, LocalBackend, Transformer


class CausalLM(nn.Module):
    """Transformer + LM head → logits (B, T, V). Tied to the token embedding when cfg.tied."""

    def __init__(self, cfg: ModelConfig, backend: LayerBackend | None = None):
        super().__init__()
        self.backend = backend = backend or LocalBackend()
        self.cfg = cfg
        self.body = Transformer(cfg, backend)
        self.lm_head = None if cfg.tied else backend.column_linear(cfg.d_model, cfg.vocab_size, bias=False)
        if isinstance(self.lm_head, nn.Linear):
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cu_seqlens: torch.Tensor | None = None,
        last_only: bool = False,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) — this rank's vocabulary shard under tensor parallelism — or (B, 1, V)
        with last_only (what decoding needs). Packed rows: see Transformer.forward."""
        h = self.body(input_ids, attention_mask, position_ids, cache, cu_seqlens, segments)  # (B, T, d)
        if last_only:
            h = h[:, -1:]
        if self.lm_head is None:
            return self.backend.tied_logits(h, self.body.embed.weight)
        return self.lm_head(h)


class ScoreModel(nn.Module):
    """Transformer + one scalar per token, no bias (as HF's *ForSequenceClassification with num_labels=1).

    The critic uses every token's value; the reward model reads the value at the last real token.
    """

    def __init__(self, cfg: ModelConfig, backend: LayerBackend | None = None):
        super().__init__()
        self.cfg = cfg
        self.body = Transformer(cfg, backend or LocalBackend())
        self.score = nn.Linear(cfg.d_model, 1, bias=False)
        nn.init.normal_(self.score.weight, std=1.0 / (cfg.d_model + 1) ** 0.5)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Values (B, T), fp32. Packed rows: see Transformer.forward."""
        h = self.body(input_ids, attention_mask, position_ids, None, cu_seqlens, segments)  # (B, T, d)
        return self.score(h).squeeze(-1).float()

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Reward (B,): the value at each row's last real token (left or right padding alike)."""
        return gather_last(self(input_ids, attention_mask, position_ids), attention_mask)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the rightmost True of each row of a (B, T) mask."""
    T = attention_mask.shape[-1]
    idx = torch.arange(T, device=attention_mask.device)
    return (idx * attention_mask.long()).argmax(-1)


def gather_last(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """values (B, T) → (B,) at each row's last real token."""
    return values.gather(-1, last_token_index(attention_mask)[:, None]).squeeze(-1)
