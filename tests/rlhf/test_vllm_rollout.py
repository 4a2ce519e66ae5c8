"""ppo.rollout=vllm: the sampler/trainer mismatch is measured and corrected (truncated importance
sampling) in every run, and, where vLLM is installed (`make vllm`), the vLLM sampler itself: its
samples and log-probs against our model, the in-memory weight push, and the PPO loop on it."""

from __future__ import annotations

import pytest
import torch

from launcher.worker_group import LocalGroup
from models.config import ModelConfig
from models.generation import SamplingParams
from models.heads import CausalLM
from models.hf import to_hf_state_dict
from models.transformer import positions_from_mask
from models.vllm_sampler import vllm_available
from parallel.engine import EngineConfig, OptimConfig
from parallel.host import ModelSource
from parallel.mesh import GroupSpec
from rlhf.algo.ppo import loss_weights
from rlhf.algo.rollout import Rollout
from rlhf.coordinator import Roles, shape
from rlhf.logprobs import sampled_logprobs
from rlhf.ppo_config import PPOConfig
from rlhf.schedules import train_ppo
from rlhf.scoring import RewardWorker
from rlhf.workers import CriticWorker, PolicyStep, PolicyWorker, ReferenceWorker
from tests.rlhf.conftest import tiny_task
from tests.rlhf.test_ppo_loop import OPT, base_cfg
from tests.rlhf.test_ppo_shaping import RM, rollout

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (`make vllm`)")


def test_vllm_rollouts_need_the_trainers_logprobs_and_whole_ranks():
    with pytest.raises(ValueError, match="recompute_logprobs_every: 1"):
        PPOConfig(rollout="vllm", recompute_logprobs_every=2)
    with pytest.raises(ValueError, match="tp_size: 1"):
        PPOConfig(rollout="vllm", policy={"group": GroupSpec(ranks=2, tp_size=2)})


def test_shape_weights_tokens_by_the_truncated_ratio_for_vllm_samples_only():
    """Guards: the is_weights line in coordinator.shape, and its restriction to rollout=vllm."""
    r = rollout()
    r.gen_logprobs = r.old_logprobs + torch.tensor([0.0, 0.5, -1.0, 2.0, -0.1])[None] * r.response_mask
    m = shape(r, RM, base_cfg(steps=1, rollout="vllm", tis_cap=1.5), 0.0, None)
    expected = (r.old_logprobs - r.gen_logprobs).exp().clamp(max=1.5) * r.response_mask
    torch.testing.assert_close(r.is_weights, expected)
    assert m["rollout/tis_truncated_fraction"] > 0 and m["check/logprob_gap_mean"] > 0
    builtin = rollout()
    builtin.gen_logprobs = r.gen_logprobs
    m = shape(builtin, RM, base_cfg(steps=1), 0.0, None)
    assert builtin.is_weights is None and "rollout/tis_weight_mean" not in m
    off = rollout()
    off.gen_logprobs = r.gen_logprobs
    shape(off, RM, base_cfg(steps=1, rollout="vllm", tis_cap=None), 0.0, None)
    assert off.is_weights is None


def test_policy_step_multiplies_the_surrogate_by_the_importance_weights(setup):
    """Guards: r.is_weights passed to ppo_policy_objective in PolicyWorker.ppo_step."""
    root, tok, prompts = setup
    src = ModelSource(path=str(root / "policy"))
    hp = PolicyStep(clip_eps=0.2, entropy_coef=0.0, ptx_coef=0.0, temperature=1.0)
    losses = []
    for scale in (1.0, 3.0):
        policy = LocalGroup(PolicyWorker, src, EngineConfig(), OPT, 10, 4)
        ids = [tok(p.text)["input_ids"] for p in prompts[:4]]
        gen = policy.map(PolicyWorker.generate, ids, 12, SamplingParams(6), tok.eos_token_id, tok.pad_token_id,
                         0).get()
        r = Rollout(gen.sequences, gen.attention_mask, gen.response_mask, gen.prompt_len, old_logprobs=gen.logprobs,
                    advantages=torch.linspace(-1, 1, gen.logprobs.numel()).view_as(gen.logprobs),
                    loss_weights=loss_weights(gen.response_mask, "token_mean", 6),
                    is_weights=torch.full_like(gen.logprobs, scale))
        losses.append(policy.map(PolicyWorker.ppo_step, {"rollout": r, "ptx": None}, hp).get()["policy/pg_loss"])
    assert losses[1] == pytest.approx(3.0 * losses[0], rel=1e-4)


