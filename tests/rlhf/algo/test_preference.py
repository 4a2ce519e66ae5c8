"""DPO and IPO on K-way rankings against a loop over the C(K, 2) pairs of each prompt."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlhf.algo.preference import preference_loss


def naive(lp, ref, sizes, beta, kind):
    total, offset = 0.0, 0
    for k in sizes:
        pairs = list(itertools.combinations(range(offset, offset + k), 2))  # (better, worse): best first
        for w, lo in pairs:
            delta = (lp[w] - ref[w]) - (lp[lo] - ref[lo])
            term = -math.log(1 / (1 + math.exp(-beta * delta))) if kind == "dpo" else (delta - 1 / (2 * beta)) ** 2
            total += term / (len(pairs) * len(sizes))
        offset += k
    return total


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_preference_loss_against_pair_loop(kind):
    sizes = [4, 2, 3]  # a 4-way ranking weighs as much as a pair
    lp, ref = torch.randn(9) * 3, torch.randn(9) * 3
    loss, m = preference_loss(lp, ref, sizes, beta=0.1, kind=kind)
    assert float(loss) == pytest.approx(naive(lp.tolist(), ref.tolist(), sizes, 0.1, kind), rel=1e-5)
    assert 0.0 <= m["accuracy"] <= 1.0


def test_dpo_starts_at_log2_and_its_gradient_raises_the_better_response():
    lp = torch.zeros(3, requires_grad=True)
    loss, m = preference_loss(lp, torch.zeros(3), [3], beta=0.5)
    assert float(loss.detach()) == pytest.approx(math.log(2))
    loss.backward()
    assert lp.grad[0] < 0 < lp.grad[2]  # descending the loss raises the best and lowers the worst
    assert float(lp.grad[1]) == pytest.approx(0.0, abs=1e-7)  # the middle wins one pair and loses one


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown preference loss"):
        preference_loss(torch.zeros(2), torch.zeros(2), [2], 0.1, "kto")
