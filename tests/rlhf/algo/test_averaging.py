"""rlhf/algo/averaging.py against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from rlhf.algo.averaging import evaluation_steps, mean_state


def test_the_mean_of_states_is_each_weights_plain_mean():
    states = [{"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])},
              {"w": torch.tensor([3.0, 2.0]), "b": torch.tensor([1.0])},
              {"w": torch.tensor([2.0, 5.0]), "b": torch.tensor([2.0])}]
    mean = mean_state(states)
    assert mean["w"].tolist() == [2.0, 3.0] and mean["b"].tolist() == [1.0] and mean["w"].dtype == torch.float32
    assert mean_state([{"w": torch.tensor([0.1], dtype=torch.bfloat16)}])["w"].dtype == torch.float32
    with pytest.raises(ValueError, match="different weights"):
        mean_state([states[0], {"w": torch.tensor([1.0, 2.0])}])
    with pytest.raises(ValueError, match="no state dicts"):
        mean_state([])


def test_a_run_evaluates_every_eval_every_steps_and_at_its_last():
    assert evaluation_steps(300, 25)[-4:] == [225, 250, 275, 300] and len(evaluation_steps(300, 25)) == 12
    assert evaluation_steps(60, 25) == [25, 50, 60]
    assert evaluation_steps(3, 1) == [1, 2, 3] and evaluation_steps(10, 25) == [10]
