"""Packed (varlen) rows against the padded batch they come from: same outputs on every real token."""

from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.heads import CausalLM, ScoreModel
from models.packing import first_fit_decreasing, pack_rows
from models.transformer import positions_from_mask


def rollout_like(B=9, P=7, R=11, seed=0):
    """Left-padded prompts of 1..P tokens, responses of 1..R tokens right-padded (a PPO rollout)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (B, P + R), generator=g)
    mask = torch.zeros(B, P + R, dtype=torch.bool)
    for b in range(B):
        p = int(torch.randint(1, P + 1, (1,), generator=g))
        r = int(torch.randint(1, R + 1, (1,), generator=g))
        mask[b, P - p:P + r] = True
    return ids, mask


def test_first_fit_decreasing_by_hand():
    # Longest first: 6 opens bin 0; 5 opens bin 1; 4 fits bin 1 (9 > 8? no: 5 + 4 = 9 > 8 → bin 2);
    # 2 fits bin 0 (8); 1 fits bin 1 (6); 0-length items are dropped.
    assert first_fit_decreasing([2, 6, 0, 5, 4, 1], 8) == [[1, 0], [3, 5], [4]]
    assert first_fit_decreasing([], 8) == []


def test_pack_rows_layout():
    ids, mask = rollout_like()
    p = pack_rows(ids, mask)
    lengths = mask.sum(-1)
    assert p.input_ids.shape[1] == int(lengths.max())
    assert p.input_ids.shape[0] < ids.shape[0]  # short rows shared a packed row
    assert p.target.numel() == int(mask.sum())
    for b in range(ids.shape[0]):
        where = p.segments == b
        assert int(where.sum()) == int(lengths[b])
        torch.testing.assert_close(p.input_ids[where], ids[b][mask[b]])  # tokens in order, contiguous
        torch.testing.assert_close(p.positions[where], torch.arange(int(lengths[b])))
    assert (p.positions[p.segments < 0] == 0).all()
    back = p.unpack(p.input_ids[..., None].float())[..., 0]
    torch.testing.assert_close(back, (ids * mask).float())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_forward_equals_padded_forward(arch):
    cfg = ModelConfig(arch=arch, vocab_size=50, max_seq_len=32, d_model=32, n_layers=2, n_heads=4,
                      n_kv_heads=2 if arch == "llama" else None)
    ids, mask = rollout_like()
    for model in (CausalLM(cfg).eval(), ScoreModel(cfg).eval()):
        with torch.no_grad():
            padded = model(ids, mask, positions_from_mask(mask))
            p = pack_rows(ids, mask)
            packed = p.unpack(model(p.input_ids, None, p.positions, segments=p.segments))
        torch.testing.assert_close(packed[mask], padded[mask], atol=1e-5, rtol=0)
        assert (packed[~mask] == 0).all()


def test_packed_gradients_equal_padded_gradients():
    cfg = ModelConfig(arch="llama", vocab_size=50, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)
    ids, mask = rollout_like(seed=1)
    model = CausalLM(cfg)
    weights = torch.randn(*ids.shape, cfg.vocab_size) * mask[..., None]

    def grads(packed: bool):
        model.zero_grad()
        if packed:
            p = pack_rows(ids, mask)
            out = p.unpack(model(p.input_ids, None, p.positions, segments=p.segments))
        else:
            out = model(ids, mask, positions_from_mask(mask))
        (out * weights).sum().backward()
        return [q.grad.clone() for q in model.parameters()]

    for a, b in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_segments_without_positions_is_refused():
    cfg = ModelConfig(arch="gpt2", vocab_size=50, max_seq_len=32, d_model=32, n_layers=1, n_heads=4)
    with pytest.raises(ValueError, match="position_ids"):
        CausalLM(cfg)(torch.zeros(1, 4, dtype=torch.long), segments=torch.zeros(1, 4, dtype=torch.int32))
