"""Distributed engine on real processes: Ray actors, gloo, DeepSpeed ZeRO and Megatron-core TP.

Every optimised layout is compared with the plain one (STYLE rule 13).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from launcher.worker_group import GroupSpec, LocalGroup, RayGroup, build_groups, shutdown_groups
from models.hf import read_hf_config
from parallel.engine import EngineConfig, OptimConfig
from parallel.host import ModelSource
from parallel.memory import Layout, model_state_bytes
from rlhf.algo.rollout import Rollout
from rlhf.batching import Encoded, collate_lm
from rlhf.workers import PolicyWorker

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
OPTIM = OptimConfig(lr=1e-2, warmup_steps=0, grad_clip=1.0, weight_decay=0.01)


def checkpoint(tmp_path, arch: str):
    """gpt2, llama, qwen2 (q/k/v biases: column-parallel biases under TP) or qwen3 (per-head q/k norms,
    whose gains are replicated while the heads are split)."""
    if arch == "gpt2":
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    else:
        family = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[arch]
        extra = {"head_dim": 16} if arch == "qwen3" else {}
        hf_cfg = getattr(transformers, f"{family}Config")(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, **extra)
        hf = getattr(transformers, f"{family}ForCausalLM")(hf_cfg)
        with torch.no_grad():  # non-trivial norm gains and biases, so a mis-sharded one shows
            for name, p in hf.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    p.add_(0.2 * torch.randn_like(p))
    path = tmp_path / arch
    hf.save_pretrained(path)
    return path


def batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        examples = [Encoded(torch.randint(2, 64, (5,), generator=g).tolist(),
                            torch.randint(2, 64, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist(),
                            False) for _ in range(4)]
        out.append(collate_lm(examples, pad_id=0))
    return out


def ray_group(ranks, tp, *args, timeout_s: float = 900.0, **kwargs) -> RayGroup:
    spec = GroupSpec(ranks=ranks, tp_size=tp, cpus_per_rank=1.0)
    return build_groups({"policy": (PolicyWorker, spec, args, kwargs)}, timeout_s=timeout_s)["policy"]


def close(group):
    shutdown_groups({"g": group})


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_tp2_logits_equal_tp1_and_export_merges(ray_cluster, tmp_path, arch):
    path = checkpoint(tmp_path, arch)
    src = ModelSource(path=str(path))
    batch = batches(1)[0]
    local = LocalGroup(PolicyWorker, src, EngineConfig())
    expected = local.map(PolicyWorker.logits, batch).get()
    # Log-probs of the top-k/top-p distribution need the whole vocabulary: TP gathers its shards first.
    rollout = Rollout(batch.input_ids, batch.attention_mask, batch.attention_mask[:, 4:], 4)
    filtered = local.map(PolicyWorker.logprobs, rollout, 1.0, 5, 0.9).get()
    tp = ray_group(2, 2, src, EngineConfig())
    try:
        got = tp.map(PolicyWorker.logits, batch).get()
        torch.testing.assert_close(tp.map(PolicyWorker.logprobs, rollout, 1.0, 5, 0.9).get(), filtered, atol=1e-5,
                                   rtol=0)
        info = tp.broadcast(PolicyWorker.describe).get()
        assert [i["tp_rank"] for i in info] == [0, 1] and len({i["pid"] for i in info}) == 2
        out = tp.broadcast(PolicyWorker.export, str(tmp_path / "merged")).get()[0]
    finally:
        close(tp)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    real = batch.attention_mask
    torch.testing.assert_close(theirs[real], expected[real], atol=1e-5, rtol=0)


def train_losses(group, data) -> list[float]:
    return [group.map(PolicyWorker.sft_step, b).get()["loss"] for b in data]


def test_zero_stages_match_plain_adamw_and_zero3_halves_memory(ray_cluster, tmp_path):
    src = ModelSource(path=str(checkpoint(tmp_path, "llama")))
    data = batches(3)
    losses, numel = {}, {}
    exported = {}
    for stage in (0, 2, 3):
        engine = EngineConfig(zero_stage=stage, param_persistence_threshold=0)
        group = ray_group(2, 1, src, engine, OPTIM, 10, 2)
        try:
            losses[stage] = train_losses(group, data)
            numel[stage] = group.broadcast(PolicyWorker.describe).get()
            if stage in (0, 3):
                exported[stage] = group.broadcast(PolicyWorker.export, str(tmp_path / f"zero{stage}")).get()[0]
                expected_logits = group.map(PolicyWorker.logits, data[0]).get()
        finally:
            close(group)
    # fp32 on CPU; ZeRO reduces gradients in buckets, so sums differ from plain all-reduce in rounding only
    for stage in (2, 3):
        torch.testing.assert_close(torch.tensor(losses[stage]), torch.tensor(losses[0]), atol=1e-5, rtol=1e-5)
    assert losses[0][-1] < losses[0][0]
    full = numel[0][0]["numel"]
    # Stage 0: whole fp32 weights and two Adam moments on every rank. Stage 3 at DP=2: half the weights,
    # and half of ZeRO's fp32 master copy and of the moments (bench/zero_memory.py reports these bytes).
    assert numel[0][0]["param_bytes"] == 4 * full and numel[0][0]["optimizer_bytes"] == 2 * 4 * full
    # `instructrl plan` (parallel/memory.py) from the shape alone, within 10% of what each engine holds
    assert read_hf_config(src.path).num_params() == full
    for stage in (0, 2, 3):
        planned = model_state_bytes(full, Layout(stage, tp=1, dp=2, precision="fp32"), trains=True)
        for rank in numel[stage]:
            assert rank["param_bytes"] == pytest.approx(planned["params"], rel=0.1), (stage, rank)
            assert rank["optimizer_bytes"] == pytest.approx(planned["optimizer"], rel=0.1), (stage, rank)
    for rank in numel[3]:
        assert abs(rank["numel"] / full - 0.5) < 0.02, (rank, full)
        assert abs(rank["param_bytes"] / (4 * full) - 0.5) < 0.02, (rank, full)
        assert abs(rank["optimizer_bytes"] / (3 * 4 * full) - 0.5) < 0.02, (rank, full)
    # ZeRO-3 export is consolidated: transformers reproduces the group's own logits after training
    hf = AutoModelForCausalLM.from_pretrained(exported[3]).eval()
    with torch.no_grad():
        theirs = hf(input_ids=data[0].input_ids, attention_mask=data[0].attention_mask.long()).logits
    real = data[0].attention_mask
    torch.testing.assert_close(theirs[real], expected_logits[real], atol=1e-5, rtol=0)
    ref = AutoModelForCausalLM.from_pretrained(exported[0])
    for (name, a), b in zip(hf.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


def test_tp2_x_dp2_zero2_matches_dp2_plain_adamw(ray_cluster, tmp_path):
    src = ModelSource(path=str(checkpoint(tmp_path, "qwen3")))
    data = batches(2, seed=2)
    losses = {}
    for ranks, tp, stage in ((2, 1, 0), (4, 2, 2)):
        group = ray_group(ranks, tp, src, EngineConfig(zero_stage=stage), OPTIM, 10, 2)
        try:
            losses[tp] = train_losses(group, data)
            info = group.broadcast(PolicyWorker.describe).get()
        finally:
            close(group)
    assert [(i["tp_rank"], i["dp_rank"]) for i in info] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    torch.testing.assert_close(torch.tensor(losses[2]), torch.tensor(losses[1]), atol=1e-5, rtol=1e-5)


def test_colocated_groups_share_bundles(ray_cluster, tmp_path):
    src = ModelSource(path=str(checkpoint(tmp_path, "gpt2")))
    spec = GroupSpec(ranks=2, cpus_per_rank=0.5)
    groups = build_groups({
        "policy": (PolicyWorker, spec, (src, EngineConfig()), {}),
        "reference": (PolicyWorker, spec.model_copy(update={"colocate_with": "policy"}), (src, EngineConfig()), {}),
    })
    try:
        a, b = (groups[r].map(PolicyWorker.logits, batches(1)[0]) for r in ("policy", "reference"))
        torch.testing.assert_close(a.get(), b.get())  # both handles were in flight together
        info = groups["policy"].info + groups["reference"].info
    finally:
        shutdown_groups(groups)
    assert len({i["pid"] for i in info}) == 4  # four processes ...
    assert len({i["placement_group"] for i in info}) == 1  # ... on one placement group's bundles


def test_tp2_x_dp2_zero3_averages_each_ranks_part_into_the_mean_of_the_whole_weights(ray_cluster, tmp_path):
    """ppo.average_last's two rank calls on TP 2 × DP 2 under ZeRO-3: each rank keeps its tensor-parallel part
    (gathered over its ZeRO-3 partition) before and after an update, and their mean put back in place exports,
    merged, as the plain mean of the two whole exports (guards PolicyWorker.snapshot / average_snapshots and the
    ZeRO engine's set_local_state, which re-partitions)."""
    from parallel.host import read_checkpoint

    src = ModelSource(path=str(checkpoint(tmp_path, "qwen2")))
    group = ray_group(4, 2, src, EngineConfig(zero_stage=3, param_persistence_threshold=0), OPTIM, 10, 2)
    try:
        for name in ("a", "b"):
            group.broadcast(PolicyWorker.snapshot, str(tmp_path / "kept" / name)).get()
            group.broadcast(PolicyWorker.export, str(tmp_path / name)).get()
            train_losses(group, batches(1, seed=3))
        group.broadcast(PolicyWorker.average_snapshots, [str(tmp_path / "kept" / n) for n in ("a", "b")]).get()
        group.broadcast(PolicyWorker.export, str(tmp_path / "mean")).get()
    finally:
        close(group)
    kept = sorted(p.name for p in (tmp_path / "kept" / "a").iterdir())
    assert kept == [f"rank-0000{r}.safetensors" for r in range(4)]
    (_, a), (_, b), (_, mean) = (read_checkpoint(tmp_path / n) for n in ("a", "b", "mean"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for k in a:
        torch.testing.assert_close(mean[k], (a[k] + b[k]) / 2, atol=1e-6, rtol=0)


def test_local_group_runs_zero3_in_process(tmp_path):
    src = ModelSource(path=str(checkpoint(tmp_path, "gpt2")))
    data = batches(2)
    plain = LocalGroup(PolicyWorker, src, EngineConfig(), OPTIM, 10, 4)
    zero3 = LocalGroup(PolicyWorker, src, EngineConfig(zero_stage=3), OPTIM, 10, 4)
    torch.testing.assert_close(torch.tensor(train_losses(zero3, data)), torch.tensor(train_losses(plain, data)),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("zero_stage, tp", [(2, 1), (0, 2)])
def test_save_resume_gives_the_same_next_loss(ray_cluster, tmp_path, zero_stage, tp):
    """DeepSpeed's checkpoint (ZeRO-2, DP=2), and the plain engine's under tensor parallelism (TP=2): a Megatron
    layer's state_dict holds a non-tensor entry, which once made every TP=2 checkpoint of the default engine fail."""
    src = ModelSource(path=str(checkpoint(tmp_path, "gpt2")))
    data = batches(4, seed=1)
    engine = EngineConfig(zero_stage=zero_stage)
    group = ray_group(2, tp, src, engine, OPTIM, 10, 2)
    try:
        straight = train_losses(group, data)
    finally:
        close(group)
    group = ray_group(2, tp, src, engine, OPTIM, 10, 2)
    try:
        first = train_losses(group, data[:2])
        group.broadcast(PolicyWorker.save_state, str(tmp_path / "ckpt"), {"step": 2}).get()
    finally:
        close(group)
    group = ray_group(2, tp, src, engine, OPTIM, 10, 2)
    try:
        assert group.broadcast(PolicyWorker.load_state, str(tmp_path / "ckpt")).get()[0] == {"step": 2}
        resumed = train_losses(group, data[2:])
    finally:
        close(group)
    assert first == straight[:2]
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(straight[2:]), atol=0, rtol=0)


def test_a_rank_without_tensor_parallelism_never_imports_megatron(tmp_path):
    """Importing megatron.core costs a rank seconds at every start; a TP=1 rank (ZeRO-2, a training step)
    runs without it, its data-parallel group the whole world. A fresh interpreter: this one has it."""
    path = checkpoint(tmp_path, "gpt2")
    script = f"""
import sys, torch
from launcher.worker_group import LocalGroup
from parallel.engine import EngineConfig, OptimConfig
from parallel.host import ModelSource
from tests.parallel.test_groups import batches
from rlhf.workers import PolicyWorker
group = LocalGroup(PolicyWorker, ModelSource(path={str(path)!r}), EngineConfig(zero_stage=2),
                   OptimConfig(lr=1e-2, warmup_steps=0), 10, 4)
loss = group.map(PolicyWorker.sft_step, batches(1)[0]).get()["loss"]
assert torch.isfinite(torch.tensor(loss)), loss
print("megatron" if any(m.startswith("megatron") for m in sys.modules) else "none")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "none", done.stdout[-2000:]


def test_zero_offload_cpu_adam_matches_plain_adamw(tmp_path):
    """ZeRO-Offload steps with DeepSpeed's CPU Adam (a C++ op, compiled once per machine)."""
    src = ModelSource(path=str(checkpoint(tmp_path, "llama")))
    data = batches(3)
    plain = LocalGroup(PolicyWorker, src, EngineConfig(), OPTIM, 10, 4)
    offload = LocalGroup(PolicyWorker, src, EngineConfig(zero_stage=2, offload_optimizer=True), OPTIM, 10, 4)
    torch.testing.assert_close(torch.tensor(train_losses(offload, data)), torch.tensor(train_losses(plain, data)),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_a_nonfinite_loss_on_one_rank_skips_the_update_on_every_rank(ray_cluster, tmp_path, zero_stage):
    """NaN advantages in the second data-parallel rank's half only: neither rank steps (a rank that
    stepped alone would leave the replicas different); with finite advantages both do, and the update
    equals one rank's on the whole minibatch although the ranks hold 8 and 2 response tokens (the
    token-mean is over the minibatch, not each rank's share)."""
    from rlhf.algo.ppo import loss_weights
    from rlhf.workers import PolicyStep

    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(2, 64, (4, 8), generator=g)
    rmask = torch.tensor([[True] * 4, [True] * 4, [True, False, False, False], [True, False, False, False]])
    attn = torch.cat([torch.ones(4, 4, dtype=torch.bool), rmask], 1)
    rollout = Rollout(seqs, attn, rmask, 4, old_logprobs=torch.full((4, 4), -4.0) * rmask,
                      advantages=torch.randn(4, 4, generator=g) * rmask,
                      loss_weights=loss_weights(rmask, "token_mean", 4))
    poisoned = Rollout(**{**vars(rollout), "advantages": rollout.advantages.clone()})
    poisoned.advantages[3, 0] = float("nan")  # row 3 goes to data-parallel rank 1
    hp = PolicyStep(clip_eps=0.2, entropy_coef=0.0, ptx_coef=0.0, temperature=1.0)
    probe = batches(1)[0]
    source = ModelSource(path=str(checkpoint(tmp_path, "gpt2")))
    # A rank that stepped alone would wait in a collective for its peer: the short timeout turns that
    # deadlock into a failure here.
    group = ray_group(2, 1, source, EngineConfig(zero_stage=zero_stage), OPTIM, 10, 2, timeout_s=60)
    try:
        before = group.map(PolicyWorker.logits, probe).get()
        out = group.map(PolicyWorker.ppo_step, {"rollout": poisoned, "ptx": None}, hp).get()
        assert out["policy/skipped"] == 1.0  # the average over both ranks: both skipped
        torch.testing.assert_close(group.map(PolicyWorker.logits, probe).get(), before, atol=0, rtol=0)
        out = group.map(PolicyWorker.ppo_step, {"rollout": rollout, "ptx": None}, hp).get()
        assert out["policy/skipped"] == 0.0
        after = group.map(PolicyWorker.logits, probe).get()
        assert not torch.equal(after, before)
        alone = LocalGroup(PolicyWorker, source, EngineConfig(), OPTIM, 10, 4)
        alone.map(PolicyWorker.ppo_step, {"rollout": rollout, "ptx": None}, hp).get()
        torch.testing.assert_close(after, alone.map(PolicyWorker.logits, probe).get(), atol=2e-5, rtol=1e-4)
    finally:
        close(group)


def test_a_killed_rank_of_a_two_rank_group_fails_the_call_at_once(ray_cluster, tmp_path):
    """Rank 1 killed: the call fails within seconds as WorkerLost, however it surfaces first (the dead
    actor, or rank 0's all-reduce that lost its peer: gloo's "Connection closed by peer")."""
    import os
    import signal
    import time

    from launcher.worker_group import WorkerLost

    group = ray_group(2, 1, ModelSource(path=str(checkpoint(tmp_path, "gpt2"))), EngineConfig(), OPTIM, 10, 2,
                      timeout_s=120)
    try:
        os.kill(group.info[1]["pid"], signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerLost, match=r"policy rank \d: PolicyWorker.sft_step: "):
            group.map(PolicyWorker.sft_step, batches(1)[0]).get()
        assert time.monotonic() - start < 30
    finally:
        close(group)


def test_what_counts_as_a_lost_worker(ray_cluster):
    """A rank whose collective lost its peer (gloo says so only in a RuntimeError's message: closed
    when the peer process died, reset when its node went) is a lost
    worker, to restart from; a bug in a rank is not: it is raised as it is, never retried."""
    import ray

    from launcher.worker_group import WorkerLost, wait_all

    @ray.remote(num_cpus=0.1)
    def peer_gone():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:24494")

    @ray.remote(num_cpus=0.1)
    def node_gone():  # what gloo said when the peer's whole node was killed (test_multinode)
        raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:7398: Connection reset by peer.")

    @ray.remote(num_cpus=0.1)
    def bug():
        raise ValueError("a bug")

    for gone in (peer_gone, node_gone):
        with pytest.raises(WorkerLost, match="g rank 0: step: a collective failed, a peer rank is gone"):
            wait_all([gone.remote()], ["g rank 0: step"], 60)
    with pytest.raises(ValueError, match="a bug"):
        wait_all([bug.remote()], ["g rank 0: step"], 60)
