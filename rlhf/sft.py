"""InstructGPT step 1: supervised fine-tuning on prompt → response demonstrations (§3.5 "SFT").

The loss is next-token cross-entropy on response tokens only; prompt tokens condition but are
never predicted. Must not import ray; the engine decides how the model is sharded.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from models.heads import CausalLM
from models.hf import save_pretrained
from models.transformer import LayerBackend, LocalBackend
from parallel.engine import OptimConfig, TorchEngine
from parallel.mesh import Mesh
from rlhf.algo.masked import masked_mean
from rlhf.batching import Encoded, LMBatch, collate_lm, encode_pair
from rlhf.data import SFTRecord

LogFn = Callable[[dict[str, float], int], None]


class SFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_data: str | None = None  # None: the embedded task's demonstrations
    eval_data: str | None = None
    max_len: int = Field(64, ge=2)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(4, ge=1)
    eval_every: int = Field(50, ge=1)  # optimizer steps
    save_every: int = Field(0, ge=0)  # optimizer steps; 0: final checkpoint only
    seed: int = 0
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=30, weight_decay=0.01)


LOCAL = LocalBackend()


def sft_loss(logits: torch.Tensor, batch: LMBatch,
             backend: LayerBackend = LOCAL) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL over response tokens and the token count. logits (B, T, V) predict input_ids[:, 1:]
    (V: this rank's vocabulary shard under tensor parallelism)."""
    logprobs = backend.token_logprobs(logits[:, :-1], batch.input_ids[:, 1:])  # (B, T-1)
    mask = batch.loss_mask[:, 1:]  # (B, T-1): targets that are response tokens
    return -masked_mean(logprobs, mask), mask.sum()


def encode_all(tok, records: list[SFTRecord], max_len: int) -> tuple[list[Encoded], int]:
    encoded = [encode_pair(tok, r.prompt, r.response, max_len) for r in records]
    return encoded, sum(e.truncated for e in encoded)


@torch.no_grad()
def evaluate_nll(model: CausalLM, examples: list[Encoded], pad_id: int, batch_size: int) -> dict[str, float]:
    """Token-weighted mean NLL and perplexity of the responses."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate_lm(examples[i:i + batch_size], pad_id)
        loss, n = sft_loss(model(batch.input_ids, batch.attention_mask), batch, model.backend)
        total, count = total + float(loss) * int(n), count + int(n)
    model.train()
    nll = total / max(count, 1)
    return {"eval/loss": nll, "eval/perplexity": math.exp(min(nll, 50.0))}


def train_sft(model: CausalLM, tok, train: list[SFTRecord], evals: list[SFTRecord], cfg: SFTConfig,
              out_dir: str | Path, log: LogFn) -> dict[str, float]:
    """Fine-tune `model` in place; writes HF checkpoints under out_dir; returns the final eval metrics."""
    out_dir = Path(out_dir)
    train_ex, n_trunc = encode_all(tok, train, cfg.max_len)
    eval_ex, _ = encode_all(tok, evals, cfg.max_len)
    if n_trunc:
        log({"data/truncated": float(n_trunc)}, 0)
    steps_per_epoch = math.ceil(len(train_ex) / (cfg.batch_size * cfg.optim.grad_accum))
    total = steps_per_epoch * cfg.epochs
    engine = TorchEngine(model, cfg.optim, Mesh(1, 0, 1, torch.device("cpu")), total)
    rng = random.Random(cfg.seed)
    metrics = evaluate_nll(model, eval_ex, tok.pad_token_id, cfg.batch_size)
    log(metrics, 0)
    model.train()
    bar = tqdm(total=total, desc="sft", unit="step", mininterval=1.0)
    for _ in range(cfg.epochs):
        order = list(range(len(train_ex)))
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            batch = collate_lm([train_ex[j] for j in order[i:i + cfg.batch_size]], tok.pad_token_id)
            loss, _ = sft_loss(model(batch.input_ids, batch.attention_mask), batch, model.backend)
            engine.backward(loss)
            stepped = engine.step()
            if stepped is None:
                continue
            step, loss = engine.global_steps, loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            log({"train/loss": loss, **{f"train/{k}": v for k, v in stepped.items()}}, step)
            if step % cfg.eval_every == 0 or step == total:
                metrics = evaluate_nll(model, eval_ex, tok.pad_token_id, cfg.batch_size)
                log(metrics, step)
            if cfg.save_every and step % cfg.save_every == 0:
                save_checkpoint(model, tok, out_dir / f"checkpoint-{step}")
    bar.close()
    save_checkpoint(model, tok, out_dir)
    return metrics


def save_checkpoint(model, tok, path: Path) -> None:
    save_pretrained(model, path)
    tok.save_pretrained(path)
