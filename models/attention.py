"""The one attention entry point every layer calls, and its reference (PyTorch SDPA) path.

Callers describe masking by meaning — causal or not, a key-padding mask, packed sequences (per-position
segment ids, or the offsets of sequences packed along one row) — never by a prebuilt bias tensor, so
the fused Triton kernel (models/kernels) takes the same arguments and never builds the mask. `impl`
picks the path: "auto" is the kernel on CUDA when Triton imports, SDPA otherwise. Must not import
torch.distributed, deepspeed, megatron or ray.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
import torch.nn.functional as F

AttentionImpl = Literal["auto", "sdpa", "triton"]


def segment_ids(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """(length,) int32: which packed sequence each position belongs to; -1 on slots past the last one."""
    pos = torch.arange(length, device=cu_seqlens.device)
    seg = torch.bucketize(pos, cu_seqlens[1:], right=True)
    return torch.where(pos < cu_seqlens[-1], seg, -1).to(torch.int32)


def build_attention_mask(
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    window: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Boolean mask (B or 1, 1, T, S): True where query t may attend to key s.

    segments (B or 1, S): which packed sequence each position belongs to, -1 on padding; a token
    sees only its own sequence.

    Queries are the last `q_len` of the `k_len` positions, which is what decoding against a KV cache
    needs (T new tokens after S - T cached ones). `window`: a query sees only the keys less than
    `window` positions behind it (Mistral's sliding window, as transformers' `sliding_window_overlay`).
    """
    q_pos = torch.arange(k_len - q_len, k_len, device=device)  # (T,)
    k_pos = torch.arange(k_len, device=device)  # (S,)
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device)  # (T, S)
    if causal:
        allowed = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed = allowed & (k_pos[None, :] > q_pos[:, None] - window)
    allowed = allowed[None]  # (1, T, S)
    if segments is not None:
        seg = segments.to(device)  # (B|1, S)
        allowed = allowed & (seg[:, q_pos, None] == seg[:, None, :]) & (seg >= 0)[:, None, :]  # (B|1, T, S)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, :]  # (B, T, S)
    return allowed[:, None]  # (B, 1, T, S)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Reference path: an explicit boolean mask through `F.scaled_dot_product_attention`."""
    B, Hq, T, D = q.shape
    S = k.shape[2]
    mask = build_attention_mask(
        T, S, causal=causal, key_padding_mask=key_padding_mask, segments=segments, window=window,
        device=q.device
    )  # (B|1, 1, T, S)
    # A query row that sees no key (a left-pad token) would softmax over nothing and give NaN; open
    # the row up for SDPA and zero its output afterwards, the convention the fused kernel follows too.
    empty = ~mask.any(dim=-1, keepdim=True)  # (B|1, 1, T, 1)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask | empty, scale=scale, enable_gqa=k.shape[1] != Hq
    )  # (B, Hq, T, D)
    return out.masked_fill(empty, 0.0)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
    impl: AttentionImpl = "auto",
) -> torch.Tensor:
    """Masked multi-head attention.

    q: (B, Hq, T, D); k, v: (B, Hkv, S, D) with Hq a multiple of Hkv (grouped-query) and S >= T.
    key_padding_mask: (B, S) bool, True on real tokens. segments: (B, S) int, the packed sequence of
    each key position (any ids, -1 on padding): several sequences per row (varlen), each attending
    only within itself. cu_seqlens: (N + 1,) int offsets of N sequences packed along one row (B == 1),
    the same thing said as offsets. window: sliding-window size (causal only). Returns
    (B, Hq, T, D); rows with no visible key are 0.
    """
    if cu_seqlens is not None:
        if q.shape[0] != 1 or segments is not None:
            raise ValueError(f"cu_seqlens packs one row (batch size 1, no segments), got batch {q.shape[0]}")
        segments = segment_ids(cu_seqlens, k.shape[2])[None]  # (1, S)
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
    if window is not None and window >= k.shape[2]:
        window = None  # no key is that far behind: the window cuts nothing
    if window is not None:
        # The fused kernel has no sliding window; the reference path applies it exactly.
        return sdpa_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, segments=segments,
                              window=window, scale=scale)
    path = sdpa_attention
    if resolve_impl(impl, q) == "triton":
        from models.kernels.flash_attention import flash_attention as path
    return path(q, k, v, causal=causal, key_padding_mask=key_padding_mask, segments=segments, scale=scale)


def resolve_impl(impl: AttentionImpl, q: torch.Tensor) -> Literal["sdpa", "triton"]:
    """The path `attention` takes for `q`: forced by `impl`, or the kernel for CUDA tensors when possible."""
    if impl != "auto":
        return impl
    if q.is_cuda and q.shape[-1] <= 256 and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "sdpa"
