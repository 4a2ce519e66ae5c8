"""ModelConfig: the one description of every model we build, GPT-2 style or Llama style.

Owns shape and architecture choices only; parallel layout and training settings live elsewhere.
Must not import torch.distributed, deepspeed, megatron or ray.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Arch = Literal["gpt2", "llama", "qwen2", "qwen3", "mistral"]
ROPE_TYPES = ("default", "linear", "llama3")


class ModelConfig(BaseModel):
    """Decoder-only transformer shape.

    `arch="gpt2"`: learned positions, LayerNorm, GELU MLP, biases, tied embeddings (GPT-1/2/3).
    `arch="llama"`: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, untied LM head. The other
    families are Llama-style blocks with one difference each: `qwen2` has biases on the q/k/v
    projections, `qwen3` an RMSNorm on every query and key head (and a free head_dim), `mistral` a
    sliding attention window. `arch` also names the transformers class a checkpoint is exported as.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Arch = "gpt2"
    vocab_size: int = Field(512, ge=1)
    max_seq_len: int = Field(256, ge=1)
    d_model: int = Field(256, ge=1)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    n_kv_heads: int | None = Field(None, ge=1)  # None: as many as n_heads (multi-head attention)
    d_head: int | None = Field(None, ge=1)  # None: d_model // n_heads (Qwen3 sets its own)
    d_ff: int | None = Field(None, ge=1)  # None: 4 * d_model (gpt2) or the Llama 8/3 rule rounded to 64
    norm_eps: float = Field(1e-5, gt=0)
    rope_theta: float = Field(10000.0, gt=0)
    # RoPE frequency scaling as in the HF config: {"rope_type": "linear", "factor": f} or Llama 3's
    # {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; None: plain RoPE.
    rope_scaling: dict[str, Any] | None = None
    activation: Literal["gelu_new", "gelu", "relu", "silu"] | None = None  # None: arch default
    tie_embeddings: bool | None = None  # None: arch default (gpt2 tied, the others untied)
    bias: bool | None = None  # biases of the linear layers; None: arch default (gpt2 biased, the others not)
    sliding_window: int | None = Field(None, ge=1)  # mistral: a token attends to at most this many
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # How attention runs, not what it computes (never exported to HF): "auto" = the Triton kernel on
    # CUDA when triton imports, SDPA otherwise; "sdpa" or "triton" force one path.
    attention: Literal["auto", "sdpa", "triton"] = "auto"

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_head is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.kv_heads}")
        if self.arch == "gpt2":
            extras = {"n_kv_heads < n_heads": self.kv_heads != self.n_heads, "d_head": self.d_head,
                      "rope_scaling": self.rope_scaling}
            used = [k for k, v in extras.items() if v]
            if used:
                raise ValueError(f"{', '.join(used)} need a Llama-style arch (llama, qwen2, qwen3, mistral), "
                                 f"not gpt2")
            if not self.use_bias:
                raise ValueError("arch=gpt2 has biases (transformers' GPT-2 has no bias switch); use arch=llama")
        if self.arch in ("qwen2", "qwen3", "mistral") and self.use_bias:
            raise ValueError(f"arch={self.arch} has no biases on its o_proj and MLP (bias must be false)")
        if self.sliding_window is not None and self.arch != "mistral":
            raise ValueError(f"sliding_window is a Mistral feature (arch=mistral), not {self.arch}'s")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in ROPE_TYPES:
                raise ValueError(f"rope_scaling type {kind!r} is not supported (one of {list(ROPE_TYPES)})")
            if self.rope_scaling.get("partial_rotary_factor", 1.0) != 1.0:
                raise ValueError("rope_scaling.partial_rotary_factor other than 1.0 is not supported")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary of {self.vocab_size}")
        return self

    # Derived values are properties, never mutated fields.
    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    @property
    def llama_style(self) -> bool:
        """RoPE, RMSNorm, SwiGLU, grouped-query attention: every arch but gpt2."""
        return self.arch != "gpt2"

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if not self.llama_style:
            return 4 * self.d_model
        return 64 * ((int(8 * self.d_model / 3) + 63) // 64)  # Llama: 2/3 of 4d, rounded up to 64

    @property
    def act(self) -> str:
        return self.activation or ("silu" if self.llama_style else "gelu_new")

    @property
    def tied(self) -> bool:
        return self.arch == "gpt2" if self.tie_embeddings is None else self.tie_embeddings

    @property
    def use_bias(self) -> bool:
        return self.arch == "gpt2" if self.bias is None else self.bias

    @property
    def use_qkv_bias(self) -> bool:
        """Biases on the q/k/v projections: Qwen2 has them (and no others)."""
        return self.arch == "qwen2" or self.use_bias

    @property
    def use_qk_norm(self) -> bool:
        """Qwen3's RMSNorm over every query and key head, before RoPE."""
        return self.arch == "qwen3"

    def num_params(self) -> int:
        """Parameter count of the LM (embeddings included once when tied)."""
        d, f, q, kv = self.d_model, self.ffn_dim, self.n_heads * self.head_dim, self.kv_heads * self.head_dim
        attn = d * (q + 2 * kv) + q * d
        mlp = (3 if self.llama_style else 2) * d * f
        per_norm = d if self.llama_style else 2 * d
        biases = (q + 2 * kv) * self.use_qkv_bias + (d + f * (1 + self.llama_style) + d) * self.use_bias
        qk_norms = 2 * self.head_dim if self.use_qk_norm else 0
        layer = attn + mlp + 2 * per_norm + biases + qk_norms
        emb = self.vocab_size * d + (0 if self.llama_style else self.max_seq_len * d)
        head = 0 if self.tied else self.vocab_size * d
        return self.n_layers * layer + emb + head + per_norm


    def forward_flops(self, tokens: int, context: float, head_tokens: int = 0) -> float:
        """FLOPs (2 per multiply-add) of a forward over `tokens` tokens that each attend to `context`
        keys, with the LM head on `head_tokens` of them: the matmuls of every layer and the attention
        scores and values (PaLM, Chowdhery et al. 2022, appendix B); norms and activations left out.
        A backward costs twice its forward."""
        d, f, q, kv = self.d_model, self.ffn_dim, self.n_heads * self.head_dim, self.kv_heads * self.head_dim
        matmuls = d * (q + 2 * kv) + q * d + (3 if self.llama_style else 2) * d * f
        per_token = 2 * matmuls + 4 * q * context  # QKᵀ and AV: 2·q·context each
        return self.n_layers * per_token * tokens + 2 * d * self.vocab_size * head_tokens


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
    # Llama 3.2 1B and Llama 2 70B's shapes (for `instructrl plan`)
    "llama-1b": dict(arch="llama", vocab_size=128256, max_seq_len=4096, d_model=2048, n_layers=16, n_heads=32,
                     n_kv_heads=8, d_ff=8192, tie_embeddings=True),
    "llama-70b": dict(arch="llama", vocab_size=32000, max_seq_len=4096, d_model=8192, n_layers=80, n_heads=64,
                      n_kv_heads=8, d_ff=28672),
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
