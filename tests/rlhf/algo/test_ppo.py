"""PPO math against independent naive implementations (loops over tokens) and hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.algo.ppo import (
    KLController,
    KLTerm,
    SpreadScale,
    combine_scores,
    ensemble_scores,
    kl_k1,
    kl_k2,
    kl_k3,
    loss_weights,
    normalize_scores,
    policy_loss,
    ppo_policy_objective,
    score_unfinished,
    shape_rewards,
    truncated_is_weights,
    value_loss,
    within_prompt_variance,
)
from rlhf.algo.rollout import Rollout


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
    # k2 = ½ (log p/q)²: by hand, and its gradient in p's logits is the KL's gradient (on-policy)
    assert kl_k2(lp, ref).tolist() == pytest.approx([0.125, 0.5])
    logits = p.log().clone().requires_grad_(True)
    logp = logits.log_softmax(-1)
    exact_kl = (logp.exp() * (logp - q.log())).sum()
    (grad_exact,) = torch.autograd.grad(exact_kl, logits, retain_graph=True)
    surrogate = (logp.exp().detach() * kl_k2(logp, q.log())).sum()  # E_{y~p}[k2], p held fixed
    (grad_k2,) = torch.autograd.grad(surrogate, logits)
    torch.testing.assert_close(grad_k2, grad_exact)


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


def test_policy_loss_against_per_token_loop():
    lengths = [4, 2]
    mask = response_mask(lengths, 4)
    lp, old, adv = torch.randn(2, 4) * 0.3, torch.randn(2, 4) * 0.3, torch.randn(2, 4)
    for high in (None, 0.28):
        loss, m = policy_loss(lp, old, adv, loss_weights(mask, "token_mean", 4), 0.2, high)
        terms, clipped = [], 0
        for b, n in enumerate(lengths):
            for t in range(n):
                r = math.exp(lp[b, t] - old[b, t])
                a = float(adv[b, t])
                rc = min(max(r, 0.8), 1.2 if high is None else 1.28)
                terms.append(max(-a * r, -a * rc))
                clipped += -a * rc > -a * r
        assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
        assert m["policy/clipfrac"] == pytest.approx(clipped / len(terms))


def test_truncated_importance_sampling_by_hand():
    """min(π_old/π_sampler, cap) per token, 0 on padding; each token's surrogate is multiplied by it."""
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -1.0, 0.0]])
    sampler = torch.tensor([[-1.0, -3.0, -0.2], [-1.0, -1.0, 0.0]])
    mask = response_mask([3, 2], 3)
    w = truncated_is_weights(old, sampler, mask, cap=2.0)
    expected = [[1.0, min(math.e, 2.0), math.exp(-0.3)], [math.exp(-0.5), 1.0, 0.0]]
    torch.testing.assert_close(w, torch.tensor(expected))
    lp, adv = torch.randn(2, 3) * 0.3, torch.randn(2, 3)
    weights = loss_weights(mask, "token_mean", 3)
    loss, _ = policy_loss(lp, old, adv, weights, 0.2, None, w)
    terms = []
    for b, n in enumerate([3, 2]):
        for t in range(n):
            r = math.exp(lp[b, t] - old[b, t])
            a = float(adv[b, t])
            terms.append(expected[b][t] * max(-a * r, -a * min(max(r, 0.8), 1.2)))
    assert float(loss) == pytest.approx(sum(terms) / 5, rel=1e-5)
    # The objective passes the weights through: all-zero weights leave no surrogate.
    zero, m = ppo_policy_objective(lp, old, adv, weights, torch.zeros(2, 3), 0.2, 0.0, None, 0.0,
                                   is_weights=torch.zeros(2, 3))
    assert float(zero) == 0.0 and m["policy/pg_loss"] == 0.0


def test_clip_higher_only_widens_the_upper_bound():
    """ratio 1.25 on a positive advantage is clipped at 1.2 symmetrically, not at 1.28; ratio 0.7 on a
    negative advantage is clipped at 0.8 either way."""
    mask = torch.ones(1, 2, dtype=torch.bool)
    w = loss_weights(mask, "token_mean", 2)
    lp, adv = torch.log(torch.tensor([[1.25, 0.7]])), torch.tensor([[1.0, -1.0]])
    sym, _ = policy_loss(lp, torch.zeros(1, 2), adv, w, 0.2)
    high, _ = policy_loss(lp, torch.zeros(1, 2), adv, w, 0.2, 0.28)
    assert float(sym) == pytest.approx((-1.2 + 0.8) / 2)
    assert float(high) == pytest.approx((-1.25 + 0.8) / 2)


