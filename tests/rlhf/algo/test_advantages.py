"""Advantage estimators against naive loops: GAE (brute-force sums), GRPO and Dr. GRPO (per-group
statistics by hand), RLOO (leave-one-out means), REINFORCE++ (returns-to-go, whitened by hand)."""

from __future__ import annotations

import statistics

import pytest
import torch

from rlhf.algo.advantages import (
    compute_gae,
    estimate_advantages,
    grpo_advantages,
    leave_one_out,
    reinforce_pp_advantages,
    rloo_advantages,
    uniform_groups,
)
from tests.rlhf.algo.test_ppo import response_mask


def naive_gae(rewards, values, lengths, gamma, lam):
    B, R = rewards.shape
    adv, ret = torch.zeros(B, R), torch.zeros(B, R)
    for b in range(B):
        n = lengths[b]
        for t in range(n):
            # brute force: A_t = sum_l (gamma*lam)^l * delta_{t+l}
            total = 0.0
            for k in range(t, n):
                v_next = values[b, k + 1] if k + 1 < n else 0.0
                delta = rewards[b, k] + gamma * v_next - values[b, k]
                total += (gamma * lam) ** (k - t) * delta
            adv[b, t] = total
            ret[b, t] = total + values[b, t]
    return adv, ret


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0)])
def test_gae_against_brute_force_sum(gamma, lam):
    lengths = [6, 3, 1, 0]
    mask = response_mask(lengths, 6)
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    exp_adv, exp_ret = naive_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv, exp_adv)
    torch.testing.assert_close(ret, exp_ret)
    if lam == 1.0 and gamma == 0.99:  # λ = 1: returns are discounted reward-to-go
        for t in range(6):
            assert float(ret[0, t]) == pytest.approx(sum(0.99 ** (k - t) * float(rewards[0, k]) for k in range(t, 6)),
                                                     abs=1e-5)


def test_leave_one_out_baseline_against_loop():
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    got = leave_one_out(scores, 3)
    expected = []
    for g in range(2):
        s = scores[3 * g:3 * g + 3].tolist()
        expected += [s[i] - (sum(s) - s[i]) / 2 for i in range(3)]
    assert got.tolist() == pytest.approx(expected)


@pytest.mark.parametrize("scale", [True, False])
def test_grpo_against_group_statistics(scale):
    lengths = [3, 1, 2, 4, 4, 2]
    mask = response_mask(lengths, 4)
    returns = torch.tensor([1.0, 0.0, 0.5, 2.0, -1.0, 0.0])
    got = grpo_advantages(returns, mask, group=3, scale_by_std=scale)
    for g in range(2):
        s = returns[3 * g:3 * g + 3].tolist()
        mean, std = statistics.fmean(s), statistics.stdev(s)
        for i in range(3):
            b = 3 * g + i
            expected = (s[i] - mean) / (std + 1e-6) if scale else s[i] - mean
            assert got[b, :lengths[b]].tolist() == pytest.approx([expected] * lengths[b], rel=1e-5)
            assert got[b, lengths[b]:].abs().sum() == 0  # padding carries no advantage


def test_rloo_against_loop():
    lengths = [2, 2, 1, 2]
    mask = response_mask(lengths, 2)
    returns = torch.tensor([3.0, 1.0, 0.0, 4.0])
    got = rloo_advantages(returns, mask, group=2)
    expected = [3 - 1, 1 - 3, 0 - 4, 4 - 0]
    for b in range(4):
        assert got[b, :lengths[b]].tolist() == pytest.approx([expected[b]] * lengths[b])
    assert float(got[2, 1]) == 0.0


def test_reinforce_pp_returns_to_go_whitened_over_the_batch():
    lengths = [3, 1, 2]
    mask = response_mask(lengths, 3)
    rewards = torch.randn(3, 3)
    gamma = 0.9
    got = reinforce_pp_advantages(rewards, mask, gamma)
    returns = {}
    for b, n in enumerate(lengths):
        for t in range(n):
            returns[b, t] = sum(gamma ** (k - t) * float(rewards[b, k]) for k in range(t, n))
    values = list(returns.values())
    mean, std = statistics.fmean(values), statistics.stdev(values)
    for (b, t), g in returns.items():
        assert float(got[b, t]) == pytest.approx((g - mean) / std, rel=1e-4, abs=1e-5)
    assert float(got[1, 1:].abs().sum()) == 0.0


def test_outcome_estimators_use_the_sum_of_shaped_rewards():
    """GRPO and RLOO see Σ_t rewards: the score and the per-token KL penalty, not the score alone."""
    mask = response_mask([2, 2], 2)
    rewards = torch.tensor([[-0.5, 1.0], [0.0, 1.0]])  # same score 1.0, the first row paid KL 0.5
    adv, returns = estimate_advantages("rloo", rewards, mask, group=2)
    assert returns is None
    assert adv[:, 0].tolist() == pytest.approx([-0.5, 0.5])
    adv, _ = estimate_advantages("grpo", rewards, mask, group=2, grpo_std=False)
    assert adv[:, 0].tolist() == pytest.approx([-0.25, 0.25])
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        estimate_advantages("ppo2", rewards, mask)


def test_gae_dispatch_whitens_only_when_asked():
    mask = response_mask([3, 2], 3)
    rewards, values = torch.randn(2, 3), torch.randn(2, 3)
    raw, ret = compute_gae(rewards, values, mask, 1.0, 0.95)
    plain, ret2 = estimate_advantages("gae", rewards, mask, values, whiten=False)
    white, _ = estimate_advantages("gae", rewards, mask, values, whiten=True)
    torch.testing.assert_close(plain, raw)
    torch.testing.assert_close(ret2, ret)
    flat = raw[mask]
    torch.testing.assert_close(white[mask], (flat - flat.mean()) / flat.std(), rtol=1e-4, atol=1e-5)


def test_uniform_groups_flags_prompts_whose_samples_all_score_the_same():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5])
    assert uniform_groups(scores, 3).tolist() == [True] * 3 + [False] * 3 + [True] * 3
