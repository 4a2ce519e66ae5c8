"""Direct preference optimisation: the policy learns from the ranked comparisons themselves, with no
reward model and no sampling (DPO, Rafailov et al. 2023; IPO, Azar et al. 2023).

Each K-way ranking stays one batch element with all its C(K, 2) pairs weighted 1/C(K, 2), as the
InstructGPT reward loss does (rlhf/algo/preference.py); a chosen/rejected pair is K = 2. The
reference (the frozen start policy) scores every response once, before training, on its own group.
Must not import ray: the groups are any worker groups with map/broadcast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from parallel.engine import EngineConfig, OptimConfig
from parallel.mesh import GroupSpec
from rlhf.batching import Encoded, count_steps, epoch_batches
from rlhf.data import Comparison
from rlhf.guards import BadSteps, check_finite
from rlhf.progress import progress
from rlhf.reward_model import encode_rankings
from rlhf.workers import PolicyWorker, ReferenceWorker

LogFn = Callable[[dict[str, float], int], None]


class DPOConfig(BaseModel):
    """`instructrl dpo`, and step 2 of `instructrl pipeline` with run.algorithm=dpo. The comparisons are
    rm.train_data / rm.eval_data (the embedded task: its labelled SFT samples)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    init: str | None = None  # policy and reference checkpoint; None: this run's SFT model (or model.pretrained)
    loss: Literal["dpo", "ipo"] = "dpo"  # DPO's −log σ(β·Δ), or IPO's (Δ − 1/(2β))²
    beta: float = Field(0.1, gt=0)  # β: the strength of the implicit KL to the reference
    max_len: int = Field(64, ge=2)  # tokens per prompt + response
    batch_size: int = Field(16, ge=1)  # rankings per step, each with all its responses
    epochs: int = Field(1, ge=1)
    eval_every: int = Field(50, ge=1)  # steps between held-out preference evaluations
    seed: int = 0  # shuffling seed
    optim: OptimConfig = OptimConfig(lr=5e-6, warmup_steps=10, weight_decay=0.0)
    engine: EngineConfig = EngineConfig()
    group: GroupSpec = GroupSpec()  # the policy's ranks; the reference gets a group of the same layout


def total_steps(n_rankings: int, cfg: DPOConfig) -> int:
    return count_steps(n_rankings, cfg.batch_size, cfg.optim.grad_accum, cfg.epochs)


def with_reference(reference, rankings: list[list[Encoded]], pad_id: int, batch_size: int
                   ) -> list[tuple[list[Encoded], torch.Tensor]]:
    """Each ranking with its responses' summed log-probs (K,) under the reference."""
    out = []
    for i in range(0, len(rankings), batch_size):
        chunk = rankings[i:i + batch_size]
        logps = reference.map(ReferenceWorker.sequence_logprobs, chunk, pad_id).get()  # (N,)
        sizes = [len(r) for r in chunk]
        out += list(zip(chunk, torch.split(logps, sizes), strict=True))
    return out


def evaluate_dpo(policy, items: list, pad_id: int, beta: float, kind: str, batch_size: int) -> dict[str, float]:
    """Held-out preference loss, pair accuracy and implicit-reward margin, weighted by prompt."""
    sums = {"loss_sum": 0.0, "accuracy_sum": 0.0, "margin_sum": 0.0, "prompts": 0.0}
    for i in range(0, len(items), batch_size):
        out = policy.map(PolicyWorker.dpo_eval, items[i:i + batch_size], pad_id, beta, kind).get()
        for k in sums:
            sums[k] += out[k]  # averages over ranks: ratios of sums stay exact
    n = sums["prompts"]
    return {"eval/dpo_loss": sums["loss_sum"] / n, "eval/dpo_accuracy": sums["accuracy_sum"] / n,
            "eval/dpo_margin": sums["margin_sum"] / n}


def train_dpo(policy, reference, tok, train: list[Comparison], evals: list[Comparison], cfg: DPOConfig,
              log: LogFn, max_bad_steps: int = 3) -> dict[str, float]:
    """Train the policy group on the rankings; returns the final held-out preference metrics."""
    pad = tok.pad_token_id
    train_items = with_reference(reference, encode_rankings(tok, train, cfg.max_len), pad, cfg.batch_size)
    eval_items = with_reference(reference, encode_rankings(tok, evals, cfg.max_len), pad, cfg.batch_size)
    metrics = evaluate_dpo(policy, eval_items, pad, cfg.beta, cfg.loss, cfg.batch_size)
    log(metrics, 0)
    step = evaluated = 0
    bad = BadSteps(max_bad_steps, "DPO", "dpo.optim.lr")
    bar = progress(total=total_steps(len(train_items), cfg), desc=cfg.loss, unit="step")
    for batch in epoch_batches(train_items, cfg.batch_size, cfg.epochs, cfg.seed):
        out = policy.map(PolicyWorker.dpo_step, batch, pad, cfg.beta, cfg.loss).get()
        if not bad.stepped(out, step + 1):
            continue
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{out['loss']:.3f}", acc=f"{out['accuracy']:.2f}")
        log({f"train/{k}": out[k] for k in ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "lr",
                                            "grad_norm")}, step)
        if step % cfg.eval_every == 0:
            metrics, evaluated = evaluate_dpo(policy, eval_items, pad, cfg.beta, cfg.loss, cfg.batch_size), step
            log(metrics, step)
    bar.close()
    if evaluated != step:
        metrics = evaluate_dpo(policy, eval_items, pad, cfg.beta, cfg.loss, cfg.batch_size)
        log(metrics, step)
    check_finite(metrics, f"DPO after step {step}", "dpo.optim.lr")
    return metrics