# ---------------------------------------------------------------- with vLLM installed


def tiny(arch: str, vocab: int, seed: int) -> CausalLM:
    """vLLM's CPU attention supports head sizes from 32 up: width 64, 2 heads."""
    cfg = ModelConfig(arch=arch, vocab_size=vocab, max_seq_len=64, d_model=64, n_layers=2, n_heads=2,
                      pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    return CausalLM(cfg).eval()


def our_logprobs(model: CausalLM, gen, params: SamplingParams) -> torch.Tensor:
    with torch.no_grad():
        logits = model(gen.sequences, gen.attention_mask, positions_from_mask(gen.attention_mask))
    logits = logits[:, gen.prompt_len - 1:-1] / params.temperature
    return sampled_logprobs(model.backend, logits, gen.responses, params.top_k, params.top_p) * gen.response_mask


@needs_vllm
@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # a tied and an untied LM head
def test_vllm_samples_match_our_model_before_and_after_a_weight_push(arch):
    from models.vllm_sampler import VLLMSampler

    first, second = tiny(arch, 24, 0), tiny(arch, 24, 1)
    sampler = VLLMSampler(first.cfg, to_hf_state_dict(first.cfg, first.state_dict()), seed=0, max_len=64)
    prompts = [[5, 6, 7], [9], [3, 4, 5, 6, 7, 8], [2, 2]] * 3
    params = SamplingParams(max_new_tokens=12, temperature=1.2, top_p=0.95)
    gen = sampler.generate(prompts, 6, params, 1, 0, seed=3)
    assert gen.sequences.shape[0] == 12 and gen.prompt_len == 6
    lengths = gen.response_mask.sum(-1)
    assert lengths.min() < 12  # EOS is likely in a vocabulary of 24: some rows end early
    for b in range(12):
        n = int(lengths[b])
        assert gen.response_mask[b, :n].all() and not gen.response_mask[b, n:].any()
        assert (gen.responses[b, n:] == 0).all()
        row = gen.responses[b, :n].tolist()
        assert 1 not in row[:-1] and (row[-1] == 1 or n == 12)  # up to the first EOS, or to the limit
        assert gen.sequences[b, 6 - len(prompts[b]):6].tolist() == prompts[b]
    gap = (our_logprobs(first, gen, params) - gen.logprobs).abs().max()
    assert gap < 1e-5, gap
    sampler.load_weights(to_hf_state_dict(second.cfg, second.state_dict()))
    params = SamplingParams(max_new_tokens=12, temperature=0.8, top_k=10)
    gen = sampler.generate(prompts, 6, params, 1, 0, seed=3)
    assert (our_logprobs(second, gen, params) - gen.logprobs).abs().max() < 1e-5
    assert (our_logprobs(first, gen, params) - gen.logprobs).abs().max() > 1e-2


@needs_vllm
def test_ppo_loop_on_vllm_rollouts_keeps_sampler_and_trainer_in_step(tmp_path):
    """After every update the weights reach vLLM: the log-prob gap stays at rounding while the policy
    moves (a missed push shows as a gap of the policy's change); TIS is logged."""
    _, tok, prompts = tiny_task(tmp_path, d_model=64)  # heads of 32: vLLM's CPU attention has no 16
    policy, reward = ModelSource(path=str(tmp_path / "policy")), ModelSource(path=str(tmp_path / "reward"))
    roles = Roles(LocalGroup(PolicyWorker, policy, EngineConfig(), OptimConfig(lr=1e-2, warmup_steps=0), 100, 4,
                             rollout="vllm"),
                  LocalGroup(ReferenceWorker, policy, EngineConfig()),
                  LocalGroup(CriticWorker, reward, EngineConfig(), OPT, 100, 4),
                  LocalGroup(RewardWorker, reward, EngineConfig()))
    logged = {}
    train_ppo(roles, tok, prompts, base_cfg(steps=4, kl_coef=0.05, rollout="vllm"),
              lambda m, s: logged.__setitem__(s, m), None, lambda s: None, lambda s, st: None, None)
    for step in (1, 2, 3, 4):
        assert logged[step]["check/logprob_gap_max"] < 1e-4, (step, logged[step]["check/logprob_gap_max"])
        assert logged[step]["rollout/tis_weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert logged[4]["kl/sequence"] > 0.01  # the policy moved away from where vLLM started
