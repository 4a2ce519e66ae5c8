"""HF interop both ways, compared with transformers' own forward (not with our code)."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

from models.config import ModelConfig
from models.heads import CausalLM, ScoreModel
from models.hf import load_pretrained, save_pretrained

PAD = 0
# Each family with the setting that makes it differ from Llama exercised: Qwen3's head_dim (16) is
# not hidden / heads (8); Mistral's window (5) is shorter than the test sequences (12); the Llama 3
# RoPE frequencies fall in all three of its regimes (kept, ramped, divided) at head_dim 8.
FAMILIES = {
    "gpt2": ("GPT2", {}),
    "llama": ("Llama", {}),
    "llama3-rope": ("Llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 64}}),
    "qwen2": ("Qwen2", {}),
    "qwen3": ("Qwen3", {"head_dim": 16}),
    "mistral": ("Mistral", {"head_dim": 8, "sliding_window": 5}),
}


def hf_config(family: str, **kw):
    prefix, extra = FAMILIES[family]
    if prefix == "GPT2":
        return GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, pad_token_id=PAD,
                          resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=1, eos_token_id=1, **kw)
    extra = {"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}, **extra}
    return getattr(transformers, f"{prefix}Config")(
        vocab_size=97, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, bos_token_id=1, eos_token_id=1,
        **extra, **kw)


def hf_class(family: str, head: str):
    prefix = FAMILIES[family][0]
    return getattr(transformers, "GPT2LMHeadModel" if (prefix, head) == ("GPT2", "ForCausalLM") else prefix + head)


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


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lm_import_matches_transformers(tmp_path, family):
    hf = hf_class(family, "ForCausalLM")(hf_config(family)).eval()
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


def our_config(family: str) -> ModelConfig:
    """The family's test shape in our config, read from the transformers config (the import path)."""
    from models.hf import config_from_hf

    return config_from_hf(hf_config(family).to_dict())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lm_export_loads_in_transformers(tmp_path, family):
    ours = CausalLM(our_config(family)).eval()
    perturb(ours)
    save_pretrained(ours, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf) is hf_class(family, "ForCausalLM")  # exported in its own family, not as Llama
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_score_model_round_trip_through_sequence_classification(tmp_path, family):
    ours = ScoreModel(our_config(family)).eval()
    perturb(ours)
    save_pretrained(ours, tmp_path / "out")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert hf.config.num_labels == 1
    assert type(hf) is hf_class(family, "ForSequenceClassification")
    ids, mask = batch(left_pad=(0, 0, 0))
    ids[1, -4:], mask[1, -4:] = PAD, 0  # right padding: HF reads the last non-pad token, so do we
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        got = ours.scores(ids, mask.bool())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # ...and back: HF's own sequence-classification checkpoint loads into ours.
    theirs = hf_class(family, "ForSequenceClassification")(hf_config(family, num_labels=1)).eval()
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_on_cuda_matches_transformers(tmp_path, family):
    """On a GPU, attention="auto" runs the fused Triton kernel (SDPA where Mistral's window cuts); in
    bf16 both models round alike but not identically, hence the tolerance."""
    from models.attention import resolve_impl

    hf = hf_class(family, "ForCausalLM")(hf_config(family)).eval()
    perturb(hf)
    hf.save_pretrained(tmp_path)
    ids, mask = (t.cuda() for t in batch(T=24, left_pad=(0, 3, 5)))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    real = mask.bool()
    assert resolve_impl("auto", torch.empty(1, 1, 1, 16, device="cuda")) == "triton"
    for dtype, atol in ((torch.float32, 2e-3), (torch.bfloat16, 6e-2)):
        ours = load_pretrained(tmp_path, dtype=dtype).cuda().eval()
        theirs = hf_class(family, "ForCausalLM").from_pretrained(tmp_path, dtype=dtype).cuda().eval()
        with torch.no_grad():
            got = ours(ids, real, pos).float()
            want = theirs(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
        torch.testing.assert_close(got[real], want[real], atol=atol, rtol=0, msg=f"{family} {dtype}")
