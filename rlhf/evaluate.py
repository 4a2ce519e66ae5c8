"""Policy evaluation on held-out prompts: the policy group samples, a labeller scores.

Must not import ray: `group` is any policy worker group.
"""

from __future__ import annotations

from collections.abc import Callable

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


def gold_eval(group, tok, prompts: list[str], scorer: Callable[[str, str], float], params: SamplingParams,
              max_prompt_len: int, seed: int = 0) -> tuple[float, list[tuple[str, str, float]]]:
    """Mean labeller score over prompts, and (prompt, response, score) rows."""
    responses = [r for g in sample(group, tok, prompts, params, max_prompt_len, seed) for r in decode_responses(tok, g)]
    rows = [(p, r, scorer(p, r)) for p, r in zip(prompts, responses, strict=True)]
    return sum(s for _, _, s in rows) / len(rows), rows
