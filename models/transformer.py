"""The decoder body: blocks built from layer *slots* that a backend fills, plus the KV cache.

The local backend fills the slots with plain torch layers; the tensor-parallel backend in
parallel/tensor_parallel.py fills the same slots with Megatron-core layers, so one model definition
serves both (Megatron-core's own split of layer spec from layer class).
Must not import torch.distributed, deepspeed, megatron or ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention import attention, segment_ids
from models.config import ModelConfig


class LayerBackend(Protocol):
    """What a model needs from a parallel layout.

    column: output features split across tensor-parallel ranks (no gather).
    row: input features split across ranks, output all-reduced.
    The vocabulary ops take logits that may be split over the vocabulary (the last dim).
    replicated: a weight every rank holds whole but applies to its own shard of the work (the
    per-head q/k norms): identity forward, gradient summed over the tensor-parallel ranks.
    """

    tp_size: int

    def column_linear(self, d_in: int, d_out: int, bias: bool) -> nn.Module: ...
    def row_linear(self, d_in: int, d_out: int, bias: bool) -> nn.Module: ...
    def vocab_embedding(self, vocab_size: int, dim: int) -> nn.Module: ...
    def tied_logits(self, h: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor: ...
    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor: ...
    def token_logprobs(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...
    def entropy(self, logits: torch.Tensor) -> torch.Tensor: ...
    def replicated(self, weight: torch.Tensor) -> torch.Tensor: ...


class LocalBackend:
    """Single-process layers."""

    tp_size = 1

    def column_linear(self, d_in: int, d_out: int, bias: bool) -> nn.Module:
        return nn.Linear(d_in, d_out, bias=bias)

    def row_linear(self, d_in: int, d_out: int, bias: bool) -> nn.Module:
        return nn.Linear(d_in, d_out, bias=bias)

    def vocab_embedding(self, vocab_size: int, dim: int) -> nn.Module:
        return nn.Embedding(vocab_size, dim)

    def tied_logits(self, h: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(h, embedding_weight)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def token_logprobs(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(labels): (..., V), (...) → (...), in fp32."""
        logits = logits.float()
        return logits.gather(-1, labels[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Entropy of softmax(logits) over the last dim, in fp32."""
        logp = logits.float().log_softmax(-1)
        return -(logp.exp() * logp).sum(-1)

    def replicated(self, weight: torch.Tensor) -> torch.Tensor:
        return weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, backend: LayerBackend | None = None):
        super().__init__()
        self.eps, self.backend = eps, backend or LocalBackend()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as Llama does, then cast back before the gain.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.backend.replicated(self.weight) * x32.to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.llama_style:
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "gelu_new":
        return F.gelu(x, approximate="tanh")
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}[name](x)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None, device=None) -> torch.Tensor:
    """RoPE frequencies (D/2,): plain (Su et al. 2021), linearly scaled (position interpolation,
    Chen et al. 2023), or Llama 3's: long wavelengths divided by `factor`, short ones kept, a smooth
    ramp between (Meta's Llama 3.1 reference code, as transformers' `_compute_llama3_parameters`)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.int64).float() / head_dim)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        ramp = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, ramp, scaled)
    return inv_freq


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for `positions` (B, T): cos, sin of shape (B, 1, T, head_dim), fp32.

    Half-split layout (rotate_half), as in Hugging Face's Llama, so imported weights match.
    """
    inv_freq = rope_inv_freq(head_dim, theta, scaling, positions.device)
    freqs = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, D)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


@dataclass
class KVCache:
    """Preallocated keys and values for every layer; `length` positions are filled."""

    keys: list[torch.Tensor]  # n_layers × (B, Hkv, S_max, D)
    values: list[torch.Tensor]  # n_layers × (B, Hkv, S_max, D)
    length: int = 0

    @classmethod
    def for_model(cls, body: Transformer, batch: int, max_len: int) -> KVCache:
        """Empty cache sized for this rank's key/value heads, in the model's dtype and device."""
        attn = body.blocks[0].attn
        like = body.norm.weight
        shape = (batch, attn.n_kv, max_len, body.cfg.head_dim)
        keys = [like.new_zeros(shape) for _ in body.blocks]
        values = [like.new_zeros(shape) for _ in body.blocks]
        return cls(keys, values)

    def select(self, index: torch.Tensor) -> None:
        """Keep the batch rows `index` only (rows that finished decoding leave the batch)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write T new positions of one layer; return all filled positions (B, Hkv, length + T, D)."""
        end = self.length + k.shape[2]
        if end > self.keys[layer].shape[2]:
            raise ValueError(f"KV cache holds {self.keys[layer].shape[2]} positions, {end} requested")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: LayerBackend, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        d, hd, qkv_bias = cfg.d_model, cfg.head_dim, cfg.use_qkv_bias
        self.n_heads = cfg.n_heads // backend.tp_size  # heads held by this rank
        self.n_kv = cfg.kv_heads // backend.tp_size
        self.q_proj = backend.column_linear(d, cfg.n_heads * hd, qkv_bias)
        self.k_proj = backend.column_linear(d, cfg.kv_heads * hd, qkv_bias)
        self.v_proj = backend.column_linear(d, cfg.kv_heads * hd, qkv_bias)
        self.o_proj = backend.row_linear(cfg.n_heads * hd, d, cfg.use_bias)
        # Qwen3: RMSNorm over each head's D features; the gains are shared by all heads, so under
        # tensor parallelism each rank's heads contribute a part of their gradient.
        self.q_norm = RMSNorm(hd, cfg.norm_eps, backend) if cfg.use_qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps, backend) if cfg.use_qk_norm else None

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        B, T, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_proj(x).view(B, T, self.n_heads, hd)  # (B, T, Hq, D)
        k = self.k_proj(x).view(B, T, self.n_kv, hd)  # (B, T, Hkv, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, hd).transpose(1, 2)  # (B, Hkv, T, D)
        if ctx.rope is not None:
            q, k = apply_rope(q, *ctx.rope), apply_rope(k, *ctx.rope)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)  # (B, Hkv, S, D)
        y = attention(q, k, v, causal=True, key_padding_mask=ctx.key_padding_mask, segments=ctx.segments,
                      window=self.cfg.sliding_window, impl=self.cfg.attention)  # (B, Hq, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * hd))  # (B, T, d)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: LayerBackend):
        super().__init__()
        self.act, self.gated = cfg.act, cfg.llama_style
        d, f, bias = cfg.d_model, cfg.ffn_dim, cfg.use_bias
        self.up_proj = backend.column_linear(d, f, bias)
        if self.gated:  # SwiGLU (Shazeer 2020): down(act(gate(x)) * up(x))
            self.gate_proj = backend.column_linear(d, f, bias)
        self.down_proj = backend.row_linear(f, d, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(activate(self.gate_proj(x), self.act) * self.up_proj(x))
        return self.down_proj(activate(self.up_proj(x), self.act))


class Block(nn.Module):
    """Pre-norm residual block (GPT-2 and Llama alike)."""

    def __init__(self, cfg: ModelConfig, backend: LayerBackend, layer_idx: int):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = SelfAttention(cfg, backend, layer_idx)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg, backend)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), ctx)
        return x + self.mlp(self.mlp_norm(x))


@dataclass
class ForwardContext:
    """Per-call inputs shared by all blocks."""

    key_padding_mask: torch.Tensor | None  # (B, S) bool over cached + new positions
    segments: torch.Tensor | None  # (B, T) packed sequence of each position, -1 on padding
    cache: KVCache | None
    rope: tuple[torch.Tensor, torch.Tensor] | None  # cos, sin (B, 1, T, D)


def init_gpt2_weights(module: nn.Module) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases (norms keep their unit gains)."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token of each (left-padded) row."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position ids (1, total) restarting at 0 at each packed sequence's start."""
    idx = torch.arange(total, device=cu_seqlens.device)
    segment = torch.bucketize(idx, cu_seqlens[1:], right=True).clamp(max=len(cu_seqlens) - 2)
    return (idx - cu_seqlens[segment]).clamp(min=0)[None]


