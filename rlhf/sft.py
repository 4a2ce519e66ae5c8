"""InstructGPT step 1: supervised fine-tuning on prompt → response demonstrations (§3.5 "SFT").

The driver loop: it tokenizes, batches and schedules; the policy group's ranks compute the
response-only NLL (rlhf/workers.py) and update their shards. Must not import ray: `group` is any
worker group (Ray or local) with map/broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from parallel.engine import EngineConfig, OptimConfig
from parallel.mesh import GroupSpec
from rlhf.batching import Encoded, collate_lm, count_steps, encode_conversation, encode_pair
from rlhf.data import SFTRecord
from rlhf.early_stopping import EarlyStopping
from rlhf.epochs import Loop, train_epochs
from rlhf.workers import PolicyWorker

LogFn = Callable[[dict[str, float], int], None]
SelectFn = Callable[[int], dict[str, float]]  # step -> {"select/score": ...} of the policy as it is now
SELECT_METRIC = {"loss": ("eval/loss", "min"), "reward": ("select/score", "max")}


class SFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_data: str | None = None  # None: the embedded task's demonstrations
    eval_data: str | None = None  # held-out demonstrations; None: the last 5% of train_data
    max_len: int = Field(64, ge=2)  # tokens per prompt + response (longer are truncated)
    batch_size: int = Field(32, ge=1)  # sequences per micro-batch, split over data-parallel ranks
    # At most this many passes over the demonstrations; the held-out measure of `select`, taken at the end
    # of every epoch, usually stops training sooner (`patience`). InstructGPT trains its SFT 16 epochs.
    epochs: int = Field(20, ge=1)
    # Stop after this many epochs in a row without a better `select` measure; null: run all `epochs`.
    patience: int | None = Field(2, ge=1)
    min_epochs: int = Field(1, ge=1)  # never stop before this many epochs (at most `epochs`), whatever the patience
    # The held-out measure that stops training and picks the epoch kept: "loss" (the NLL of the held-out
    # demonstrations), or "reward" (the mean PPO score, reward model and/or reward functions, of responses
    # sampled on validation prompts: InstructGPT §3.5; needs ppo.reward_model as a checkpoint, or
    # ppo.reward_functions).
    select: Literal["loss", "reward"] = "loss"
    keep_best: bool = True  # export the best epoch's weights; false: the last epoch's
    # The learning rate's cosine decay spans this many epochs (at most `epochs`) and then stays at its floor
    # (optim.min_lr_ratio); null: all `epochs`.
    decay_epochs: int | None = Field(None, ge=1)
    eval_every: int = Field(50, ge=1)  # optimizer steps between held-out losses in the log (besides each epoch's end)
    save_every: int = Field(0, ge=0)  # optimizer steps; 0: final checkpoint only
    seed: int = 0  # shuffling seed
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=30, weight_decay=0.01)  # optimizer and schedule
    engine: EngineConfig = EngineConfig()  # ZeRO stage, offload, precision
    group: GroupSpec = GroupSpec()  # ranks, TP, placement


def encode_all(tok, records: list[SFTRecord], max_len: int) -> tuple[list[Encoded], int]:
    encoded = [encode_conversation(tok, r.messages, max_len) if r.messages else
               encode_pair(tok, r.prompt, r.response, max_len) for r in records]
    return encoded, sum(e.truncated for e in encoded)


def total_steps(n_examples: int, cfg: SFTConfig) -> int:
    return count_steps(n_examples, cfg.batch_size, cfg.optim.grad_accum, cfg.epochs)



def evaluate_nll(group, examples: list[Encoded], pad_id: int, batch_size: int) -> dict[str, float]:
    """Token-weighted mean NLL of the responses, and perplexity."""
    nll, tokens = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        out = group.map(PolicyWorker.sft_eval, collate_lm(examples[i:i + batch_size], pad_id)).get()
        nll, tokens = nll + out["nll_sum"], tokens + out["tokens"]  # rank averages: the ratio is exact
    mean = nll / max(tokens, 1.0)
    return {"eval/loss": mean, "eval/perplexity": math.exp(min(mean, 50.0))}


def train_sft(group, tok, train: list[SFTRecord], evals: list[SFTRecord], cfg: SFTConfig,
              out_dir: str | Path, log: LogFn, max_bad_steps: int = 3, select: SelectFn | None = None) -> dict:
    """Fine-tune the policy group's model until its held-out `cfg.select` measure stops improving (or
    `cfg.epochs`), leave the kept epoch's weights in the group and export them as an HF checkpoint in
    out_dir. `select` scores the policy for cfg.select="reward". Returns the kept weights' held-out
    metrics and how the stage ended (epochs, best_epoch, kept_epoch, stop_reason)."""
    out_dir = Path(out_dir)
    train_ex, n_trunc = encode_all(tok, train, cfg.max_len)
    eval_ex, _ = encode_all(tok, evals, cfg.max_len)
    if n_trunc:
        log({"data/truncated": float(n_trunc)}, 0)
    if cfg.select == "reward" and select is None:
        raise ValueError("sft.select=reward needs a `select` function that scores the policy")

    def evaluate(step: int, epoch_end: bool) -> dict[str, float]:
        metrics = evaluate_nll(group, eval_ex, tok.pad_token_id, cfg.batch_size)
        if epoch_end and cfg.select == "reward":
            metrics |= select(step)
        log(metrics, step)
        return metrics

    def export_every(step: int) -> None:
        if cfg.save_every and step % cfg.save_every == 0:
            save_checkpoint(group, tok, out_dir / f"checkpoint-{step}")

    evaluate(0, False)
    loop = Loop(PolicyWorker, lambda b: group.map(PolicyWorker.sft_step, collate_lm(b, tok.pad_token_id)).get(),
                evaluate, ("loss", "lr", "grad_norm"), "SFT", "sft.optim.lr", export_every)
    stopper = EarlyStopping(*SELECT_METRIC[cfg.select], cfg.patience, min(cfg.min_epochs, cfg.epochs))
    outcome = train_epochs(group, train_ex, cfg, stopper, out_dir, loop, log, max_bad_steps,
                           total_steps(len(train_ex), cfg))
    save_checkpoint(group, tok, out_dir)
    return {**outcome.metrics, **outcome.record()}


def save_checkpoint(group, tok, path: Path) -> None:
    group.broadcast(PolicyWorker.export, str(path)).get()
    tok.save_pretrained(path)
