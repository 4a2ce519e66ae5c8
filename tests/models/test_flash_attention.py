"""The Triton kernel against the reference (SDPA) path: outputs and gradients for every mask kind.

On CPU the kernel runs in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so shapes stay small;
block size 16 there, so 20–40 positions still cross several query and key blocks.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from models.attention import attention, resolve_impl, sdpa_attention, segment_ids  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from models.generation import SamplingParams, generate  # noqa: E402
from models.heads import CausalLM  # noqa: E402
from models.kernels.flash_attention import flash_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def qkv(B, Hq, Hkv, T, S, D, dtype=torch.float32):
    make = lambda h, n: torch.randn(B, h, n, D, device=DEVICE, dtype=dtype, requires_grad=True)  # noqa: E731
    return make(Hq, T), make(Hkv, S), make(Hkv, S)


def padding(B, S, seed=0):
    """Random key-padding mask with left padding, holes, a fully padded row and a one-token row."""
    g = torch.Generator().manual_seed(seed)
    kpm = torch.rand(B, S, generator=g) > 0.2
    kpm[0, : S // 2] = False  # left padding
    if B > 1:
        kpm[1] = False  # fully padded: output 0 and no gradient, never NaN
    if B > 2:
        kpm[2] = False
        kpm[2, -1] = True  # a one-token sequence
    return kpm.to(DEVICE)


def compare(q, k, v, atol=2e-5, **mask):
    """Kernel vs reference: outputs and the gradients of q, k and v under one random upstream gradient."""
    out = flash_attention(q, k, v, **mask)
    ref = sdpa_attention(q.float(), k.float(), v.float(), **mask)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))
    want = torch.autograd.grad(ref, (q, k, v), grad)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=atol * 5, rtol=0, msg=lambda m, n=name: f"d{n}: {m}")
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2), (4, 1)])
def test_padding_mask_matches_reference(causal, hq, hkv):
    q, k, v = qkv(3, hq, hkv, 37, 37, 16)
    kpm = padding(3, 37)
    out = compare(q, k, v, causal=causal, key_padding_mask=kpm)
    assert (out[1] == 0).all()


@pytest.mark.parametrize("causal", [True, False])
def test_queries_after_a_cache_and_no_mask(causal):
    """T < S (KV-cache decode: queries are the newest positions), with and without a padding mask."""
    q, k, v = qkv(2, 4, 2, 5, 29, 16)
    compare(q, k, v, causal=causal)
    compare(q, k, v, causal=causal, key_padding_mask=padding(2, 29, seed=1)[:, :29])


def test_one_token_sequences():
    q, k, v = qkv(2, 2, 2, 1, 1, 16)
    compare(q, k, v, causal=True)
    compare(q, k, v, causal=True, key_padding_mask=torch.tensor([[True], [False]], device=DEVICE))


def test_packed_sequences_match_reference_and_padded_batch():
    lengths = [7, 1, 18, 3]  # a one-token sequence; 2 trailing padding slots after the last
    cu = torch.tensor([0, 7, 8, 26, 29], device=DEVICE)
    q, k, v = qkv(1, 4, 2, 31, 31, 16)
    packed = compare(q, k, v, causal=True, segments=segment_ids(cu, 31)[None])
    assert (packed[:, :, 29:] == 0).all()
    # The same sequences as a right-padded batch through the kernel give the same rows.
    width = max(lengths)
    rows = [(a, b) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)]
    pad = lambda t: torch.stack([  # noqa: E731
        torch.nn.functional.pad(t[0, :, a:b], (0, 0, 0, width - (b - a))) for a, b in rows])
    kpm = torch.stack([torch.arange(width, device=DEVICE) < b - a for a, b in rows])
    batched = flash_attention(pad(q), pad(k), pad(v), causal=True, key_padding_mask=kpm)
    for i, (a, b) in enumerate(rows):
        torch.testing.assert_close(batched[i, :, : b - a], packed[0, :, a:b], atol=2e-6, rtol=0)


def test_several_packed_rows_match_reference():
    """Varlen rows (B > 1): each row holds its own sequences and trailing padding (segment -1)."""
    g = torch.Generator().manual_seed(3)
    segments = torch.full((3, 33), -1, dtype=torch.int32)
    for row, lengths in enumerate([[20, 9, 4], [1, 31], [17]]):
        start = 0
        for n in lengths:
            segments[row, start:start + n] = int(torch.randint(0, 100, (1,), generator=g))
            start += n
    q, k, v = qkv(3, 4, 2, 33, 33, 16)
    out = compare(q, k, v, causal=True, segments=segments.to(DEVICE))
    assert (out[2, :, 17:] == 0).all() and (out[0, :, 33:] == 0).all()


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision(dtype, atol):
    q, k, v = qkv(2, 2, 2, 20, 20, 16, dtype)
    compare(q, k, v, atol=atol, causal=True, key_padding_mask=padding(2, 20))


@pytest.mark.parametrize("head_dim", [64, 128])
def test_head_dims(head_dim):
    q, k, v = qkv(1, 2, 1, 18, 18, head_dim)
    compare(q, k, v, causal=True, key_padding_mask=padding(1, 18))


def test_non_power_of_two_head_dim_and_strided_input():
    """Head dim 24 (padded to a 32 block) from a (B, T, H, D) projection viewed as (B, H, T, D)."""
    x = torch.randn(2, 17, 3, 3, 24, device=DEVICE, requires_grad=True)  # (B, T, qkv, H, D)
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))  # non-contiguous views
    out = flash_attention(q, k, v, causal=True)
    torch.testing.assert_close(out, sdpa_attention(q, k, v, causal=True), atol=2e-5, rtol=0)


def test_decode_against_cache_equals_full_recompute():
    """Generation with the KV cache on the kernel matches a full forward on the kernel and on SDPA."""
    cfg = ModelConfig(arch="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                      eos_token_id=1, pad_token_id=0, attention="triton")
    model = CausalLM(cfg).to(DEVICE).eval()
    prompts = torch.randint(2, 64, (3, 6), device=DEVICE)
    mask = torch.ones_like(prompts, dtype=torch.bool)
    mask[0, :3] = False  # left-padded prompt
    gen = generate(model, prompts, mask, SamplingParams(max_new_tokens=5, temperature=0.0), 1, 0)
    with torch.no_grad():
        full = model(gen.sequences, attention_mask=gen.attention_mask)  # (B, P + R, V)
        sdpa = CausalLM(cfg.model_copy(update={"attention": "sdpa"})).to(DEVICE).eval()
        sdpa.load_state_dict(model.state_dict())
        ref = sdpa(gen.sequences, attention_mask=gen.attention_mask)
    real = gen.attention_mask
    torch.testing.assert_close(full[real], ref[real], atol=1e-5, rtol=0)
    # Greedy tokens chosen step by step against the cache are the argmax of the full recompute.
    P = prompts.shape[1]
    chosen = full[:, P - 1 : -1].argmax(-1)
    assert torch.equal(chosen[gen.response_mask], gen.sequences[:, P:][gen.response_mask])


def test_dispatch():
    cpu = torch.zeros(1, 1, 1, 8)
    assert resolve_impl("auto", cpu) == "sdpa"
    assert resolve_impl("triton", cpu) == "triton"
    if torch.cuda.is_available():
        assert resolve_impl("auto", cpu.cuda()) == "triton"


def test_forced_kernel_without_gpu_or_interpreter_says_what_to_do(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.delenv("TRITON_INTERPRET")
    q = torch.randn(1, 1, 2, 8)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        attention(q, q, q, impl="triton")


def test_transformers_models_run_on_the_kernel(monkeypatch):
    """A plain HF Llama with attn_implementation="instructrl" gives SDPA's logits on real tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import models.kernels.flash_attention as kernel
    from models.hf import register_hf_attention

    calls = []
    monkeypatch.setattr(kernel, "flash_attention", lambda *a, **kw: calls.append(1) or flash_attention(*a, **kw))

    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=32)
    ref = LlamaForCausalLM(LlamaConfig(**shape, attn_implementation="sdpa")).to(DEVICE).eval()
    ours = LlamaForCausalLM(LlamaConfig(**shape, attn_implementation=register_hf_attention("triton"))).to(DEVICE)
    ours.eval()
    ours.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 64, (2, 12), device=DEVICE)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        got, want = (m(input_ids=ids, attention_mask=mask).logits for m in (ours, ref))
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    assert len(calls) == shape["num_hidden_layers"]  # the kernel ran in every layer


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_sizes(dtype):
    """Real block sizes (64) and lengths on a GPU, compiled rather than interpreted."""
    q, k, v = qkv(2, 8, 2, 300, 300, 128, dtype)
    compare(q, k, v, atol=2e-2, causal=True, key_padding_mask=padding(2, 300))
