"""Every PPO switch that acts in the shaping of one rollout (`shape`: scores, KL, baselines, advantages),
tested there, so that a switch the loop ignores fails a test; the loop's own switches are in
test_ppo_switches.py. Each test names the line it guards; docs/algorithms.md lists the mutation check
run against them."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.algo.advantages import compute_gae
from rlhf.algo.ppo import SpreadScale
from rlhf.algo.rollout import Rollout
from rlhf.coordinator import shape
from rlhf.schedules import train_ppo
from tests.rlhf.test_ppo_loop import base_cfg, roles


def rollout(B: int = 4, R: int = 5, lengths=(5, 3, 1, 4), seed: int = 0) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[t < n for t in range(R)] for n in lengths])
    lp = -torch.rand(B, R, generator=g) * 3 * mask
    return Rollout(torch.zeros(B, 2 + R, dtype=torch.long), torch.ones(B, 2 + R, dtype=torch.bool), mask, 2,
                   old_logprobs=lp, gen_logprobs=lp.clone(), ref_logprobs=(-torch.rand(B, R, generator=g) * 3) * mask,
                   values=torch.randn(B, R, generator=g) * mask)


RM = {"rm": torch.tensor([1.0, 3.0, -2.0, 0.5])}


def test_gae_advantages_are_whitened_over_valid_tokens_only_and_only_when_asked():
    """Guards: masked_whiten(advantages, mask) in estimate_advantages, and cfg.whiten_advantages."""
    r = rollout()
    shape(r, RM, base_cfg(steps=1, kl_coef=0.1), 0.1, None)
    valid = r.advantages[r.response_mask]
    assert float(valid.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(valid.std()) == pytest.approx(1.0, abs=1e-4)
    assert float(r.advantages[~r.response_mask].abs().sum()) == 0.0
    raw = rollout()
    shape(raw, RM, base_cfg(steps=1, kl_coef=0.1, whiten_advantages=False), 0.1, None)
    expected, _ = compute_gae(raw.rewards, raw.values, raw.response_mask, 1.0, 0.95)
    torch.testing.assert_close(raw.advantages, expected)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimator_is_the_one_configured(estimator):
    r = rollout()
    m = shape(r, RM, base_cfg(steps=1, kl_estimator=estimator), 0.1, None)
    log_ratio = (r.old_logprobs - r.ref_logprobs)[r.response_mask]
    per_token = {"k1": log_ratio, "k2": 0.5 * log_ratio ** 2, "k3": torch.expm1(-log_ratio) + log_ratio}[estimator]
    assert m["kl/sequence"] == pytest.approx(float(per_token.sum()) / 4, rel=1e-5)


def test_kl_in_the_reward_or_in_the_loss():
    """kl_penalty=loss: the rewards are the scores alone (the KL goes into the policy's loss)."""
    in_reward, in_loss = rollout(), rollout()
    shape(in_reward, RM, base_cfg(steps=1), 0.5, None)
    shape(in_loss, RM, base_cfg(steps=1, kl_penalty="loss"), 0.5, None)
    assert in_loss.rewards.sum(-1).tolist() == pytest.approx(RM["rm"].tolist())
    assert in_reward.rewards.sum(-1).tolist() != pytest.approx(RM["rm"].tolist())


def test_score_baseline_and_normalisation_reach_the_rewards():
    """Guards: leave_one_out(scores) under score_baseline, and normalize_scores with the RM's statistics."""
    cfg = base_cfg(steps=1, samples_per_prompt=2, score_baseline="leave_one_out", kl_coef=0.0)
    r = rollout()
    shape(r, RM, cfg, 0.0, None)
    assert r.rewards.sum(-1).tolist() == pytest.approx([-2.0, 2.0, -2.5, 2.5])
    r = rollout()
    cfg = cfg.model_copy(update={"score_baseline": "none", "normalize_scores": True})
    m = shape(r, RM, cfg, 0.0, {"mean": 1.0, "std": 2.0})
    assert r.scores.tolist() == pytest.approx([0.0, 1.0, -1.5, -0.25])
    assert m["reward/score"] == pytest.approx(-0.1875)


def test_score_scale_divides_the_baselined_scores_by_the_within_prompt_spread():
    """Guards: scores / spread.update(r.scores, group) under score_scale=prompt_spread. Prompts [1, 3]
    and [−2, 0.5]: variances 2 and 3.125, spread √2.5625 = 1.6008; the KL penalty is not scaled."""
    cfg = base_cfg(steps=1, samples_per_prompt=2, score_baseline="leave_one_out", score_scale="prompt_spread")
    r = rollout()
    m = shape(r, RM, cfg, 0.0, None, spread=SpreadScale())
    assert m["reward/spread"] == pytest.approx(math.sqrt(2.5625))
    assert r.rewards.sum(-1).tolist() == pytest.approx([v / math.sqrt(2.5625) for v in (-2.0, 2.0, -2.5, 2.5)])
    kl_only = rollout()
    shape(kl_only, {"rm": torch.zeros(4)}, cfg, 0.5, None, spread=SpreadScale())
    plain = rollout()
    shape(plain, {"rm": torch.zeros(4)}, cfg.model_copy(update={"score_scale": "none"}), 0.5, None)
    assert torch.equal(kl_only.rewards, plain.rewards)


def test_responses_cut_off_at_the_length_limit_get_the_missing_eos_score():
    """Guards: score_unfinished(r.scores, done, cfg.missing_eos_score) in shape. Rows 0 and 2 end with
    EOS (7) at their last valid token; row 1 has one inside its padding only, row 3 none."""
    eos = 7
    r = rollout()
    r.sequences[0, 2 + 4] = r.sequences[1, 2 + 4] = r.sequences[2, 2 + 0] = eos  # row 1's is past its 3 tokens
    cfg = base_cfg(steps=1, kl_coef=0.0, missing_eos_score=-1.5)
    m = shape(r, RM, cfg, 0.0, None, eos)
    assert r.scores.tolist() == [1.0, -1.5, -2.0, -1.5]
    assert r.rewards.sum(-1).tolist() == pytest.approx([1.0, -1.5, -2.0, -1.5])
    assert m["response/unfinished"] == 0.5
    r = rollout()
    shape(r, RM, cfg.model_copy(update={"missing_eos_score": None}), 0.0, None, eos)
    assert r.scores.tolist() == RM["rm"].tolist()


def test_normalize_scores_without_statistics_fails_loudly(setup):
    root, tok, prompts = setup
    with pytest.raises(ValueError, match="normalize_scores=true, but no reward statistics"):
        cfg = base_cfg(steps=1).model_copy(update={"normalize_scores": True})
        train_ppo(roles(root), tok, prompts, cfg, lambda m, s: None, None, lambda s: None, lambda s, t: None)


@pytest.mark.parametrize(("estimator", "extra"), [("grpo", {}), ("grpo", {"grpo_std": False}), ("rloo", {}),
                                                  ("reinforce_pp", {})])
def test_each_estimator_is_the_one_configured(estimator, extra):
    """Advantages by hand from the sequence returns (Σ rewards: score − β·KL): group of 2 here."""
    cfg = base_cfg(steps=1, samples_per_prompt=2, advantage_estimator=estimator, **extra)
    r = rollout()
    shape(r, RM, cfg, 0.1, None)
    ret = r.rewards.sum(-1)
    if estimator == "reinforce_pp":
        assert float(r.advantages[r.response_mask].mean()) == pytest.approx(0.0, abs=1e-5)
        assert r.advantages[0, 0] != r.advantages[0, 4]  # returns-to-go differ along the response
        return
    for g in (0, 1):
        a, b = float(ret[2 * g]), float(ret[2 * g + 1])
        if estimator == "rloo":
            want = a - b
        elif extra.get("grpo_std", True):
            want = (a - b) / 2 / (abs(a - b) / math.sqrt(2) + 1e-6)
        else:
            want = (a - b) / 2
        assert float(r.advantages[2 * g, 0]) == pytest.approx(want, rel=1e-4)
    assert r.returns is None
