"""Model FLOPs against torch's own FLOP counter: its matmul count for a real forward (GPT-2 and
Llama-style shapes), and the attention term by hand (torch does not count the CPU SDPA kernel)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.config import ModelConfig
from models.heads import CausalLM, ScoreModel


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_forward_flops_match_torchs_count(arch):
    cfg = ModelConfig(arch=arch, vocab_size=100, max_seq_len=64, d_model=32, n_layers=2, n_heads=4,
                      **({"n_kv_heads": 2} if arch == "llama" else {}))
    B, T = 3, 16
    ids = torch.randint(0, 100, (B, T))
    attention = 4 * cfg.n_heads * cfg.head_dim * T * cfg.n_layers * B * T  # QKᵀ and AV over T keys
    for model, head_tokens in ((CausalLM(cfg), B * T), (ScoreModel(cfg), 0)):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(ids, torch.ones_like(ids, dtype=torch.bool))
        head = 2 * cfg.d_model * B * T if head_tokens == 0 else 0  # the scalar score head: 1 output per token
        assert cfg.forward_flops(B * T, T, head_tokens) - attention + head == counter.get_total_flops()
