"""Ranking loss against a naive pair-by-pair implementation, values and gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlhf.algo.ranking import ranking_loss


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
