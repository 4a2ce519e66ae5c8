"""Fused masked attention in Triton: forward and backward, FlashAttention-2 style (Dao 2023).

One program per (query block, batch·head) streams key/value blocks through an online softmax, so the
(T, S) score matrix never reaches memory. Masks are fused by meaning, as the entry point describes them:
causal (queries are the last T of S positions, which is also the KV-cache decode case), a key-padding
mask (B, S), or packed sequences given as per-position segment ids (B, S), several sequences per row
(varlen). Grouped-query attention reads the
shared key/value head directly (no repeat). Rows that see no key give 0, like the reference path.
This is the only file that imports triton. On CPU it runs under TRITON_INTERPRET=1 (tests).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """fp32-accumulated a @ b. UPCAST: bf16 operands go in as fp32 — only under the interpreter, whose
    bf16 dot (Triton 3.9) misreads the bits; compiled kernels always multiply bf16 natively."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _allowed(q_pos, k_idx, S, seg_q, kpm_row, seg_ptr,
             CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_SEG: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: which (query position, key index) pairs may attend."""
    ok = (k_idx < S)[None, :] & (q_pos >= 0)[:, None]
    if CAUSAL:
        ok = ok & (k_idx[None, :] <= q_pos[:, None])
    if HAS_KPM:
        keep = tl.load(kpm_row + k_idx, mask=k_idx < S, other=0)
        ok = ok & (keep != 0)[None, :]
    if HAS_SEG:
        seg_k = tl.load(seg_ptr + k_idx, mask=k_idx < S, other=-1)
        ok = ok & (seg_k[None, :] == seg_q[:, None]) & (seg_k >= 0)[None, :]
    return ok


@triton.jit
def _segments_of(seg_ptr, q_pos, row_ok, HAS_SEG: tl.constexpr):
    """Packed-sequence id of each query row (a placeholder when there is no packing)."""
    if HAS_SEG:
        return tl.load(seg_ptr + q_pos, mask=row_ok, other=-2)
    return tl.full(q_pos.shape, -2, tl.int32)


@triton.jit
def _key_end(pid_m, S, T, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """One past the last key a causal query block can see (S when not causal)."""
    if CAUSAL:
        return tl.minimum(S, (pid_m + 1) * BLOCK_M + S - T)
    return S


@triton.jit
def _fwd_kernel(Q, K, V, OUT, LSE, KPM, SEG,
                sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sob, soh, sot, skpm,
                H, GROUP, T, S, qk_scale,
                CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_SEG: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    hk = h // GROUP  # grouped-query: this query head's key/value head
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok, d_ok = offs_m < T, offs_d < D
    q_pos = tl.where(row_ok, offs_m + S - T, -1)  # absolute position of each query; -1 past the end
    kpm_row, seg_row = KPM + b * skpm, SEG + b * S
    seg_q = _segments_of(seg_row, q_pos, row_ok, HAS_SEG)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    k_base, v_base = K + b * skb + hk * skh, V + b * svb + hk * svh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max of scaled scores (log2 domain)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, _key_end(pid_m, S, T, BLOCK_M, CAUSAL), BLOCK_N):
        k_idx = start_n + offs_n
        kv_mask = (k_idx < S)[:, None] & d_ok[None, :]
        k = tl.load(k_base + k_idx[:, None] * sks + offs_d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N)
        ok = _allowed(q_pos, k_idx, S, seg_q, kpm_row, seg_row, CAUSAL, HAS_KPM, HAS_SEG)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row with nothing visible yet keeps m = -inf; subtract 0 there so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + k_idx[:, None] * svs + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(OUT + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    lse = tl.where(empty, 0.0, m_i + tl.log2(tl.where(empty, 1.0, l_i)))  # log2-sum-exp2 per row
    tl.store(LSE + pid_bh * T + offs_m, lse, mask=row_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, KPM, SEG,
                     sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sdob, sdoh, sdot,
                     H, HKV, GROUP, T, S, qk_scale, sm_scale,
                     CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_SEG: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                     D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (key block, batch·kv-head): dK, dV summed over the head group and all queries."""
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, hk = pid_bh // HKV, pid_bh % HKV
    k_idx = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (k_idx < S)[:, None] & (offs_d < D)[None, :]
    k = tl.load(K + b * skb + hk * skh + k_idx[:, None] * sks + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + hk * svh + k_idx[:, None] * svs + offs_d[None, :], mask=kv_mask, other=0.0)
    kpm_row, seg_row = KPM + b * S, SEG + b * S
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Causal: queries before this key block (position < pid_n * BLOCK_N) cannot see it.
    first = 0
    if CAUSAL:
        first = tl.maximum(pid_n * BLOCK_N - (S - T), 0) // BLOCK_M * BLOCK_M
    for g in range(GROUP):
        h = hk * GROUP + g
        for start_m in range(first, T, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < T
            q_pos = tl.where(row_ok, offs_m + S - T, -1)
            seg_q = _segments_of(seg_row, q_pos, row_ok, HAS_SEG)
            qd_mask = row_ok[:, None] & (offs_d < D)[None, :]
            q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=qd_mask, other=0.0)
            do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_d[None, :], mask=qd_mask, other=0.0)
            row = (b * H + h) * T + offs_m
            lse = tl.load(LSE + row, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + row, mask=row_ok, other=0.0)
            s = _dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N)
            ok = _allowed(q_pos, k_idx, S, seg_q, kpm_row, seg_row, CAUSAL, HAS_KPM, HAS_SEG)
            p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
            dv += _dot(tl.trans(p.to(do.dtype)), do, PRECISION, UPCAST)
            dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
            ds = p * (dp - delta[:, None])  # softmax backward: P ∘ (dP − rowsum(dO ∘ O))
            dk += _dot(tl.trans(ds.to(q.dtype)), q, PRECISION, UPCAST)
    out = b * (HKV * S * D) + hk * (S * D) + k_idx[:, None] * D + offs_d[None, :]  # contiguous (B, Hkv, S, D)
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, KPM, SEG,
                   sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sdob, sdoh, sdot,
                   H, GROUP, T, S, qk_scale, sm_scale,
                   CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_SEG: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                   D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (query block, batch·head): dQ over the visible keys, no atomics."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok, d_ok = offs_m < T, offs_d < D
    q_pos = tl.where(row_ok, offs_m + S - T, -1)
    kpm_row, seg_row = KPM + b * S, SEG + b * S
    seg_q = _segments_of(seg_row, q_pos, row_ok, HAS_SEG)
    qd_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_d[None, :], mask=qd_mask, other=0.0)
    lse = tl.load(LSE + pid_bh * T + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + pid_bh * T + offs_m, mask=row_ok, other=0.0)
    k_base, v_base = K + b * skb + hk * skh, V + b * svb + hk * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, _key_end(pid_m, S, T, BLOCK_M, CAUSAL), BLOCK_N):
        k_idx = start_n + offs_n
        kv_mask = (k_idx < S)[:, None] & d_ok[None, :]
        k = tl.load(k_base + k_idx[:, None] * sks + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + k_idx[:, None] * svs + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale
        ok = _allowed(q_pos, k_idx, S, seg_q, kpm_row, seg_row, CAUSAL, HAS_KPM, HAS_SEG)
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, PRECISION, UPCAST)
    tl.store(DQ + pid_bh * T * D + offs_m[:, None] * D + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=qd_mask)


