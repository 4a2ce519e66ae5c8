"""Which PPO evaluation to export, by what the run itself can measure (never the gold).

PPO maximises E[score] − β·KL(π‖π_ref). Each held-out evaluation estimates that objective per prompt:
the mean over the prompt's samples of score − β·Σ_t log π/π_ref. The last policy is exported unless an
earlier evaluation's objective beats it by more than one standard error of the paired difference (the
same prompts and sampling seeds at every evaluation, so the difference is measured prompt by prompt).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def per_prompt_means(values: list[float], samples: int) -> list[float]:
    """The mean of each prompt's `samples` consecutive values (an evaluation's samples, prompt by prompt)."""
    if len(values) % samples:
        raise ValueError(f"{len(values)} samples are not whole groups of {samples} per prompt")
    return [statistics.fmean(values[i:i + samples]) for i in range(0, len(values), samples)]


def stderr(values: list[float]) -> float:
    """The standard error of the mean of `values` (0 for fewer than two)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def per_prompt_objective(scores: list[float], kls: list[float], beta: float, samples: int) -> list[float]:
    """score − β·KL of each sample, averaged over each prompt's `samples` consecutive samples."""
    if len(scores) != len(kls):
        raise ValueError(f"{len(scores)} scores against {len(kls)} KL values")
    return per_prompt_means([s - beta * k for s, k in zip(scores, kls, strict=True)], samples)


@dataclass(frozen=True)
class Gain:
    mean: float  # mean over prompts of (earlier − last)
    stderr: float  # its standard error over prompts

    @property
    def beyond_noise(self) -> bool:
        return self.mean > self.stderr


def paired_gain(earlier: list[float], last: list[float]) -> Gain:
    """How much higher `earlier` is than `last`, prompt by prompt, with the standard error of that mean."""
    if len(earlier) != len(last):
        raise ValueError(f"{len(earlier)} prompts against {len(last)}: not the same held-out prompts")
    diff = [a - b for a, b in zip(earlier, last, strict=True)]
    return Gain(statistics.fmean(diff), stderr(diff) if len(diff) > 1 else math.inf)  # one prompt: no yardstick
