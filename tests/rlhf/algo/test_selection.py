"""The export choice's arithmetic, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from rlhf.algo.selection import paired_gain, per_prompt_objective


def test_objective_per_prompt_by_hand():
    # two prompts × two samples; β = 0.5: (1 − 0.5·2, 3 − 0.5·0) → mean 1.5; (−1 − 0.5·1, 0 − 0.5·4) → mean −1.75
    assert per_prompt_objective([1.0, 3.0, -1.0, 0.0], [2.0, 0.0, 1.0, 4.0], 0.5, 2) == [1.5, -1.75]
    assert per_prompt_objective([1.0, 3.0], [2.0, 0.0], 0.0, 1) == [1.0, 3.0]  # β 0: the score alone


def test_paired_gain_by_hand():
    # differences 1, 2, 3: mean 2, sample sd 1, standard error 1/√3
    gain = paired_gain([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert gain.mean == pytest.approx(2.0) and gain.stderr == pytest.approx(1 / math.sqrt(3))
    assert gain.beyond_noise
    # differences 1, −1, 1, −1, 1: mean 0.2, standard error √(4.8 / 4 / 5) ≈ 0.49: within the noise
    noisy = paired_gain([1.0, -1.0, 1.0, -1.0, 1.0], [0.0] * 5)
    assert noisy.mean == pytest.approx(0.2)
    assert noisy.stderr == pytest.approx(math.sqrt(sum((d - 0.2) ** 2 for d in [1, -1, 1, -1, 1]) / 4 / 5))
    assert not noisy.beyond_noise


def test_pairing_is_prompt_by_prompt():
    """The same mean gain with and without a shared per-prompt offset: pairing removes the prompts' spread."""
    offsets = [0.0, 10.0, -10.0, 5.0]
    last = list(offsets)
    earlier = [o + 0.1 + 0.01 * i for i, o in enumerate(offsets)]
    assert paired_gain(earlier, last).beyond_noise  # unpaired, the offsets' spread would swamp 0.1


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="not the same held-out prompts"):
        paired_gain([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="whole groups of 2"):
        per_prompt_objective([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], 0.1, 2)
    with pytest.raises(ValueError, match="3 scores against 2 KL"):
        per_prompt_objective([1.0, 2.0, 3.0], [0.0, 0.0], 0.1, 1)
