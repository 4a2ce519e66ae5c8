"""Batched sampling with a KV cache: left-padded prompts in, PPO-ready sequences and masks out.

Mask convention (shared with rlhf/): `response_mask` is True on generated tokens up to and
including EOS; everything after a row's EOS is padding with attention_mask False.
Must not import torch.distributed, deepspeed, megatron or ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.heads import CausalLM
from models.transformer import KVCache, positions_from_mask


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 1.0  # 0 → greedy
    top_k: int = 0  # 0 → off
    top_p: float = 1.0  # 1 → off

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"invalid sampling parameters {self}")


@dataclass
class Generation:
    sequences: torch.Tensor  # (B, P + R) long: left-padded prompt, then response padded on the right
    attention_mask: torch.Tensor  # (B, P + R) bool: real prompt tokens and response tokens up to EOS
    response_mask: torch.Tensor  # (B, R) bool: generated tokens up to and including EOS
    logprobs: torch.Tensor  # (B, R) fp32: log p(token) as sampled (temperature, top-k, top-p), 0 where masked
    prompt_len: int  # P

    @property
    def responses(self) -> torch.Tensor:  # (B, R)
        return self.sequences[:, self.prompt_len:]

    def to(self, device) -> Generation:
        return Generation(self.sequences.to(device), self.attention_mask.to(device), self.response_mask.to(device),
                          self.logprobs.to(device), self.prompt_len)


def pad_generation(g: Generation, width: int, pad_id: int) -> Generation:
    """Right-pad the response part to `width` tokens (all rows stopped early) with masked padding."""
    extra = width - g.response_mask.shape[1]
    if extra <= 0:
        return g
    B = g.sequences.shape[0]
    pad = g.sequences.new_full((B, extra), pad_id)
    off = g.response_mask.new_zeros((B, extra))
    return Generation(torch.cat([g.sequences, pad], 1), torch.cat([g.attention_mask, off], 1),
                      torch.cat([g.response_mask, off], 1), torch.cat([g.logprobs, g.logprobs.new_zeros(B, extra)], 1),
                      g.prompt_len)


def collate_prompts(prompts: list[list[int]], pad_id: int, width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt batch for generation: input_ids (B, P) long, attention_mask (B, P) bool,
    P = max(width, longest prompt)."""
    P = max(width, *(len(p) for p in prompts))
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.bool)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.tensor(p)
        mask[b, P - len(p):] = True
    return ids, mask


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering of (..., V) logits, the order transformers applies them."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # (B, V): probability of strictly better tokens
        drop_sorted = mass_before >= top_p  # keeps the smallest prefix reaching top_p (>= 1 token)
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, params: SamplingParams,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits → next tokens (B,) and their log-probs (B,) under the distribution they were drawn
    from: softmax of logits / temperature after top-k / top-p filtering."""
    logits = logits.float()
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    scaled = logits / params.temperature
    filtered = filter_logits(scaled, params.top_k, params.top_p)
    tokens = torch.multinomial(filtered.softmax(-1), 1, generator=generator).squeeze(-1)
    return tokens, filtered.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def generate(
    model: CausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: SamplingParams,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    drop_finished: bool = True,
) -> Generation:
    """Sample up to `max_new_tokens` for each left-padded prompt (B, P); rows stop at their own EOS.

    Finished rows leave the batch (and the KV cache) once they are an eighth of it: copying the
    cache once costs less than decoding them on. Sampling still draws for every row, so the samples
    are those of a batch that kept them. use_cache=False recomputes the whole prefix each step, on the
    same rows (the check that the cache changes nothing). drop_finished=False keeps every row to the
    end (the check that dropping changes nothing).
    """
    B, P = input_ids.shape
    R = params.max_new_tokens
    if model.cfg.max_seq_len < P + R:
        raise ValueError(f"prompt length {P} + max_new_tokens {R} exceeds max_seq_len {model.cfg.max_seq_len}")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("prompts must be left-padded: the last column of attention_mask has padding")
    device = input_ids.device
    sequences = torch.cat([input_ids, input_ids.new_full((B, R), pad_token_id)], dim=1)  # (B, P + R)
    mask = torch.cat([attention_mask.bool(), attention_mask.new_zeros((B, R), dtype=torch.bool)], 1)
    logprobs = torch.zeros(B, R, device=device)
    rows = torch.arange(B, device=device)  # the output row of each batch slot still decoding
    alive = torch.ones(B, dtype=torch.bool, device=device)  # (slots,): not finished yet
    next_pos = attention_mask.long().sum(-1)  # (B,): position id of each row's first new token
    cache = KVCache.for_model(model.body, B, P + R) if use_cache else None
    # Under tensor parallelism every rank gathers the full vocabulary and samples with the same
    # generator state, so all ranks pick the same token without a broadcast.
    vocab = model.backend.gather_vocab
    logits = vocab(model(input_ids, mask[:, :P], positions_from_mask(mask[:, :P]), cache, last_only=True))
    steps = 0
    for t in range(R):
        # Every row draws, in its own place, whether it is still decoding or not: the random stream, and
        # so every sample, is the same as if no row ever left the batch.
        every = logits.new_zeros(B, logits.shape[-1])
        every[rows] = logits[:, -1]
        tokens, lp = (x[rows] for x in sample_next(every, params, generator))  # (slots,)
        out = rows[alive]
        sequences[out, P + t] = tokens[alive]
        mask[out, P + t] = True
        logprobs[out, t] = lp[alive]
        alive = alive & (tokens != eos_token_id)
        steps = t + 1
        if not bool(alive.any()) or t == R - 1:
            break
        if drop_finished and len(rows) - int(alive.sum()) >= max(1, len(rows) // 8):
            keep = alive.nonzero().flatten()
            rows, alive = rows[keep], alive[keep]
            if cache is not None:
                cache.select(keep)
        # Slots that finished but stay until the next drop decode a padding token; nothing reads it.
        if use_cache:
            pos = (next_pos[rows] + t)[:, None]  # (slots, 1)
            logits = vocab(model(sequences[rows, P + t:P + t + 1], mask[rows, :P + t + 1], pos, cache,
                                 last_only=True))
        else:
            full = mask[rows, :P + t + 1]
            logits = vocab(model(sequences[rows, :P + t + 1], full, positions_from_mask(full), last_only=True))
    keep = P + steps
    return Generation(
        sequences=sequences[:, :keep], attention_mask=mask[:, :keep], response_mask=mask[:, P:keep],
        logprobs=logprobs[:, :steps], prompt_len=P,
    )
