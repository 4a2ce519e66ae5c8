"""The tiny PPO setup that the loop tests share: a word tokenizer, a random policy and reward model
saved as HF checkpoints, and the embedded task's prompts."""

from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.heads import CausalLM, ScoreModel
from models.hf import save_pretrained
from models.tokenizer import build_word_tokenizer
from rlhf.data import load_prompts
from rlhf.task import WORDS, EmbeddedTask, TaskConfig


def tiny_task(root, d_model: int = 32):
    """(root, tokenizer, PPO prompts) with a random 1-layer, 2-head policy and reward model under root."""
    tok = build_word_tokenizer(WORDS)
    cfg = ModelConfig(vocab_size=len(tok), max_seq_len=32, d_model=d_model, n_layers=1, n_heads=2,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    save_pretrained(CausalLM(cfg), root / "policy")
    save_pretrained(ScoreModel(cfg), root / "reward")
    files = EmbeddedTask(TaskConfig(n_sft=10, n_comparisons=10, n_ppo=64, n_eval=8)).write(root / "data")
    return root, tok, load_prompts(files["ppo_train"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_task(tmp_path_factory.mktemp("ppo"))


