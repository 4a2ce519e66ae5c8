"""InstructGPT step 1: supervised fine-tuning on prompt → response demonstrations (§3.5 "SFT").

The driver loop: it tokenizes, batches and schedules; the policy group's ranks compute the
response-only NLL (rlhf/workers.py) and update their shards. Must not import ray: `group` is any
worker group (Ray or local) with map/broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from parallel.engine import EngineConfig, OptimConfig
from parallel.mesh import GroupSpec
from rlhf.batching import Encoded, collate_lm, count_steps, encode_pair, epoch_batches
from rlhf.data import SFTRecord
from rlhf.guards import BadSteps, check_finite
from rlhf.progress import progress
from rlhf.workers import PolicyWorker

LogFn = Callable[[dict[str, float], int], None]


class SFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_data: str | None = None  # None: the embedded task's demonstrations
    eval_data: str | None = None  # held-out demonstrations; None: the last 5% of train_data
    max_len: int = Field(64, ge=2)  # tokens per prompt + response (longer are truncated)
    batch_size: int = Field(32, ge=1)  # sequences per micro-batch, split over data-parallel ranks
    epochs: int = Field(4, ge=1)  # passes over the demonstrations
    eval_every: int = Field(50, ge=1)  # optimizer steps
    save_every: int = Field(0, ge=0)  # optimizer steps; 0: final checkpoint only
    seed: int = 0  # shuffling seed
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=30, weight_decay=0.01)  # optimizer and schedule
    engine: EngineConfig = EngineConfig()  # ZeRO stage, offload, precision
    group: GroupSpec = GroupSpec()  # ranks, TP, placement
def encode_all(tok, records: list[SFTRecord], max_len: int) -> tuple[list[Encoded], int]:
    encoded = [encode_pair(tok, r.prompt, r.response, max_len) for r in records]
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
              out_dir: str | Path, log: LogFn, max_bad_steps: int = 3) -> dict[str, float]:
    """Fine-tune the policy group's model; writes HF checkpoints under out_dir; returns final eval metrics."""
    out_dir = Path(out_dir)
    train_ex, n_trunc = encode_all(tok, train, cfg.max_len)
    eval_ex, _ = encode_all(tok, evals, cfg.max_len)
    if n_trunc:
        log({"data/truncated": float(n_trunc)}, 0)
    total = total_steps(len(train_ex), cfg)
    metrics = evaluate_nll(group, eval_ex, tok.pad_token_id, cfg.batch_size)
    log(metrics, 0)
    step = evaluated = 0
    bad = BadSteps(max_bad_steps, "SFT", "sft.optim.lr")
    bar = progress(total=total, desc="sft", unit="step")
    for examples in epoch_batches(train_ex, cfg.batch_size, cfg.epochs, cfg.seed):
        out = group.map(PolicyWorker.sft_step, collate_lm(examples, tok.pad_token_id)).get()
        if not bad.stepped(out, step + 1):
            continue  # a skipped update, or inside a gradient-accumulation window
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{out['loss']:.3f}")
        log({"train/loss": out["loss"], "train/lr": out["lr"], "train/grad_norm": out["grad_norm"]}, step)
        if step % cfg.eval_every == 0:
            metrics, evaluated = evaluate_nll(group, eval_ex, tok.pad_token_id, cfg.batch_size), step
            log(metrics, step)
        if cfg.save_every and step % cfg.save_every == 0:
            save_checkpoint(group, tok, out_dir / f"checkpoint-{step}")
    bar.close()
    if evaluated != step:
        metrics = evaluate_nll(group, eval_ex, tok.pad_token_id, cfg.batch_size)
        log(metrics, step)
    check_finite(metrics, f"SFT after step {step}", "sft.optim.lr")
    save_checkpoint(group, tok, out_dir)
    return metrics


def save_checkpoint(group, tok, path: Path) -> None:
    group.broadcast(PolicyWorker.export, str(path)).get()
    tok.save_pretrained(path)
