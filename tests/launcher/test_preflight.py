"""Where each model starts, for every combination of the config keys that choose it."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.config import load_config
from launcher.preflight import model_paths

FN = "ppo.reward_functions=[x.py:f]"


@pytest.mark.parametrize(("overrides", "expected"), [
    # the embedded task: SFT, then RM from SFT, PPO from both; the critic from the reward model (InstructGPT)
    ([], {"sft_init": None, "rm_init": "R/sft", "policy": "R/sft", "reward": "R/rm", "critic": "R/rm"}),
    # no reward model: the critic starts from the policy's start
    (["ppo.reward_model=null", FN], {"reward": None, "critic": "R/sft"}),
    (["ppo.reward_model=/rm", "ppo.critic_init=/critic"], {"reward": "/rm", "critic": "/critic"}),
    (["ppo.policy_init=/p", "ppo.reward_model=null", FN], {"policy": "/p", "critic": "/p"}),
    (["rm.init=/base"], {"rm_init": "/base"}),
    # user data without demonstrations: the pretrained checkpoint is the start of everything
    (["model.pretrained=/hf", "ppo.prompts=p.jsonl", "ppo.reward_model=null", FN],
     {"sft_init": "/hf", "rm_init": "/hf", "policy": "/hf", "reward": None, "critic": "/hf"}),
    (["model.pretrained=/hf", "sft.train_data=s.jsonl", "ppo.prompts=p.jsonl", "rm.train_data=c.jsonl"],
     {"sft_init": "/hf", "rm_init": "R/sft", "policy": "R/sft", "reward": "R/rm", "critic": "R/rm"}),
])
def test_where_each_model_starts(overrides, expected):
    cfg = load_config(None, ["run.out_dir=/o", "run.name=n", *overrides])
    paths = model_paths(cfg)
    for role, want in expected.items():
        want = None if want is None else Path(want.replace("R/", "/o/n/"))
        assert paths[role] == want, (role, paths)


def test_free_head_size_and_mlp_width_shape_the_layers():
    from models.config import ModelConfig
    from models.heads import CausalLM

    cfg = ModelConfig(arch="qwen3", vocab_size=11, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_head=16, d_ff=48)
    attn, mlp = CausalLM(cfg).body.blocks[0].attn, CausalLM(cfg).body.blocks[0].mlp
    assert attn.q_proj.weight.shape == (64, 32) and attn.k_proj.weight.shape == (32, 32)  # 4 × 16, 2 × 16
    assert attn.o_proj.weight.shape == (32, 64) and attn.q_norm.weight.shape == (16,)
    assert mlp.up_proj.weight.shape == (48, 32) and mlp.down_proj.weight.shape == (32, 48)
    assert cfg.num_params() == sum(p.numel() for p in CausalLM(cfg).parameters())