def naive_aggregate(per_token, lengths, mode, horizon):
    """Loops: token-mean over all tokens; mean over sequences of their token mean; Σ tokens / (B·horizon)."""
    seqs = [[float(per_token[b, t]) for t in range(n)] for b, n in enumerate(lengths)]
    if mode == "token_mean":
        flat = [x for s in seqs for x in s]
        return sum(flat) / len(flat)
    if mode == "seq_mean_token_mean":
        return sum(sum(s) / len(s) for s in seqs if s) / len(seqs)
    return sum(sum(s) for s in seqs) / (len(seqs) * horizon)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_loss_aggregation_against_loops_and_exact_over_ranks(mode):
    """Each mode against a loop; and the minibatch's gradient equals the average over 2 data-parallel
    shards of (Σ weight × loss) × 2, for uneven lengths. Per-rank token means (the old way) differ."""
    lengths = [6, 1, 2, 3]  # 7 tokens on one rank, 5 on the other
    mask = response_mask(lengths, 6)
    per_token = torch.randn(4, 6)
    w = loss_weights(mask, mode, horizon=8)
    assert float((per_token * w).sum()) == pytest.approx(naive_aggregate(per_token, lengths, mode, 8), rel=1e-5)
    theta = torch.randn(4, 6, requires_grad=True)
    (full,) = torch.autograd.grad((theta ** 2 * w).sum(), theta)
    sharded = torch.zeros_like(theta)
    for rows in (slice(0, 2), slice(2, 4)):
        (g,) = torch.autograd.grad((theta[rows] ** 2 * w[rows]).sum() * 2, theta)
        sharded += g / 2  # gradients averaged over the two ranks
    torch.testing.assert_close(sharded, full)
    if mode == "token_mean":
        per_rank = torch.zeros_like(theta)
        for rows in (slice(0, 2), slice(2, 4)):
            (g,) = torch.autograd.grad(((theta[rows] ** 2) * mask[rows]).sum() / mask[rows].sum(), theta)
            per_rank += g / 2
        assert not torch.allclose(per_rank, full)


def test_value_loss_against_loop():
    mask = response_mask([3, 1], 3)
    v, old, ret = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    loss, _ = value_loss(v, old, ret, loss_weights(mask, "token_mean", 3), clip=0.2)
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
    w = loss_weights(mask, "token_mean", 2)
    loss, m = ppo_policy_objective(lp, old, adv, w, ent, 0.2, 0.01, torch.tensor(2.0), 0.5)
    # ratio 1: surrogate −1; − 0.01·3 entropy; + 0.5·2 ptx
    assert float(loss) == pytest.approx(-1 - 0.03 + 1.0)
    assert m["policy/ptx_loss"] == 2.0 and m["policy/entropy"] == 3.0
    # the KL as a loss term: + β · mean k3 over tokens
    ref = torch.tensor([[-0.5, 0.0], [0.0, 1.0]])
    with_kl, m = ppo_policy_objective(lp, old, adv, w, ent, 0.2, 0.01, None, 0.0, kl=KLTerm(ref, 0.1, "k3"))
    k3 = [math.exp(x) - 1 - x for x in (-0.5, 0.0, 0.0, 1.0)]
    assert float(with_kl) == pytest.approx(-1 - 0.03 + 0.1 * sum(k3) / 4)
    assert m["policy/kl_loss"] == pytest.approx(sum(k3) / 4)


def test_kl_controller_fixed_and_adaptive():
    fixed = KLController(0.1)
    assert fixed.update(5.0, 64) == 0.1
    adaptive = KLController(0.1, target=6.0, horizon=100)
    assert adaptive.update(12.0, 50) == pytest.approx(0.1 * (1 + 0.2 * 0.5))  # error clipped at +0.2
    assert adaptive.update(6.0 * 0.9, 50) == pytest.approx(0.11 * (1 - 0.1 * 0.5))


