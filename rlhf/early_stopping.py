"""When a supervised stage (SFT, the reward model) stops, and which of its epochs it keeps.

A stage evaluates on held-out data at the end of every epoch; it stops once `patience` epochs in a row
have not beaten the best value so far, or at its upper bound on epochs, and keeps the best epoch's
weights. InstructGPT (§3.5, appendix C) picks its SFT checkpoint by the reward model's score on
validation prompts and trains its RM one epoch because more over-fits; a held-out measure chosen here
decides both without fixing the epoch count per task. Pure Python: no torch, ray or deepspeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class EarlyStopping:
    """Tracks one held-out measure over epochs. `update` says whether an epoch is the best so far."""

    metric: str  # the key of the measure in an evaluation's metrics, e.g. "eval/loss"
    mode: Literal["min", "max"]  # lower is better (a loss) or higher (an accuracy, a score)
    patience: int | None  # epochs in a row without a new best before stopping; None: never stop early
    min_epochs: int = 1  # never stop before this many epochs, whatever the patience
    best: float | None = None
    best_epoch: int = 0  # 0: none yet
    epochs_without_best: int = 0
    epochs_seen: int = 0

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def update(self, epoch: int, value: float) -> bool:
        """Record the measure after `epoch`; true when it is a new best."""
        self.epochs_seen = epoch
        if self.improves(value):
            self.best, self.best_epoch, self.epochs_without_best = value, epoch, 0
            return True
        self.epochs_without_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return (self.patience is not None and self.epochs_without_best >= self.patience
                and self.epochs_seen >= self.min_epochs)

    def reason(self, epochs_run: int, max_epochs: int) -> str:
        """Why the stage ended, in words for its log and the summary."""
        word = "lowest" if self.mode == "min" else "highest"
        best = f"{word} {self.metric} {self.best:.4g} after epoch {self.best_epoch}"
        if self.should_stop:
            return (f"stopped after epoch {epochs_run} of at most {max_epochs}: {self.epochs_without_best} epoch(s) "
                    f"in a row without a better {self.metric} (patience {self.patience}"
                    f"{f', at least {self.min_epochs} epochs' if self.min_epochs > 1 else ''}); {best}")
        return f"ran all {max_epochs} epoch(s); {best}"
