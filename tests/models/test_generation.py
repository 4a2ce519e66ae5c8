"""Generation: greedy equals transformers' generate; the KV cache changes nothing; masks are PPO-ready."""

from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.generation import SamplingParams, filter_logits, generate
from models.heads import CausalLM
from models.hf import load_pretrained
from tests.models.test_hf_interop import PAD, batch, hf_class, hf_config

EOS = 1


def pair(tmp_path, arch):
    hf = hf_class(arch, "ForCausalLM")(hf_config(arch)).eval()
    hf.save_pretrained(tmp_path)
    return hf, load_pretrained(tmp_path).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen3", "mistral"])
def test_greedy_equals_transformers_generate(tmp_path, arch):
    hf, ours = pair(tmp_path, arch)
    ids, mask = batch(left_pad=(0, 3, 5))
    out = generate(ours, ids, mask, SamplingParams(max_new_tokens=20, temperature=0), EOS, PAD)
    expected = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=20,
                           eos_token_id=EOS, pad_token_id=PAD)
    width = min(out.sequences.shape[1], expected.shape[1])
    assert torch.equal(out.sequences[:, :width], expected[:, :width])
    assert (expected[:, width:] == PAD).all() and (out.sequences[:, width:] == PAD).all()


def test_early_eos_is_masked_and_padded():
    # A small vocabulary makes EOS common, so rows end at different steps.
    cfg = ModelConfig(arch="llama", vocab_size=12, max_seq_len=64, d_model=32, n_layers=1, n_heads=4)
    ours = CausalLM(cfg).eval()
    ids, mask = batch(B=8, T=6, left_pad=(0, 1, 2, 3, 4, 5, 0, 0))
    ids = ids % 10 + 2
    out = generate(ours, ids, mask.bool(), SamplingParams(max_new_tokens=30), EOS, PAD,
                   torch.Generator().manual_seed(0))
    lengths = out.response_mask.sum(-1)
    assert lengths.min() < out.response_mask.shape[1] and len(set(lengths.tolist())) > 2
    resp = out.responses
    for b in range(resp.shape[0]):
        eos_at = (resp[b] == EOS).nonzero()
        n = int(eos_at[0]) + 1 if len(eos_at) else resp.shape[1]
        assert int(lengths[b]) == n
        assert out.response_mask[b, :n].all() and not out.response_mask[b, n:].any()
        assert (resp[b, n:] == PAD).all()
    assert torch.equal(out.attention_mask[:, : out.prompt_len], mask.bool())
    assert torch.equal(out.attention_mask[:, out.prompt_len:], out.response_mask)
    assert (out.logprobs[~out.response_mask] == 0).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral"])  # mistral: the window cuts the cache
def test_cached_and_uncached_sampling_agree(tmp_path, arch):
    _, ours = pair(tmp_path, arch)
    ids, mask = batch(left_pad=(0, 2, 6))
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.9)
    runs = [generate(ours, ids, mask, params, EOS, PAD, torch.Generator().manual_seed(7), use_cache=c)
            for c in (True, False)]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-5, rtol=0)


def test_logprobs_match_a_full_forward(tmp_path):
    _, ours = pair(tmp_path, "llama")
    ids, mask = batch(left_pad=(0, 2, 6))
    out = generate(ours, ids, mask, SamplingParams(max_new_tokens=10, temperature=0.7), EOS, PAD,
                   torch.Generator().manual_seed(3))
    pos = (out.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = ours(out.sequences, out.attention_mask, pos)[:, out.prompt_len - 1:-1] / 0.7
    lp = logits.log_softmax(-1).gather(-1, out.responses[..., None]).squeeze(-1)
    rm = out.response_mask
    torch.testing.assert_close(out.logprobs[rm], lp[rm], atol=1e-5, rtol=0)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, 0, 0.8))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    kept = ~torch.isinf(filter_logits(logits, 0, 0.81))
    assert kept.tolist() == [[True, True, True, False]]
    assert (~torch.isinf(filter_logits(logits, 0, 0.1))).sum() == 1  # the best token always stays


def test_right_padded_prompts_are_refused(tmp_path):
    _, ours = pair(tmp_path, "gpt2")
    ids, mask = batch(left_pad=(0, 0, 0))
    mask[0, -1] = 0
    with pytest.raises(ValueError, match="left-padded"):
        generate(ours, ids, mask, SamplingParams(max_new_tokens=2), EOS, PAD)


def eos_prone(arch: str, seed: int):
    """A random model over 12 tokens, where EOS comes often, and 8 prompts left-padded by 0 to 5."""
    cfg = ModelConfig(arch=arch, vocab_size=12, max_seq_len=64, d_model=32, n_layers=1, n_heads=4)
    torch.manual_seed(seed)
    model = CausalLM(cfg).eval()
    ids, mask = batch(B=8, T=6, left_pad=(0, 1, 2, 3, 4, 5, 0, 0))
    return model, ids % 10 + 2, mask.bool()


def test_finished_rows_leave_the_batch_and_change_no_token():
    """Greedy decoding with rows ending at different steps equals the same decoding without EOS cut
    at each row's first EOS; and the decoding batch shrinks as rows finish."""
    ours, ids, mask = eos_prone("llama", seed=1)
    greedy = SamplingParams(max_new_tokens=24, temperature=0)
    full = generate(ours, ids, mask, greedy, -1, PAD).responses  # no EOS: every row runs 24 tokens
    # The token that first appears latest on average, so rows stop at different steps.
    first = {t: [(row == t).nonzero()[0].item() if (row == t).any() else 24 for row in full] for t in range(2, 12)}
    eos = max(first, key=lambda t: len(set(first[t])))
    sizes = []
    forward = ours.forward
    ours.forward = lambda x, *a, **k: (sizes.append(x.shape[0]), forward(x, *a, **k))[1]
    out = generate(ours, ids, mask, greedy, eos, PAD)
    ends = torch.tensor(first[eos]) + 1  # response length of each row, EOS included
    assert len(set(ends.tolist())) > 2
    for b in range(8):
        n = min(int(ends[b]), 24)
        assert torch.equal(out.responses[b, :n], full[b, :n])
        assert (out.responses[b, n:] == PAD).all() and int(out.response_mask[b].sum()) == n
    assert sizes[0] == 8 and sizes[-1] < 8 and sizes == sorted(sizes, reverse=True), sizes


def test_dropping_finished_rows_changes_no_sample():
    """Every row still draws from the generator each step, so sampling gives the same responses and
    log-probs with and without finished rows leaving the batch."""
    ours, ids, mask = eos_prone("gpt2", seed=2)
    params = SamplingParams(max_new_tokens=24, temperature=1.0)
    runs = [generate(ours, ids, mask, params, EOS, PAD, torch.Generator().manual_seed(5), drop_finished=d)
            for d in (True, False)]
    lengths = runs[0].response_mask.sum(-1)
    assert len(set(lengths.tolist())) > 2  # rows did end at different steps
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-5, rtol=0)