class Transformer(nn.Module):
    """Token ids → final hidden states (B, T, d_model)."""

    def __init__(self, cfg: ModelConfig, backend: LayerBackend | None = None):
        super().__init__()
        backend = backend or LocalBackend()
        self.cfg = cfg
        self.embed = backend.vocab_embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = None if cfg.llama_style else nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, backend, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.apply(init_gpt2_weights)
        # Residual-branch outputs scaled by 1/sqrt(2 * n_layers) (Radford et al. 2019, §2.3).
        for block in self.blocks:
            for out in (block.attn.o_proj, block.mlp.down_proj):
                if isinstance(out, nn.Linear):
                    nn.init.normal_(out.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cu_seqlens: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T). attention_mask (B, S): over cache + new tokens, True on real tokens.

        Packed sequences: segments (B, T), each position's sequence (-1: padding), with position_ids
        given; or cu_seqlens, the offsets of sequences packed along one row (B == 1).
        position_ids default to 0..T-1 after the cached length (or restart per packed sequence).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if cu_seqlens is not None:
            segments = segment_ids(cu_seqlens, T)[None]
            if position_ids is None:
                position_ids = positions_from_cu_seqlens(cu_seqlens, T)
        if position_ids is None:
            if segments is not None:
                raise ValueError("packed rows (segments) need their position_ids")
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None].expand(B, T)
        if int(position_ids.max()) >= self.cfg.max_seq_len:
            raise ValueError(f"position {int(position_ids.max())} exceeds max_seq_len={self.cfg.max_seq_len}")
        x = self.embed(input_ids)  # (B, T, d)
        rope = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(position_ids)
        else:
            rope = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, self.cfg.rope_scaling)
        kpm = attention_mask.bool() if attention_mask is not None else None
        ctx = ForwardContext(kpm, segments, cache, rope)
        for block in self.blocks:
            x = block(x, ctx)
        if cache is not None:
            cache.length += T
        return self.norm(x)
