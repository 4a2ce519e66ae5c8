"""Ranking loss against a naive pair-by-pair implementation, values and gradients."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch

from rlhf.algo.ranking import length_bias, ranking_loss


def naive(rewards: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """Literally eq. 1: per prompt, average −log σ(r_w − r_l) over all C(K,2) pairs; mean over prompts."""
    total, offset = 0.0, 0
    for k in sizes:
        pairs = list(itertools.combinations(range(k), 2))
        assert len(pairs) == math.comb(k, 2)
        per_prompt = 0.0
        for w, lo in pairs:
            diff = rewards[offset + w] - rewards[offset + lo]
            per_prompt = per_prompt - torch.log(1 / (1 + torch.exp(-diff)))
        total = total + per_prompt / len(pairs)
        offset += k
    return total / len(sizes)


def test_matches_naive_values_and_gradients():
    sizes = [4, 2, 9, 3]
    r1 = torch.randn(sum(sizes), dtype=torch.float64, requires_grad=True)
    r2 = r1.detach().clone().requires_grad_(True)
    loss, metrics = ranking_loss(r1, sizes)
    expected = naive(list(r2.unbind()), sizes)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(r1.grad, r2.grad)


def test_k2_is_the_plain_pairwise_loss():
    chosen, rejected = torch.randn(5), torch.randn(5)
    flat = torch.stack([chosen, rejected], 1).flatten()
    loss, metrics = ranking_loss(flat, [2] * 5)
    torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(chosen - rejected).mean())
    assert metrics["accuracy"] == pytest.approx(float((chosen > rejected).float().mean()))
    assert metrics["margin"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-6)


def test_values_by_hand():
    # one prompt, K = 3, rewards 2, 1, 0: pairs margins 1, 2, 1
    loss, m = ranking_loss(torch.tensor([2.0, 1.0, 0.0]), [3])
    by_hand = (2 * math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 3
    assert float(loss) == pytest.approx(by_hand)
    assert m["accuracy"] == 1.0 and m["margin"] == pytest.approx(4 / 3)


def test_rejects_single_response():
    with pytest.raises(ValueError, match="at least 2"):
        ranking_loss(torch.zeros(3), [2, 1])


def test_length_bias_by_hand():
    """A ranking of 3 and a pair. Pairs (0,1) and (0,2): the winner is the shorter (2 < 3 tokens), the
    RM scores it higher; (1,2): equal lengths, left out; (3,4): the winner is the longer (4 > 2), the
    RM scores it lower. Labels prefer the longer 1 of 3, the RM 0 of 3."""
    rewards = torch.tensor([3.0, 1.0, 2.0, 0.5, 1.0])
    lengths = torch.tensor([2, 3, 3, 4, 2])
    got = length_bias(rewards, lengths, [3, 2])
    assert got["pairs"] == 3
    assert got["labels_prefer_longer"] == pytest.approx(1 / 3)
    assert got["rm_prefers_longer"] == 0.0
    assert got["corr"] == pytest.approx(statistics.correlation(rewards.tolist(), [float(n) for n in lengths]))
    assert math.isnan(length_bias(rewards[:2], torch.tensor([3, 3]), [2])["rm_prefers_longer"])  # no pair differs
