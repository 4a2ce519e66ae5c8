"""Hugging Face interop: read and write transformers checkpoint directories (config.json + safetensors).

LMs round-trip in their own family (GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM,
Qwen3ForCausalLM, MistralForCausalLM); scalar models (reward, critic) as that family's
*ForSequenceClassification with num_labels=1, so AutoModelForSequenceClassification returns the same score.
Must not import torch.distributed, deepspeed, megatron or ray.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from models.attention import AttentionImpl, attention
from models.config import ModelConfig
from models.errors import InputError
from models.heads import CausalLM, ScoreModel

HEADS = ("lm_head.weight", "score.weight")  # the LM head and the scalar (reward/value) head


class CheckpointError(InputError):
    """A checkpoint directory cannot be used; the message names the file and what is wrong with it."""

# transformers class-name prefix of each Llama-style family (XForCausalLM, XForSequenceClassification).
LLAMA_STYLE = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}


def _prefix(arch: str) -> str:
    return "transformer." if arch == "gpt2" else "model."


def _rope_from_hf(hf: dict, source: str) -> tuple[float, dict | None]:
    """(theta, scaling or None) from transformers 5's `rope_parameters` or the older `rope_scaling`."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 1e4))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ("linear", "llama3"):
        raise ValueError(f"{source}: rope type {kind!r} is not supported (default, linear or llama3)")
    return theta, {"rope_type": kind, **{k: v for k, v in rope.items() if k not in ("type", "rope_type")}}


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """ModelConfig from a transformers config dict; unsupported variants fail here, not in a matmul."""
    kind = hf.get("model_type")
    special = {k: hf.get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    special = {k: (v[0] if isinstance(v, list) else v) for k, v in special.items()}
    special = {k: v for k, v in special.items() if v is not None and 0 <= v < hf["vocab_size"]}
    if kind == "gpt2":
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
            raise ValueError(f"{source}: GPT-2 attention scaling variants are not supported")
        return ModelConfig(
            arch="gpt2", vocab_size=hf["vocab_size"], max_seq_len=hf["n_positions"], d_model=hf["n_embd"],
            n_layers=hf["n_layer"], n_heads=hf["n_head"], d_ff=hf.get("n_inner"),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=hf.get("activation_function", "gelu_new"),
            tie_embeddings=hf.get("tie_word_embeddings", True), bias=True, **special,
        )
    if kind not in LLAMA_STYLE:
        raise ValueError(f"{source}: model_type {kind!r} is not supported "
                         f"(gpt2, {', '.join(LLAMA_STYLE)})")
    bias = False
    if kind == "llama":
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            raise ValueError(f"{source}: attention_bias and mlp_bias must agree")
        bias = bool(hf.get("attention_bias", False))
    if kind == "qwen3" and hf.get("attention_bias", False):
        raise ValueError(f"{source}: Qwen3 with attention_bias=true is not supported")
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if kind in ("qwen2", "qwen3") and (hf.get("use_sliding_window") or layer_types != {"full_attention"}):
        raise ValueError(f"{source}: {kind} sliding-window layers (use_sliding_window=true) are not supported")
    theta, scaling = _rope_from_hf(hf, source)
    return ModelConfig(
        arch=kind, vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
        d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads"), d_ff=hf["intermediate_size"], d_head=hf.get("head_dim"),
        norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
        activation=hf.get("hidden_act", "silu"), tie_embeddings=hf.get("tie_word_embeddings", False), bias=bias,
        sliding_window=hf.get("sliding_window") if kind == "mistral" else None, **special,
    )


def config_to_hf(cfg: ModelConfig, scalar: bool):
    """A transformers config object for `cfg` in its own family; scalar=True gives the
    sequence-classification form."""
    import transformers

    tokens = dict(pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
    if cfg.arch == "gpt2":
        arch = "GPT2ForSequenceClassification" if scalar else "GPT2LMHeadModel"
        hf = transformers.GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_inner=cfg.ffn_dim, activation_function=cfg.act, layer_norm_epsilon=cfg.norm_eps,
            tie_word_embeddings=cfg.tied, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **tokens,
        )
    else:
        family = LLAMA_STYLE[cfg.arch]
        arch = f"{family}ForSequenceClassification" if scalar else f"{family}ForCausalLM"
        extra = {
            "llama": dict(head_dim=cfg.head_dim, attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias),
            "qwen2": dict(use_sliding_window=False),
            "qwen3": dict(head_dim=cfg.head_dim, attention_bias=False, use_sliding_window=False),
            "mistral": dict(head_dim=cfg.head_dim, sliding_window=cfg.sliding_window),
        }[cfg.arch]
        if cfg.arch == "qwen2" and cfg.head_dim * cfg.n_heads != cfg.d_model:
            raise ValueError("transformers' Qwen2 derives head_dim from hidden_size; d_head must be d_model // n_heads")
        hf = getattr(transformers, f"{family}Config")(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
            hidden_act=cfg.act, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
            tie_word_embeddings=cfg.tied,
            rope_parameters={"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta},
            **extra, **tokens,
        )
    hf.architectures = [arch]
    if scalar:
        hf.num_labels = 1
    return hf


def _layer_names(arch: str, i: int) -> dict[str, str]:
    """Our per-layer parameter names → HF's (without the model prefix)."""
    if arch == "gpt2":
        h = f"h.{i}."
        return {"attn_norm": h + "ln_1", "mlp_norm": h + "ln_2", "attn.o_proj": h + "attn.c_proj",
                "mlp.up_proj": h + "mlp.c_fc", "mlp.down_proj": h + "mlp.c_proj"}
    h = f"layers.{i}."
    return {"attn_norm": h + "input_layernorm", "mlp_norm": h + "post_attention_layernorm",
            "attn.q_norm": h + "self_attn.q_norm", "attn.k_norm": h + "self_attn.k_norm",
            **{f"attn.{p}_proj": f"{h}self_attn.{p}_proj" for p in "qkvo"},
            **{f"mlp.{p}_proj": f"{h}mlp.{p}_proj" for p in ("gate", "up", "down")}}


def _global_names(arch: str) -> dict[str, str]:
    if arch == "gpt2":
        return {"body.embed": "wte", "body.pos_embed": "wpe", "body.norm": "ln_f"}
    return {"body.embed": "embed_tokens", "body.norm": "norm"}


def to_hf_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our full (unsharded) state dict → HF names and layouts."""
    pre, out = _prefix(cfg.arch), {}
    conv1d = cfg.arch == "gpt2"  # GPT-2 stores Linear weights transposed (Conv1D, (in, out))
    for ours, theirs in _global_names(cfg.arch).items():
        for suffix in ("weight", "bias"):
            if f"{ours}.{suffix}" in state:
                out[f"{pre}{theirs}.{suffix}"] = state[f"{ours}.{suffix}"]
    for i in range(cfg.n_layers):
        for ours, theirs in _layer_names(cfg.arch, i).items():
            for suffix in ("weight", "bias"):
                t = state.get(f"body.blocks.{i}.{ours}.{suffix}")
                if t is not None:
                    is_linear = suffix == "weight" and "norm" not in ours
                    out[f"{pre}{theirs}.{suffix}"] = t.t() if conv1d and is_linear else t
        if cfg.arch == "gpt2":  # fuse q, k, v into c_attn
            b = f"body.blocks.{i}.attn."
            w = torch.cat([state[b + f"{p}_proj.weight"] for p in "qkv"], dim=0)  # (3d, d)
            out[f"{pre}h.{i}.attn.c_attn.weight"] = w.t()
            out[f"{pre}h.{i}.attn.c_attn.bias"] = torch.cat([state[b + f"{p}_proj.bias"] for p in "qkv"])
    for head in ("lm_head.weight", "score.weight"):
        if head in state:
            out[head] = state[head]
    return {k: v.detach().contiguous() for k, v in out.items()}


def from_hf_state_dict(cfg: ModelConfig, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names and layouts → our state dict. Accepts keys with or without the model prefix."""
    pre = _prefix(cfg.arch)
    hf_state = {k.removeprefix(pre): v for k, v in hf_state.items()}
    conv1d = cfg.arch == "gpt2"
    out = {}
    for ours, theirs in _global_names(cfg.arch).items():
        for suffix in ("weight", "bias"):
            if f"{theirs}.{suffix}" in hf_state:
                out[f"{ours}.{suffix}"] = hf_state[f"{theirs}.{suffix}"]
    for i in range(cfg.n_layers):
        for ours, theirs in _layer_names(cfg.arch, i).items():
            for suffix in ("weight", "bias"):
                t = hf_state.get(f"{theirs}.{suffix}")
                if t is not None:
                    is_linear = suffix == "weight" and "norm" not in ours
                    out[f"body.blocks.{i}.{ours}.{suffix}"] = t.t() if conv1d and is_linear else t
        if cfg.arch == "gpt2":
            w = hf_state[f"h.{i}.attn.c_attn.weight"].t()  # (3d, d)
            b = hf_state[f"h.{i}.attn.c_attn.bias"]
            for p, wp, bp in zip("qkv", w.chunk(3, dim=0), b.chunk(3), strict=True):
                out[f"body.blocks.{i}.attn.{p}_proj.weight"] = wp
                out[f"body.blocks.{i}.attn.{p}_proj.bias"] = bp
    for head in ("lm_head.weight", "score.weight"):
        if head in hf_state:
            out[head] = hf_state[head]
    return {k: v.contiguous() for k, v in out.items()}


def read_hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: model.safetensors, its sharded index, or pytorch_model.bin."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(path / shard).items()}
    if (path / "model.safetensors").exists():
        return load_file(path / "model.safetensors")
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no model.safetensors, sharded index or pytorch_model.bin")


def read_hf_config(path: str | Path) -> ModelConfig:
    """The model config of a checkpoint directory; every problem a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: {'not a directory' if path.exists() else 'no such directory'}; expected a "
                              f"transformers checkpoint directory (config.json + model.safetensors)")
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: not found; expected a transformers checkpoint directory "
                              f"(config.json + model.safetensors)")
    try:
        hf = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = f":{e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise CheckpointError(f"{file}{line}: not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{file}: expected a JSON object of config fields")
    try:
        return config_from_hf(hf, str(file))
    except KeyError as e:
        raise CheckpointError(f"{file}: field {e} is missing") from None
    except (ValidationError, ValueError, TypeError) as e:
        detail = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e).removeprefix(f"{file}: ")
        raise CheckpointError(f"{file}: {detail}") from None


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of every weight file of a checkpoint, from the safetensors headers alone."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    elif (path / "pytorch_model.bin").exists():
        try:
            state = torch.load(path / "pytorch_model.bin", map_location="meta", weights_only=True, mmap=True)
        except Exception as e:  # a damaged zip or pickle raises one of many types
            raise CheckpointError(f"{path / 'pytorch_model.bin'}: cannot be read ({type(e).__name__}: {e})") from None
        return {k: tuple(v.shape) for k, v in state.items()}
    else:
        raise CheckpointError(f"{path}: no model.safetensors, sharded index or pytorch_model.bin")
    shapes = {}
    for name in files:
        try:
            with safe_open(path / name, "pt") as f:
                shapes |= {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path / name}: a truncated or corrupt safetensors file ({e})") from None
    return shapes


def inspect_checkpoint(path: str | Path) -> tuple[ModelConfig, set[str]]:
    """Config and heads ("lm_head.weight", "score.weight") of a checkpoint, checked tensor by tensor
    against its config from the file headers alone: a missing, unexpected or misshapen weight is a
    CheckpointError naming it, raised before any process loads the model."""
    path = Path(path)
    cfg = read_hf_config(path)
    pre = _prefix(cfg.arch)
    found = {k.removeprefix(pre): v for k, v in _weight_shapes(path).items()}
    with torch.device("meta"):
        model = CausalLM(cfg)
    expected = {k.removeprefix(pre): tuple(v.shape) for k, v in
                to_hf_state_dict(cfg, dict(model.state_dict())).items() if k not in HEADS}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - set(HEADS))
    wrong = [f"{k} {found[k]} (config: {expected[k]})" for k in sorted(set(expected) & set(found))
             if found[k] != expected[k]]
    heads = {k for k in HEADS if k in found}
    if "score.weight" in heads and found["score.weight"] != (1, cfg.d_model):
        wrong.append(f"score.weight {found['score.weight']} (a scalar head needs (1, {cfg.d_model}))")
    if "lm_head.weight" in heads and found["lm_head.weight"] != (cfg.vocab_size, cfg.d_model):
        wrong.append(f"lm_head.weight {found['lm_head.weight']} (config: {(cfg.vocab_size, cfg.d_model)})")
    problems = [f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"] * bool(
        missing) + [f"wrong shapes: {'; '.join(wrong[:3])}"] * bool(wrong) + [
        f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"] * bool(
        unexpected)
    if problems:
        raise CheckpointError(f"{path}: the weights do not fit its config.json: {'; '.join(problems)}")
    return cfg, heads



def load_pretrained(path: str | Path, kind: str = "lm", dtype: torch.dtype = torch.float32) -> nn.Module:
    """A CausalLM (kind="lm") or ScoreModel (kind="score") from an HF checkpoint directory.

    A score model may start from an LM checkpoint (InstructGPT initialises the reward model from the
    SFT model, §3.5): its scalar head is then freshly initialised.
    """
    cfg = read_hf_config(path)
    model = CausalLM(cfg) if kind == "lm" else ScoreModel(cfg)
    state = from_hf_state_dict(cfg, read_hf_weights(path))
    if kind == "lm" and not cfg.tied and "lm_head.weight" not in state:
        raise ValueError(f"{path}: untied model has no lm_head.weight (is it a sequence-classification checkpoint?)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if k not in HEADS]
    missing = [k for k in missing if k not in HEADS]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not fit the config: missing {missing}, unexpected {unexpected}")
    return model.to(dtype)


def save_pretrained(model: CausalLM | ScoreModel, path: str | Path, state: dict | None = None) -> Path:
    """Write `model` (or a full `state` dict for it, e.g. gathered from shards) as an HF checkpoint."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else model.state_dict()
    scalar = isinstance(model, ScoreModel)
    config_to_hf(model.cfg, scalar).save_pretrained(path)
    hf_state = to_hf_state_dict(model.cfg, state)
    save_file({k: v.cpu() for k, v in hf_state.items()}, path / "model.safetensors", metadata={"format": "pt"})
    return path


HF_ATTENTION = "instructrl"


def hf_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                         impl: AttentionImpl = "auto", **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature over our entry point (the Triton kernel on CUDA).

    query (B, Hq, T, D), key/value (B, Hkv, S, D); attention_mask is the 2-D key-padding mask (B, S) or
    None, because we register the flash-attention mask builder alongside. Returns (B, T, Hq, D).
    """
    if dropout:
        raise ValueError(f"attn_implementation={HF_ATTENTION!r} has no attention dropout; "
                         f"set the model's attention dropout to 0 (got {dropout})")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"attn_implementation={HF_ATTENTION!r} takes a 2-D padding mask, got shape "
                         f"{tuple(attention_mask.shape)}")
    kpm = attention_mask.bool() if attention_mask is not None else None
    out = attention(query, key, value, causal=getattr(module, "is_causal", True), key_padding_mask=kpm,
                    scale=scaling, impl=impl)  # (B, Hq, T, D)
    return out.transpose(1, 2).contiguous(), None


def register_hf_attention(impl: AttentionImpl = "auto") -> str:
    """Make `attn_implementation="instructrl"` available to transformers models; returns that name.

    impl="auto" runs the Triton kernel on CUDA and SDPA on CPU; "triton" forces the kernel.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(HF_ATTENTION, partial(hf_attention_forward, impl=impl))
    AttentionMaskInterface.register(HF_ATTENTION, flash_attention_mask)  # hands us the 2-D padding mask
    return HF_ATTENTION
