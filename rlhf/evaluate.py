"""Policy evaluation on held-out prompts: the policy group samples, a labeller scores.

Must not import ray: `group` is any policy worker group.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from models.generation import Generation, SamplingParams
from rlhf.batching import encode_prompt
from rlhf.workers import PolicyWorker


def sample(group, tok, prompts: list[str], params: SamplingParams, max_prompt_len: int, seed: int = 0,
           batch_size: int = 256) -> list[Generation]:
    """Generations of the policy group for text prompts, batch by batch (in order)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [encode_prompt(tok, p, max_prompt_len) for p in prompts[i:i + batch_size]]
        width = max(len(x) for x in ids)
        out.append(group.map(PolicyWorker.generate, ids, width, params, tok.eos_token_id, tok.pad_token_id,
                             seed + i).get())
    return out


def decode_responses(tok, g: Generation) -> list[str]:
    """Response texts without EOS and padding."""
    texts = []
    for row, keep in zip(g.responses, g.response_mask, strict=True):
        tokens = [t for t in row[keep].tolist() if t != tok.eos_token_id]
        texts.append(tok.decode(tokens, skip_special_tokens=True))
    return texts


@dataclass(frozen=True)
class GoldEval:
    mean: float  # mean labeller score over prompts (each prompt's samples averaged first)
    stderr: float  # standard error of that mean over prompts: the yardstick for "beyond noise"
    rows: list[tuple[str, str, float]]  # (prompt, response, score) per sample, prompt by prompt


def summarize_gold(prompts: list[str], responses: list[str], scorer: Callable[[str, str], float],
                   samples: int = 1) -> GoldEval:
    """Score `samples` consecutive responses per prompt; mean and standard error over prompts."""
    repeated = [p for p in prompts for _ in range(samples)]
    if len(responses) != len(repeated):
        raise ValueError(f"{len(responses)} responses for {len(prompts)} prompts × {samples} samples")
    rows = [(p, r, scorer(p, r)) for p, r in zip(repeated, responses, strict=True)]
    per_prompt = [statistics.fmean(s for _, _, s in rows[i:i + samples]) for i in range(0, len(rows), samples)]
    stderr = statistics.stdev(per_prompt) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else 0.0
    return GoldEval(statistics.fmean(per_prompt), stderr, rows)


def gold_eval(group, tok, prompts: list[str], scorer: Callable[[str, str], float], params: SamplingParams,
              max_prompt_len: int, seed: int = 0, samples: int = 1) -> GoldEval:
    """The policy group's held-out labeller score: `samples` responses per prompt."""
    repeated = [p for p in prompts for _ in range(samples)]
    gens = sample(group, tok, repeated, params, max_prompt_len, seed)
    return summarize_gold(prompts, [r for g in gens for r in decode_responses(tok, g)], scorer, samples)