def _launch_config(T: int, D: int, device: torch.device) -> dict:
    """Block sizes: small under the interpreter (fast to emulate), larger on a GPU; decode uses BLOCK_M 16."""
    if device.type != "cuda":
        return dict(BLOCK_M=16, BLOCK_N=16)
    block_m = 16 if T <= 16 else 64
    return dict(BLOCK_M=block_m, BLOCK_N=64 if D <= 64 else 32, num_warps=4 if D <= 64 else 8, num_stages=2)


def _block_d(D: int) -> int:
    """The head dim padded to a power of two, and to at least 16: on a GPU tl.dot needs every dimension
    >= 16 (the interpreter does not check), and the masked loads make the padding zeros."""
    return max(16, triton.next_power_of_2(D))


def _dot_flags(t: torch.Tensor) -> dict:
    # fp32 inputs keep full fp32 products ("ieee"); TF32 would cost the log-prob agreement PPO relies on.
    return dict(PRECISION="ieee" if t.dtype == torch.float32 else "tf32",
                UPCAST=t.dtype == torch.bfloat16 and t.device.type != "cuda")


def _check_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton attention kernel needs a CUDA tensor; on CPU set TRITON_INTERPRET=1 "
                           "before starting Python (interpreter, for tests) or use attention='sdpa'")


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kpm, seg, has_kpm, has_seg, causal, sm_scale):
        B, H, T, D = q.shape
        HKV, S = k.shape[1], k.shape[2]
        o = torch.empty_like(q)
        lse = torch.empty(B * H * T, device=q.device, dtype=torch.float32)
        cfg = _launch_config(T, D, q.device)
        grid = (triton.cdiv(T, cfg["BLOCK_M"]), B * H)
        _fwd_kernel[grid](
            q, k, v, o, lse, kpm, seg,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), S,
            H, H // HKV, T, S, sm_scale * LOG2E,
            CAUSAL=causal, HAS_KPM=has_kpm, HAS_SEG=has_seg, **_dot_flags(q),
            D=D, BLOCK_D=_block_d(D), **cfg,
        )
        ctx.save_for_backward(q, k, v, o, lse, kpm, seg)
        ctx.causal, ctx.sm_scale, ctx.has_kpm, ctx.has_seg = causal, sm_scale, has_kpm, has_seg
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kpm, seg = ctx.saved_tensors
        B, H, T, D = q.shape
        HKV, S = k.shape[1], k.shape[2]
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1).reshape(-1)  # (B·H·T,) rowsum(dO ∘ O)
        dq = torch.empty(B, H, T, D, device=q.device, dtype=q.dtype)
        dk = torch.empty(B, HKV, S, D, device=q.device, dtype=k.dtype)
        dv = torch.empty(B, HKV, S, D, device=q.device, dtype=v.dtype)
        cfg = _launch_config(T, D, q.device)
        common = dict(CAUSAL=ctx.causal, HAS_KPM=ctx.has_kpm, HAS_SEG=ctx.has_seg,
                      **_dot_flags(q), D=D, BLOCK_D=_block_d(D), **cfg)
        strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                   v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
        scales = (ctx.sm_scale * LOG2E, ctx.sm_scale)
        _bwd_dkdv_kernel[(triton.cdiv(S, cfg["BLOCK_N"]), B * HKV)](
            q, k, v, do, lse, delta, dk, dv, kpm, seg, *strides, H, HKV, H // HKV, T, S, *scales, **common)
        _bwd_dq_kernel[(triton.cdiv(T, cfg["BLOCK_M"]), B * H)](
            q, k, v, do, lse, delta, dq, kpm, seg, *strides, H, H // HKV, T, S, *scales, **common)
        return dq, dk, dv, None, None, None, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Same contract as `models.attention.sdpa_attention` (q (B, Hq, T, D), k/v (B, Hkv, S, D), S >= T,
    segments (B or 1, S))."""
    _check_device(q)
    if q.shape[-1] > 256:
        raise ValueError(f"head dim {q.shape[-1]} > 256 is not supported by the Triton kernel")
    # Kernels index the last dim with stride 1; views from (B, T, H, D) keep that, so only fix the rare rest.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    S = k.shape[2]
    unused = torch.zeros(1, device=q.device, dtype=torch.int32)  # never read: its flag is off
    has_kpm, has_seg = key_padding_mask is not None, segments is not None
    kpm = key_padding_mask.to(torch.int8).contiguous() if has_kpm else unused  # (B, S)
    seg = segments.to(q.device, torch.int32).expand(q.shape[0], S).contiguous() if has_seg else unused  # (B, S)
    sm_scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return _FlashAttention.apply(q, k, v, kpm, seg, has_kpm, has_seg, causal, sm_scale)
