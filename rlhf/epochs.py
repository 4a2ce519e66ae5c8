"""The epoch loop that SFT and the reward model share: batches → updates, held-out evaluations, early
stopping at an epoch's end, and the best epoch's weights kept (rlhf/early_stopping.py decides which).

The best epoch's training state is saved on every rank (`save_state`) when it is reached and loaded back
at the end when a later epoch was worse: exact, on any ZeRO stage or TP layout, without an extra export.
Must not import ray: `group` is any worker group with map/broadcast.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlhf.batching import count_steps, epoch_batches
from rlhf.early_stopping import EarlyStopping
from rlhf.guards import BadSteps, check_finite
from rlhf.progress import progress

LogFn = Callable[[dict[str, float], int], None]
BEST_STATE = "best-epoch"  # <out_dir>/best-epoch: the best epoch's training state, while the stage trains


def decay_span(cfg) -> int:
    """Epochs the learning rate's warm-up and cosine decay span: `decay_epochs` of a stage's config (SFTConfig,
    RMConfig), at most its `epochs`; without it, all of them. Then the rate stays at its floor."""
    return min(cfg.decay_epochs or cfg.epochs, cfg.epochs)


def decay_steps(n_items: int, cfg) -> int:
    """Optimizer steps of decay_span(cfg)."""
    return count_steps(n_items, cfg.batch_size, cfg.optim.grad_accum, decay_span(cfg))


@dataclass(frozen=True)
class Outcome:
    """How a stage's training ended."""

    metrics: dict[str, float]  # held-out metrics of the weights the stage keeps
    epochs: int  # epochs run
    best_epoch: int  # the epoch with the best held-out measure
    kept_epoch: int  # the epoch whose weights the group holds now (best_epoch, or the last one)
    steps: int  # optimizer steps run
    reason: str  # why it stopped, in words

    def record(self) -> dict:
        """The stage result's fields: how many epochs, which was kept, and why it stopped."""
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "kept_epoch": self.kept_epoch,
                "steps": self.steps, "stop_reason": self.reason}


@dataclass(frozen=True)
class Loop:
    """What differs between the stages: how to update and evaluate, what to log, where to keep state."""

    worker: type  # the group's worker class (its save_state / load_state keep the best epoch)
    update: Callable[[list], dict]  # one micro-batch → the worker's step result
    evaluate: Callable[[int, bool], dict[str, float]]  # (step, at an epoch's end) → held-out metrics (logged)
    train_keys: tuple[str, ...]  # the step result's values logged as train/<key>
    name: str  # "SFT", "reward-model": in messages
    lr_key: str  # the config key to lower when training diverges
    on_step: Callable[[int], None] | None = None  # after each optimizer step (periodic exports)


def train_epochs(group, items: list, cfg, stopper: EarlyStopping, out_dir: Path, loop: Loop, log: LogFn,
                 max_bad_steps: int, total_steps: int) -> Outcome:
    """Up to cfg.epochs passes over `items` in batches of cfg.batch_size (seeded by cfg.seed); held-out
    metrics every cfg.eval_every steps and at each epoch's end, where `stopper` decides whether to go on;
    with cfg.keep_best the group ends holding the best epoch's weights."""
    best_dir = out_dir / BEST_STATE
    shutil.rmtree(best_dir, ignore_errors=True)
    per_epoch = math.ceil(len(items) / cfg.batch_size)
    metrics, best = {}, {}
    step = epoch = 0
    bad = BadSteps(max_bad_steps, loop.name, loop.lr_key)
    bar = progress(total=total_steps, desc=loop.name.lower(), unit="step")
    for i, batch in enumerate(epoch_batches(items, cfg.batch_size, cfg.epochs, cfg.seed)):
        out = loop.update(batch)
        epoch_end = (i + 1) % per_epoch == 0
        if bad.stepped(out, step + 1):
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.3f}", epoch=epoch + 1)
            log({f"train/{k}": out[k] for k in loop.train_keys if k in out}, step)  # a batch may lack one (no pair)
            if step % cfg.eval_every == 0 and not epoch_end:
                loop.evaluate(step, False)
            if loop.on_step is not None:
                loop.on_step(step)
        if not epoch_end:
            continue
        epoch += 1
        metrics = loop.evaluate(step, True)
        log({"train/epoch": float(epoch)}, step)
        check_finite(metrics, f"{loop.name} after epoch {epoch} (step {step})", loop.lr_key)
        if stopper.update(epoch, metrics[stopper.metric]):
            best = metrics
            if cfg.keep_best:
                shutil.rmtree(best_dir, ignore_errors=True)
                group.broadcast(loop.worker.save_state, str(best_dir), {"epoch": epoch, "step": step}).get()
        if stopper.should_stop:
            break
    bar.close()
    kept = epoch
    if cfg.keep_best and stopper.best_epoch != epoch:
        group.broadcast(loop.worker.load_state, str(best_dir)).get()
        metrics, kept = best, stopper.best_epoch
    shutil.rmtree(best_dir, ignore_errors=True)
    reason = f"{stopper.reason(epoch, cfg.epochs)}; kept epoch {kept}"
    return Outcome(metrics, epoch, stopper.best_epoch, kept, step, reason)
