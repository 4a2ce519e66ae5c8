"""ModelConfig: the one description of every model we build, GPT-2 style or Llama style.

Owns shape and architecture choices only; parallel layout and training settings live elsewhere.
Must not import torch.distributed, deepspeed, megatron or ray.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator


class ModelConfig(BaseModel):
    """Decoder-only transformer shape.

    `arch="gpt2"`: learned positions, LayerNorm, GELU MLP, biases, tied embeddings (GPT-1/2/3).
    `arch="llama"`: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, untied LM head.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["gpt2", "llama"] = "gpt2"
    vocab_size: int = 512
    max_seq_len: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: as many as n_heads (multi-head attention)
    d_ff: int | None = None  # None: 4 * d_model (gpt2) or the Llama 8/3 rule rounded to 64
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    activation: Literal["gelu_new", "gelu", "relu", "silu"] | None = None  # None: arch default
    tie_embeddings: bool | None = None  # None: arch default (gpt2 tied, llama untied)
    bias: bool | None = None  # None: arch default (gpt2 biased, llama not)
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # How attention runs, not what it computes (never exported to HF): "auto" = the Triton kernel on
    # CUDA when triton imports, SDPA otherwise; "sdpa" or "triton" force one path.
    attention: Literal["auto", "sdpa", "triton"] = "auto"

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.kv_heads}")
        if self.arch == "gpt2" and self.kv_heads != self.n_heads:
            raise ValueError("grouped-query attention (n_kv_heads < n_heads) needs arch='llama'")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary of {self.vocab_size}")
        return self

    # Derived values are properties, never mutated fields.
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.arch == "gpt2":
            return 4 * self.d_model
        return 64 * ((int(8 * self.d_model / 3) + 63) // 64)  # Llama: 2/3 of 4d, rounded up to 64

    @property
    def act(self) -> str:
        return self.activation or ("gelu_new" if self.arch == "gpt2" else "silu")

    @property
    def tied(self) -> bool:
        return self.arch == "gpt2" if self.tie_embeddings is None else self.tie_embeddings

    @property
    def use_bias(self) -> bool:
        return self.arch == "gpt2" if self.bias is None else self.bias

    def num_params(self) -> int:
        """Parameter count of the LM (embeddings included once when tied)."""
        d, f, kv = self.d_model, self.ffn_dim, self.kv_heads * self.head_dim
        attn = d * (d + 2 * kv) + d * d
        mlp = (3 if self.arch == "llama" else 2) * d * f
        per_norm = 2 * d if self.arch == "gpt2" else d
        biases = (d + 2 * kv + d + f + d) if self.use_bias else 0
        layer = attn + mlp + 2 * per_norm + biases
        emb = self.vocab_size * d + (self.max_seq_len * d if self.arch == "gpt2" else 0)
        head = 0 if self.tied else self.vocab_size * d
        return self.n_layers * layer + emb + head + per_norm


# Named shapes, from the CPU toy to GPT-3 sizes (Brown et al. 2020, Table 2.1).
PRESETS: dict[str, dict] = {
    "toy": dict(arch="gpt2", d_model=64, n_layers=2, n_heads=4, max_seq_len=128),
    "tiny": dict(arch="gpt2", d_model=128, n_layers=2, n_heads=4, max_seq_len=128),
    "small": dict(arch="gpt2", d_model=256, n_layers=4, n_heads=4, max_seq_len=256),
    "gpt3-125m": dict(arch="gpt2", vocab_size=50257, max_seq_len=2048, d_model=768, n_layers=12, n_heads=12),
    "gpt3-350m": dict(arch="gpt2", vocab_size=50257, max_seq_len=2048, d_model=1024, n_layers=24, n_heads=16),
    "gpt3-1.3b": dict(arch="gpt2", vocab_size=50257, max_seq_len=2048, d_model=2048, n_layers=24, n_heads=16),
    "gpt3-6.7b": dict(arch="gpt2", vocab_size=50257, max_seq_len=2048, d_model=4096, n_layers=32, n_heads=32),
    "gpt3-175b": dict(arch="gpt2", vocab_size=50257, max_seq_len=2048, d_model=12288, n_layers=96, n_heads=96),
    "llama-tiny": dict(arch="llama", d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128),
    "llama-7b": dict(arch="llama", vocab_size=32000, max_seq_len=4096, d_model=4096, n_layers=32, n_heads=32,
                     d_ff=11008, norm_eps=1e-5),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def check_tp_shape(cfg: ModelConfig, tp_size: int, vocab: bool = True) -> None:
    """Shapes a tensor-parallel degree must divide; raised before any layer is built. vocab=False
    when the vocabulary is not known yet (the launcher's config check, before the tokenizer exists)."""
    sizes = [("n_heads", cfg.n_heads), ("n_kv_heads", cfg.kv_heads), ("ffn_dim", cfg.ffn_dim)]
    for name, value in sizes + ([("vocab_size", cfg.vocab_size)] if vocab else []):
        if value % tp_size:
            raise ValueError(f"model {name}={value} is not divisible by tensor-parallel size {tp_size}")