def test_kl_controller_scheduled_start_by_hand():
    scheduled = KLController(0.1, start=0.5, decay_steps=4)
    assert [scheduled.at(s) for s in (0, 1, 2, 4, 10)] == pytest.approx([0.5, 0.4, 0.3, 0.1, 0.1])
    assert scheduled.update(9.0, 64) == 0.1  # the KL moves nothing: the schedule is fixed by the step
    assert KLController(0.1).at(7) == 0.1
    with pytest.raises(ValueError, match="not both"):
        KLController(0.1, target=6.0, start=0.5)


def test_spread_scale_by_hand():
    """Two prompts × 3 samples: variances (Bessel) of [1, 2, 3] and [0, 0, 6] are 1 and 12, mean 6.5;
    the next step's [2, 2, 2] and [1, 1, 4] give 0 and 3, mean 1.5; the running mean of both is 4."""
    step1, step2 = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0]), torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0, 4.0])
    assert within_prompt_variance(step1, 3) == pytest.approx(6.5)
    assert within_prompt_variance(step2, 3) == pytest.approx(1.5)
    scale = SpreadScale()
    assert scale.update(step1, 3) == pytest.approx(math.sqrt(6.5))
    assert scale.update(step2, 3) == pytest.approx(2.0)
    resumed = SpreadScale()
    resumed.load_state_dict(scale.state_dict())
    assert resumed.update(torch.zeros(6), 3) == pytest.approx(math.sqrt(8 / 3))  # (6.5 + 1.5 + 0) / 3
    assert SpreadScale(floor=0.1).update(torch.ones(6), 3) == 0.1  # constant scores: the floor


def test_normalize_scores():
    out = normalize_scores(torch.tensor([1.0, 3.0, 11.0]), mean=1.0, std=2.0, clip=3.0)
    assert out.tolist() == [0.0, 1.0, 3.0]


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


def test_ensemble_scores_by_hand():
    """Two members: A (mean 1, std 2) and B (mean 10, std 1). Each score goes on its member's scale,
    the members' reduce, and the result goes back onto A's raw scale: 1 + 2 × reduced."""
    stats = [{"mean": 1.0, "std": 2.0}, {"mean": 10.0, "std": 1.0}]
    scores = torch.tensor([[3.0, 1.0, 9.0],     # A: z = 1, 0, 4
                           [10.5, 8.0, 10.0]])  # B: z = 0.5, -2, 0
    # min: 0.5, -2, 0 → 1 + 2z = 2, -3, 1; mean: 0.75, -1, 2 → 2.5, -1, 5
    assert ensemble_scores(scores, stats, "min").tolist() == pytest.approx([2.0, -3.0, 1.0])
    assert ensemble_scores(scores, stats, "mean").tolist() == pytest.approx([2.5, -1.0, 5.0])
    # normalised by A's statistics afterwards (as combine_scores does), the result is the reduced z itself
    got = combine_scores({"rm": ensemble_scores(scores, stats, "min")}, {"rm": 1.0}, stats[0])
    assert got.tolist() == pytest.approx([0.5, -2.0, 0.0])
    # one member: its own scores
    assert ensemble_scores(scores[:1], stats[:1], "min").tolist() == pytest.approx([3.0, 1.0, 9.0])
    with pytest.raises(ValueError, match="ensemble reduction 'max'"):
        ensemble_scores(scores, stats, "max")
    with pytest.raises(ValueError, match="2 members' scores, 1 members' statistics"):
        ensemble_scores(scores, stats[:1], "min")


def test_unfinished_responses_by_hand():
    """EOS id 9. Row 0 ends with EOS, row 1 is cut at the limit, row 2 has EOS only in its padding
    (sampled after it stopped: not its end), row 3 is a lone EOS."""
    seqs = torch.tensor([[1, 4, 9, 0], [1, 4, 5, 6], [1, 4, 0, 9], [1, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=torch.bool)
    r = Rollout(seqs, torch.cat([torch.ones(4, 1, dtype=torch.bool), mask], 1), mask, prompt_len=1)
    done = r.finished(9)
    assert done.tolist() == [True, False, False, True]
    scores = torch.tensor([2.0, 3.0, -0.5, 0.25])
    assert score_unfinished(scores, done, -1.0).tolist() == [2.0, -1.0, -1.0, 0.25]
    assert score_unfinished(scores, done, None).tolist() == scores.tolist()
