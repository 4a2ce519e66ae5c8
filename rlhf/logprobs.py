"""From a model's outputs to what the losses read: forwards of padded batches (packed or not), the
logits that predict each response token, and log-probs under the distribution that sampled them.
Shared by every worker role (rlhf/workers.py). Must not import ray.
"""

from __future__ import annotations

import torch

from models.generation import filter_logits
from models.packing import pack_rows
from models.transformer import LayerBackend, LocalBackend, positions_from_mask
from rlhf.algo.masked import masked_mean
from rlhf.algo.rollout import Rollout
from rlhf.batching import LMBatch

LOCAL = LocalBackend()


def target_logprobs(logits: torch.Tensor, batch: LMBatch, backend: LayerBackend = LOCAL
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every next token (B, T-1) and the mask of those that are response tokens (the loss's
    targets). logits (B, T, V) predict input_ids[:, 1:]; V may be a TP vocabulary shard."""
    return backend.token_logprobs(logits[:, :-1], batch.input_ids[:, 1:]), batch.loss_mask[:, 1:]


def sft_loss(logits: torch.Tensor, batch: LMBatch, backend: LayerBackend = LOCAL) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL over response tokens (InstructGPT §3.5 SFT: the prompt conditions but is not predicted)
    and the token count."""
    logprobs, mask = target_logprobs(logits, batch, backend)
    return -masked_mean(logprobs, mask), mask.sum()


def forward_batch(engine, input_ids: torch.Tensor, attention_mask: torch.Tensor, packed: bool) -> torch.Tensor:
    """The model's outputs (B, T, ...) on a padded batch, position ids counted from each row's first
    real token (as generation counts them). packed: run the real tokens as packed rows (varlen,
    models/packing.py) and return them in the padded layout, 0 at padding; the same numbers to rounding,
    without the work on padding."""
    if not packed:
        return engine(input_ids, attention_mask, positions_from_mask(attention_mask))
    p = pack_rows(input_ids, attention_mask)
    return p.unpack(engine(p.input_ids, None, p.positions, segments=p.segments))


def response_logits(forward, rollout: Rollout) -> torch.Tensor:
    """Logits (B, R, V) that predict each response token; forward(input_ids, attention_mask) → (B, T, V)."""
    return forward(rollout.sequences, rollout.attention_mask)[:, rollout.prompt_len - 1:-1]


def sampled_logprobs(backend: LayerBackend, logits: torch.Tensor, labels: torch.Tensor, top_k: int = 0,
                     top_p: float = 1.0) -> torch.Tensor:
    """log p(labels) (B, R) under the distribution generation samples from: softmax of the (tempered)
    logits after top-k / top-p filtering, as models.generation.sample_next does. The filter needs the
    whole vocabulary, so under TP the shards are gathered first. A label that the recomputed filter
    would drop (a tie at the cut-off, decided the other way by a last-bit difference between the
    KV-cache and full forward) is kept: its log-prob stays finite and close to the sampler's."""
    if not top_k and top_p >= 1.0:
        return backend.token_logprobs(logits, labels)
    full = backend.gather_vocab(logits).float()  # (B, R, V)
    kept = filter_logits(full, top_k, top_p)
    kept = kept.scatter(-1, labels[..., None], full.gather(-1, labels[..., None]))
    return kept.gather(-1, labels[..., None]).squeeze(-1) - torch.logsumexp(kept, dim=-1)


def response_logprobs(forward, backend: LayerBackend, rollout: Rollout, temperature: float, top_k: int = 0,
                      top_p: float = 1.0) -> torch.Tensor:
    """log π(response token) (B, R) under logits / temperature (then top-k/top-p), 0 on padding."""
    logits = response_logits(forward, rollout) / temperature
    return sampled_logprobs(backend, logits, rollout.responses, top_k, top_p) * rollout.response_mask
