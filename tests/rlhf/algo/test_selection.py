"""The export choice's arithmetic, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from rlhf.algo.selection import (
    Plateau,
    earliest_within_noise,
    last_unless_beaten,
    paired_gain,
    patience_ends,
    per_prompt_objective,
    plateau,
)


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


# per-prompt objectives of a run's evaluations, four prompts; step 0 is the start and never exported
RUN = {0: [0.0] * 4, 10: [0.5, 0.5, 0.4, 0.4], 20: [0.4, 0.4, 0.4, 0.4], 30: [0.3, 0.3, 0.3, 0.3]}


def test_last_unless_beaten_by_hand():
    # step 10 (mean 0.45, above step 20's 0.4) beats the last by 0.2, 0.2, 0.1, 0.1: mean 0.15, s.e. 0.0577/√4
    step, gain = last_unless_beaten(RUN)
    assert step == 10 and gain.mean == pytest.approx(0.15) and gain.stderr == pytest.approx(0.0289, abs=1e-4)
    # the same mean gain spread as +0.6, −0.3, +0.3, 0.0: s.e. 0.195 > 0.15, so the last
    step, gain = last_unless_beaten({**RUN, 10: [0.9, 0.0, 0.6, 0.3]})
    assert step == 30 and (gain.mean, gain.stderr) == pytest.approx((0.15, 0.1936), abs=1e-4)
    assert last_unless_beaten({0: [0.0], 30: [0.3]}) == (30, None)  # nothing between the start and the last


def test_earliest_within_noise_by_hand():
    # the last is best (0.6); step 20 trails it by 0.05, 0.05, 0.15, 0.15: mean 0.1, s.e. 0.0577/√4 = 0.029,
    # beyond noise; step 10 trails by 0.1 ± 0.2 (−0.2, 0.4, −0.2, 0.4: s.d. 0.346, s.e. 0.173): within it
    rising = {0: [0.0] * 4, 10: [0.8, 0.2, 0.8, 0.2], 20: [0.55, 0.55, 0.45, 0.45], 30: [0.6] * 4}
    assert earliest_within_noise(rising) == 10
    assert last_unless_beaten(rising)[0] == 30  # the present rule keeps the last
    assert earliest_within_noise({**rising, 10: [0.3] * 4}) == 30  # 10 and 20 both trail beyond noise
    assert earliest_within_noise(RUN) == 10  # the best itself where nothing earlier is within noise of it
    assert earliest_within_noise({0: [0.0], 30: [0.3]}) == 30


def test_plateau_by_hand():
    """Four prompts. Step 10 is the first mark (the start, step 0, never is: its 9.0 is beaten by nothing).
    Step 20 beats it by 0.1 on every prompt (s.e. 0): the new mark. Step 30 differs from it by +0.05, +0.05,
    −0.05, −0.05 (mean 0): one evaluation without a gain. Step 40, 0.05 over step 20 on every prompt: the mark."""
    run = {0: [9.0] * 4, 10: [0.0] * 4, 20: [0.1] * 4, 30: [0.15, 0.15, 0.05, 0.05]}
    assert plateau(run) == Plateau(mark=20, since=1)
    assert patience_ends(run, 1) == Plateau(mark=20, since=1) and patience_ends(run, 2) is None
    assert plateau({**run, 40: [0.15] * 4}) == Plateau(mark=40, since=0)
    # a creep measured from the mark: step 20 is +0.03, −0.01, +0.03, −0.01 over step 10 (mean 0.01, s.e. 0.0115:
    # within noise); step 30 is +0.03, −0.01, −0.01, +0.03 over step 20 (the same, within noise), but +0.06, −0.02,
    # +0.02, +0.02 over the mark, step 10 (mean 0.02, s.d. 0.0327, s.e. 0.0163): beyond it, the new mark
    creep = {0: [0.0] * 4, 10: [0.0] * 4, 20: [0.03, -0.01, 0.03, -0.01], 30: [0.06, -0.02, 0.02, 0.02]}
    assert plateau(creep) == Plateau(mark=30, since=0)
    # step 30 at +0.05, −0.03, +0.05, −0.03 over the mark instead (mean 0.01, s.e. 0.0231): two without a gain
    assert plateau({**creep, 30: [0.05, -0.03, 0.05, -0.03]}) == Plateau(mark=10, since=2)
    assert plateau({0: [0.0]}) is None and plateau({0: [0.0], 10: [-1.0]}) == Plateau(mark=10, since=0)
