"""`instructrl plan`'s arithmetic by hand (ZeRO §3.1's 2Ψ + 2Ψ + 12Ψ, divided by stage), and the command.
Its figures against the engines' own byte counters: tests/parallel/test_groups.py (ZeRO 0, 2, 3 at DP 2)."""

from __future__ import annotations

import pytest

from launcher.cli import main
from models.config import preset
from parallel.memory import (
    GIB,
    ROLES,
    Layout,
    Work,
    colocated_bytes,
    kv_cache_bytes,
    model_state_bytes,
    role_bytes,
    turns_bytes,
)


@pytest.mark.parametrize("stage, expected", [
    (0, (2, 2, 4)),       # plain AdamW in bf16: moments in the weights' precision, no master copy
    (1, (2, 2, 12 / 4)),  # the optimizer state divided among 4 data-parallel ranks
    (2, (2, 2 / 4, 12 / 4)),
    (3, (2 / 4, 2 / 4, 12 / 4)),
])
def test_model_state_bytes_per_parameter_by_hand(stage, expected):
    got = model_state_bytes(1_000, Layout(stage, tp=1, dp=4), trains=True)
    assert (got["params"], got["grads"], got["optimizer"]) == pytest.approx(tuple(1_000 * x for x in expected))


def test_tensor_parallelism_offload_and_frozen_roles():
    full = model_state_bytes(1_000, Layout(3, tp=2, dp=4, precision="fp32"), trains=True)
    assert full == pytest.approx({"params": 1_000 * 4 / 2 / 4, "grads": 1_000 * 4 / 2 / 4, "optimizer": 1_000 * 12 / 8})
    offloaded = model_state_bytes(1_000, Layout(3, dp=4, offload_optimizer=True, offload_params=True), trains=True)
    assert offloaded["params"] == offloaded["optimizer"] == 0 and offloaded["grads"] == 500
    assert model_state_bytes(1_000, Layout(0), trains=False) == {"params": 2_000, "grads": 0.0, "optimizer": 0.0}


def test_kv_cache_and_the_colocated_peak():
    cfg = preset("llama-7b")  # 32 layers, 32 KV heads of 128
    # 2 (K, V) · 32 layers · 16 sequences · 1024 tokens · 32 heads · 128 · 2 bytes = 8 GiB, halved by TP 2
    assert kv_cache_bytes(cfg, Layout(tp=2), Work(seq_len=1024, gen_batch=16)) == 4 * GIB
    # roles take turns: their model states add up, and only the largest working set of one phase counts
    # (here the policy's KV cache, 64 GiB for 128 sequences, above every role's activations)
    layout, work = Layout(3, dp=8), Work(seq_len=1024, micro_batch=4, gen_batch=128)
    parts = [role_bytes(cfg, role, layout, work) for role in ROLES]
    assert kv_cache_bytes(cfg, layout, work) == 64 * GIB > max(p["activations"] for p in parts)
    state = sum(p["params"] + p["grads"] + p["optimizer"] for p in parts)
    assert colocated_bytes(cfg, layout, work) == pytest.approx(state + 64 * GIB)
    assert colocated_bytes(cfg, layout, work) < sum(p["total"] for p in parts)
    # ppo.schedule=colocated: one role's state at a time, the policy's (weights, gradients, Adam, KV cache)
    layout = Layout(2, dp=8)
    parts = {role: role_bytes(cfg, role, layout, work) for role in ROLES}
    assert turns_bytes(cfg, layout, work) == parts["policy"]["total"] == max(p["total"] for p in parts.values())
    assert turns_bytes(cfg, layout, work) < colocated_bytes(cfg, layout, work)
    assert turns_bytes(cfg, Layout(3, dp=8), work) is None and turns_bytes(cfg, Layout(2, 1, 8, True), work) is None


def test_plan_lists_layouts_for_1b_7b_70b_on_eight_80_gib_devices(capsys):
    for model in ("llama-1b", "llama-7b", "llama-70b"):
        assert main(["plan", "--model", model, "--devices", "8", "--micro-batch", "1", "--gen-batch", "16"]) == 0
    out = capsys.readouterr().out
    seventy = out.split("68.98 B parameters")[1]
    assert "ZeRO-3, TP 8 × DP 1, bf16 + offload (optimizer, weights)" in seventy and "ZeRO-0" not in seventy
    assert "1.24 B parameters" in out and "ZeRO-0, TP 1 × DP 8, bf16" in out.split("6.74 B")[0]
    assert main(["plan", "--model", "llama-7b", "--zero", "3", "--dp", "8"]) == 0
    table = capsys.readouterr().out
    assert "policy" in table and "all four roles on the same devices, one phase at a time" in table
    assert "ppo.schedule=colocated (one role's state on the device at a time): not offered with ZeRO-3" in table
    assert main(["plan", "--model", "llama-7b", "--zero", "2", "--dp", "8"]) == 0
    assert "ppo.schedule=colocated, one role's state on the device at a time" in capsys.readouterr().out
    assert main(["plan", "--model", "nope"]) == 2 and "--model nope: neither a preset" in capsys.readouterr().err


def test_the_reward_role_holds_every_member_of_its_ensemble():
    """rm.ensemble: each member's weights are resident in the reward role; they score one after another,
    so the working set is one model's."""
    cfg, layout = preset("llama-7b"), Layout(2, dp=8)
    one, two = (role_bytes(cfg, "reward", layout, Work(reward_models=k)) for k in (1, 2))
    assert two["params"] == 2 * one["params"] > 0 and two["activations"] == one["activations"]
    assert two["total"] == pytest.approx(one["total"] + one["params"])
    assert role_bytes(cfg, "reference", layout, Work(reward_models=2)) == role_bytes(cfg, "reference", layout, Work())
