"""HF interop both ways, compared with transformers' own forward (not with our code)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from models.config import ModelConfig
from models.heads import CausalLM, ScoreModel
from models.hf import load_pretrained, save_pretrained

PAD = 0


def hf_config(arch: str, **kw):
    if arch == "gpt2":
        return GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, pad_token_id=PAD,
                          resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=1, eos_token_id=1, **kw)
    return LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       pad_token_id=PAD, bos_token_id=1, eos_token_id=1,
                       rope_parameters={"rope_type": "default", "rope_theta": 500.0}, **kw)


def batch(B=3, T=12, left_pad=(0, 3, 5)):
    ids = torch.randint(3, 97, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    for b, n in enumerate(left_pad):
        ids[b, :n], mask[b, :n] = PAD, 0
    return ids, mask


def perturb(model):
    """Random norms and biases too, so a mis-mapped gain or bias cannot hide behind 1s and 0s."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lm_import_matches_transformers(tmp_path, arch):
    hf = (GPT2LMHeadModel if arch == "gpt2" else LlamaForCausalLM)(hf_config(arch)).eval()
    perturb(hf)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, "lm").eval()
    ids, mask = batch()
    with torch.no_grad():
        expected = hf(input_ids=ids[:1], attention_mask=mask[:1]).logits
        got = ours(ids[:1], mask[:1].bool())
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        # Left padding: compare on real tokens, with the positions HF derives from the mask.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        expected = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, mask.bool(), pos)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lm_export_loads_in_transformers(tmp_path, arch):
    cfg = ModelConfig(arch=arch, vocab_size=97, max_seq_len=64, d_model=32, n_layers=2, n_heads=4,
                      n_kv_heads=2 if arch == "llama" else None, pad_token_id=PAD, eos_token_id=1)
    ours = CausalLM(cfg).eval()
    perturb(ours)
    save_pretrained(ours, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == ("GPT2LMHeadModel" if arch == "gpt2" else "LlamaForCausalLM")
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_score_model_round_trip_through_sequence_classification(tmp_path, arch):
    cfg = ModelConfig(arch=arch, vocab_size=97, max_seq_len=64, d_model=32, n_layers=2, n_heads=4,
                      pad_token_id=PAD, eos_token_id=1)
    ours = ScoreModel(cfg).eval()
    perturb(ours)
    save_pretrained(ours, tmp_path / "out")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert hf.config.num_labels == 1
    assert type(hf).__name__ == ("GPT2ForSequenceClassification" if arch == "gpt2"
                                 else "LlamaForSequenceClassification")
    ids, mask = batch(left_pad=(0, 0, 0))
    ids[1, -4:], mask[1, -4:] = PAD, 0  # right padding: HF reads the last non-pad token, so do we
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        got = ours.scores(ids, mask.bool())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # ...and back: HF's own sequence-classification checkpoint loads into ours.
    hf_cls = GPT2ForSequenceClassification if arch == "gpt2" else LlamaForSequenceClassification
    theirs = hf_cls(hf_config(arch, num_labels=1)).eval()
    theirs.save_pretrained(tmp_path / "theirs")
    ours = load_pretrained(tmp_path / "theirs", "score").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.scores(ids, mask.bool()),
                                   theirs(input_ids=ids, attention_mask=mask).logits.squeeze(-1),
                                   atol=1e-5, rtol=0)


def test_reward_model_initialised_from_lm_checkpoint(tmp_path):
    GPT2LMHeadModel(hf_config("gpt2")).save_pretrained(tmp_path)
    lm = load_pretrained(tmp_path, "lm")
    rm = load_pretrained(tmp_path, "score")
    torch.testing.assert_close(rm.body.embed.weight, lm.body.embed.weight)


def test_unsupported_checkpoint_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t5", "vocab_size": 10}')
    with pytest.raises(ValueError, match=r"config.json: model_type 't5' is not supported"):
        load_pretrained(tmp_path)
