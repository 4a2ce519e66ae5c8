"""Which PPO evaluation to export, by what the run itself can measure (never the gold).

PPO maximises E[score] − β·KL(π‖π_ref). Each held-out evaluation estimates that objective per prompt:
the mean over the prompt's samples of score − β·Σ_t log π/π_ref. The last policy is exported unless an
earlier evaluation's objective beats it by more than one standard error of the paired difference (the
same prompts and sampling seeds at every evaluation, so the difference is measured prompt by prompt).
rlhf/export_choice.py applies that rule as a run goes; `last_unless_beaten` states it over a finished run's
evaluations, and `earliest_within_noise` is a candidate judged against it off saved runs (docs/results.md).
`plateau` is ppo.patience's measure: how many evaluations in a row have not raised the objective beyond noise.
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


def objective_of(rows: list[dict], beta: float, samples: int, judge: str = "score") -> list[float] | None:
    """An evaluation's per-prompt objective from its sample rows, the score read from `judge` ("score", or
    "validation_score"); None where they have no such score or no KL (no reward, no reference)."""
    if not rows or judge not in rows[0] or "kl" not in rows[0]:
        return None
    return per_prompt_objective([r[judge] for r in rows], [r["kl"] for r in rows], beta, samples)


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


def last_unless_beaten(objectives: dict[int, list[float]]) -> tuple[int, Gain | None]:
    """ppo.export=objective: the step exported from each evaluation's per-prompt objective (the first step,
    the start, never), and the best earlier evaluation's gain over the last (None without one): the last
    unless that gain is beyond noise."""
    steps = sorted(objectives)
    last, earlier = steps[-1], steps[1:-1]
    if not earlier:
        return last, None
    best = max(earlier, key=lambda s: statistics.fmean(objectives[s]))  # the first of equals, as kept during a run
    gain = paired_gain(objectives[best], objectives[last])
    return (best if gain.beyond_noise else last), gain


def earliest_within_noise(objectives: dict[int, list[float]]) -> int:
    """The one-standard-error rule: the earliest evaluation (after the first, the start) whose objective is
    below the best's by no more than one standard error of the paired difference."""
    steps = sorted(objectives)[1:] or sorted(objectives)
    best = max(steps, key=lambda s: statistics.fmean(objectives[s]))
    return next(s for s in steps if not paired_gain(objectives[best], objectives[s]).beyond_noise)


@dataclass(frozen=True)
class Plateau:
    mark: int  # the last evaluation whose objective rose beyond noise over the mark before it
    since: int  # the evaluations after the mark, none of which beat it beyond noise


def plateau(objectives: dict[int, list[float]]) -> Plateau | None:
    """Where a run's held-out objective last rose beyond noise (ppo.patience stops a run once `since`
    reaches it). The first evaluation after the start is the first mark (the start is never one: PPO's
    first steps may fall below it before they climb); each later evaluation whose objective beats the
    mark's by more than one standard error of the paired difference becomes the mark. A slow creep of
    under a standard error per evaluation is measured from the mark, so it counts once it adds up to
    one. None: no evaluation after the start yet."""
    steps = sorted(objectives)[1:]
    if not steps:
        return None
    mark, since = steps[0], 0
    for step in steps[1:]:
        if paired_gain(objectives[step], objectives[mark]).beyond_noise:
            mark, since = step, 0
        else:
            since += 1
    return Plateau(mark, since)


def patience_ends(objectives: dict[int, list[float]], patience: int) -> Plateau | None:
    """The plateau where ppo.patience ends a run after its last evaluation in `objectives`; None: it goes on."""
    where = plateau(objectives)
    return where if where is not None and where.since >= patience else None
