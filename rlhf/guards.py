"""Stop training the moment a loss goes non-finite, before anything is saved from it.

A diverged run (a learning rate of 1e4, say) otherwise trains on NaNs to the end and exports a model
whose every tensor is NaN, with exit status 0. Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

import math

from models.errors import InputError


class DivergedError(InputError):
    """Training produced a non-finite loss; the message names the step, the metric and what to lower."""


def check_finite(metrics: dict[str, float], where: str, lr_keys: str) -> None:
    """Raise if any loss-like metric (a key with "loss", the KL, the score) is NaN or infinite."""
    for key, value in metrics.items():
        watched = "loss" in key or key in ("kl/sequence", "reward/score")
        if watched and isinstance(value, float) and not math.isfinite(value):
            raise DivergedError(f"{where}: {key} is {value}: training diverged, and nothing from this step on "
                                f"is saved. Lower {lr_keys} (or lengthen the warm-up) and run again.")
