"""Non-finite values in training: an update that would apply one is skipped on every rank; a run that
keeps producing them stops with a clear error, before anything diverged is saved.

A diverged run (a learning rate of 1e4, say) otherwise trains on NaNs to the end and exports a model
whose every tensor is NaN, with exit status 0. Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

import logging
import math

from models.errors import InputError

log = logging.getLogger("instructrl")


class DivergedError(InputError):
    """Training produced non-finite values; the message names the step, the metric and what to lower."""


def nonfinite(metrics: dict[str, float]) -> list[str]:
    """The loss-like metrics (a key with "loss", the KL, the score) that are NaN or infinite."""
    return [k for k, v in metrics.items()
            if ("loss" in k or k in ("kl/sequence", "reward/score")) and isinstance(v, float) and not math.isfinite(v)]


def check_finite(metrics: dict[str, float], where: str, lr_keys: str) -> None:
    """Raise if any loss-like metric is NaN or infinite (an evaluation; a final result)."""
    for key in nonfinite(metrics):
        raise DivergedError(f"{where}: {key} is {metrics[key]}: training diverged, and nothing from this step on "
                            f"is saved. Lower {lr_keys} (or lengthen the warm-up) and run again.")


class BadSteps:
    """Counts consecutive steps whose update was skipped for a non-finite loss, gradient norm, reward
    or advantage; at `limit` in a row the run stops (its last checkpoint is from a good step)."""

    def __init__(self, limit: int, where: str, lr_keys: str):
        self.limit, self.where, self.lr_keys, self.in_a_row = limit, where, lr_keys, 0

    def stepped(self, out: dict, step: int) -> bool:
        """Whether a trainer's micro-batch result `out` ended optimizer step `step`: false inside a
        gradient-accumulation window, and for an update skipped on every rank (recorded as bad)."""
        if out.get("skipped", 0.0) > 0:
            self.record(step, f"non-finite loss ({out['loss']}) or gradient norm")
            return False
        if "lr" not in out:
            return False
        self.record(step, None)
        return True

    def record(self, step: int, problem: str | None) -> None:
        if problem is None:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        log.warning("%s step %d: %s; the update was skipped on every rank (%d bad step(s) in a row, limit %d)",
                    self.where, step, problem, self.in_a_row, self.limit)
        if self.in_a_row >= self.limit:
            raise DivergedError(f"{self.where} step {step}: {self.in_a_row} steps in a row with non-finite values "
                                f"(last: {problem}); training diverged and stopped, keeping the last checkpoint "
                                f"saved before it. Lower {self.lr_keys} (or lengthen the warm-up) and run again, "
                                f"or raise run.max_bad_steps.")
