"""Averages of a policy's weights (ppo.average_last): the policy a run exports is the uniform mean of its weights
at its last held-out evaluations (stochastic weight averaging, Izmailov et al. 2018), which takes out the wobble
of a policy on a plateau of its objective. Pure tensor code: the ranks and their files are rlhf/workers.py's.
"""

from __future__ import annotations

import torch


def evaluation_steps(steps: int, every: int) -> list[int]:
    """The steps a PPO run of `steps` steps evaluates at: every `every` steps, and the last."""
    return sorted({*range(every, steps + 1, every), steps})


def mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform mean of state dicts of the same weights, summed in float64 and returned in float32."""
    if not states:
        raise ValueError("no state dicts to average")
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise ValueError(f"state dicts of different weights: {sorted(keys ^ set(s))[:3]}")
    return {k: (sum(s[k].double() for s in states) / len(states)).float() for k in states[0]}
