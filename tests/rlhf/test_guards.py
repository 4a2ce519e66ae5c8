"""Counting bad steps: a skipped update is bad, an accumulation window is neither, a real step resets."""

from __future__ import annotations

import pytest

from rlhf.guards import BadSteps, DivergedError

SKIPPED = {"loss": float("nan"), "skipped": 1.0}
WINDOW = {"loss": 1.0}  # inside a gradient-accumulation window: no optimizer step yet
STEPPED = {"loss": 1.0, "lr": 1e-3, "grad_norm": 0.5, "skipped": 0.0}


def test_a_real_step_resets_the_count_and_an_accumulation_window_does_not():
    bad = BadSteps(2, "SFT", "sft.optim.lr")
    assert not bad.stepped(SKIPPED, 1) and bad.in_a_row == 1
    assert not bad.stepped(WINDOW, 1) and bad.in_a_row == 1
    assert bad.stepped(STEPPED, 1) and bad.in_a_row == 0
    assert not bad.stepped(SKIPPED, 2)
    with pytest.raises(DivergedError, match=r"SFT step 2: 2 steps in a row with non-finite values \(last: "
                                            r"non-finite loss \(nan\) or gradient norm\).*Lower sft\.optim\.lr"):
        bad.stepped(SKIPPED, 2)
