"""The attention entry point against a naive loop implementation; packed vs padded equivalence."""

from __future__ import annotations

import math

import pytest
import torch

from models.attention import attention
from models.config import ModelConfig
from models.heads import CausalLM


def naive_attention(q, k, v, causal, kpm=None):
    """Per (batch, head, query) loop over visible keys; GQA by head index // group."""
    B, Hq, T, D = q.shape
    S, group = k.shape[2], Hq // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(Hq):
            for t in range(T):
                qpos = S - T + t
                keys = [s for s in range(S) if (not causal or s <= qpos) and (kpm is None or kpm[b, s])]
                if not keys:
                    continue
                scores = torch.stack([q[b, h, t] @ k[b, h // group, s] for s in keys]) / math.sqrt(D)
                w = scores.softmax(0)
                out[b, h, t] = sum(w[i] * v[b, h // group, s] for i, s in enumerate(keys))
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_matches_naive_with_padding_and_gqa(causal, hkv):
    B, Hq, T, S, D = 3, 4, 5, 7, 8  # T < S: queries are the newest positions (KV-cache decode)
    q, k, v = torch.randn(B, Hq, T, D), torch.randn(B, hkv, S, D), torch.randn(B, hkv, S, D)
    kpm = torch.ones(B, S, dtype=torch.bool)
    kpm[1, :3] = False  # left padding
    kpm[2, :] = False  # a fully padded row: output must be 0, not NaN
    kpm[0, 4] = False
    got = attention(q, k, v, causal=causal, key_padding_mask=kpm)
    torch.testing.assert_close(got, naive_attention(q, k, v, causal, kpm), atol=1e-5, rtol=0)
    assert (got[2] == 0).all()


def test_packed_sequences_equal_separate_ones():
    lengths = [3, 1, 5]
    Hq, D = 2, 8
    seqs = [(torch.randn(1, Hq, n, D), torch.randn(1, Hq, n, D), torch.randn(1, Hq, n, D)) for n in lengths]
    packed = [torch.cat([s[i] for s in seqs], dim=2) for i in range(3)]
    # two trailing padding slots after the last sequence
    packed = [torch.cat([p, torch.randn(1, Hq, 2, D)], dim=2) for p in packed]
    cu = torch.tensor([0, 3, 4, 9])
    out = attention(*packed, causal=True, cu_seqlens=cu)
    for (q, k, v), a, b in zip(seqs, cu[:-1], cu[1:], strict=True):
        torch.testing.assert_close(out[:, :, a:b], attention(q, k, v, causal=True), atol=1e-6, rtol=0)
    assert (out[:, :, 9:] == 0).all()


def test_packed_model_forward_equals_padded_batch():
    cfg = ModelConfig(arch="llama", vocab_size=50, max_seq_len=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    model = CausalLM(cfg).eval()
    a, b = torch.randint(0, 50, (1, 4)), torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 4, 10]))
        torch.testing.assert_close(packed[:, :4], model(a), atol=1e-5, rtol=0)
        torch.testing.assert_close(packed[:, 4:], model(b), atol=1e-5, rtol=0)
