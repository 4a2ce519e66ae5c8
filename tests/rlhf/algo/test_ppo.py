"""PPO math against independent naive implementations (loops over tokens) and hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.algo.ppo import (
    KLController,
    combine_scores,
    compute_gae,
    kl_k1,
    kl_k3,
    leave_one_out,
    normalize_scores,
    policy_loss,
    ppo_policy_objective,
    shape_rewards,
    value_loss,
)


def response_mask(lengths, R):
    return torch.tensor([[t < n for t in range(R)] for n in lengths])


def test_kl_estimators_by_hand_and_unbiased():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_k1(lp, ref).tolist() == pytest.approx([0.5, -1.0])
    # k3 = (r - 1) - log r, r = exp(ref - lp)
    assert kl_k3(lp, ref).tolist() == pytest.approx([math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0])
    # both are unbiased for KL(p||q) when y ~ p
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    for est in (kl_k1, kl_k3):
        expectation = float((p * est(p.log(), q.log())).sum())
        assert expectation == pytest.approx(exact, abs=1e-6)


def test_shape_rewards_score_on_last_token_for_each_row():
    R = 5
    mask = response_mask([5, 2, 0, 1], R)  # full, early EOS, empty (no tokens), one token
    kl = torch.arange(20, dtype=torch.float).view(4, 5) / 10
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    got = shape_rewards(scores, kl, mask, kl_coef=0.1)
    expected = torch.zeros(4, R)
    for b, n in enumerate([5, 2, 0, 1]):
        for t in range(n):
            expected[b, t] = -0.1 * kl[b, t]
        if n:
            expected[b, n - 1] += scores[b]
    torch.testing.assert_close(got, expected)


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


def test_policy_loss_against_per_token_loop():
    lengths = [4, 2]
    mask = response_mask(lengths, 4)
    lp, old, adv = torch.randn(2, 4) * 0.3, torch.randn(2, 4) * 0.3, torch.randn(2, 4)
    loss, m = policy_loss(lp, old, adv, mask, clip_eps=0.2)
    terms, clipped = [], 0
    for b, n in enumerate(lengths):
        for t in range(n):
            r = math.exp(lp[b, t] - old[b, t])
            a = float(adv[b, t])
            rc = min(max(r, 0.8), 1.2)
            terms.append(max(-a * r, -a * rc))
            clipped += -a * rc > -a * r
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert m["policy/clipfrac"] == pytest.approx(clipped / len(terms))


def test_value_loss_against_loop():
    mask = response_mask([3, 1], 3)
    v, old, ret = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    loss, _ = value_loss(v, old, ret, mask, clip=0.2)
    terms = []
    for b, n in enumerate([3, 1]):
        for t in range(n):
            vc = float(old[b, t]) + min(max(float(v[b, t] - old[b, t]), -0.2), 0.2)
            terms.append(0.5 * max((float(v[b, t]) - float(ret[b, t])) ** 2, (vc - float(ret[b, t])) ** 2))
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_objective_mixes_entropy_and_ptx():
    mask = response_mask([2, 2], 2)
    lp = old = torch.zeros(2, 2)
    adv = torch.ones(2, 2)
    ent = torch.full((2, 2), 3.0)
    loss, m = ppo_policy_objective(lp, old, adv, mask, ent, 0.2, 0.01, torch.tensor(2.0), 0.5)
    # ratio 1: surrogate −1; − 0.01·3 entropy; + 0.5·2 ptx
    assert float(loss) == pytest.approx(-1 - 0.03 + 1.0)
    assert m["policy/ptx_loss"] == 2.0 and m["policy/entropy"] == 3.0


def test_kl_controller_fixed_and_adaptive():
    fixed = KLController(0.1)
    assert fixed.update(5.0, 64) == 0.1
    adaptive = KLController(0.1, target=6.0, horizon=100)
    assert adaptive.update(12.0, 50) == pytest.approx(0.1 * (1 + 0.2 * 0.5))  # error clipped at +0.2
    assert adaptive.update(6.0 * 0.9, 50) == pytest.approx(0.11 * (1 - 0.1 * 0.5))


def test_normalize_scores():
    out = normalize_scores(torch.tensor([1.0, 3.0, 11.0]), mean=1.0, std=2.0, clip=3.0)
    assert out.tolist() == [0.0, 1.0, 3.0]


def test_leave_one_out_baseline_against_loop():
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    got = leave_one_out(scores, 3)
    expected = []
    for g in range(2):
        s = scores[3 * g:3 * g + 3].tolist()
        expected += [s[i] - (sum(s) - s[i]) / 2 for i in range(3)]
    assert got.tolist() == pytest.approx(expected)


def test_combined_score_by_hand():
    """0.5 × clip((rm − 1) / 2, ±1) + 2 × exact + (−1) × length: the RM part alone is normalised."""
    parts = {"rm": torch.tensor([3.0, 1.0, 9.0]), "exact": torch.tensor([1.0, 0.0, 1.0]),
             "length": torch.tensor([0.5, 0.25, 0.0])}
    weights = {"rm": 0.5, "exact": 2.0, "length": -1.0}
    got = combine_scores(parts, weights, {"mean": 1.0, "std": 2.0}, clip=1.0)
    # rm normalised: (3-1)/2 = 1, (1-1)/2 = 0, (9-1)/2 = 4 → clipped to 1
    expected = [0.5 * 1 + 2 * 1 - 0.5, 0.5 * 0 + 0 - 0.25, 0.5 * 1 + 2 * 1 - 0.0]
    assert got.tolist() == pytest.approx(expected)
    # without statistics the RM score enters raw; a function alone is its own score
    assert combine_scores(parts, {"rm": 1.0}).tolist() == pytest.approx([3.0, 1.0, 9.0])
    assert combine_scores(parts, {"exact": 1.0}, {"mean": 1.0, "std": 2.0}).tolist() == [1.0, 0.0, 1.0]
