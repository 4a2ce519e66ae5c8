"""Policy evaluation on held-out prompts: sample responses, score them with a labeller.

Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.generation import SamplingParams, generate
from models.heads import CausalLM
from rlhf.batching import collate_prompts, encode_prompt


@torch.no_grad()
def sample_responses(model: CausalLM, tok, prompts: list[str], params: SamplingParams, max_prompt_len: int,
                     batch_size: int = 64, seed: int = 0) -> list[str]:
    """Decoded responses (EOS and padding stripped), one per prompt, in order."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = collate_prompts([encode_prompt(tok, p, max_prompt_len) for p in prompts[i:i + batch_size]],
                                    tok.pad_token_id)
        g = generate(model, ids, mask, params, tok.eos_token_id, tok.pad_token_id, gen)
        for row, keep in zip(g.responses, g.response_mask, strict=True):
            tokens = [t for t in row[keep].tolist() if t != tok.eos_token_id]
            out.append(tok.decode(tokens, skip_special_tokens=True))
    model.train(was_training)
    return out


def gold_eval(model: CausalLM, tok, prompts: list[str], scorer: Callable[[str, str], float],
              params: SamplingParams, max_prompt_len: int, seed: int = 0) -> tuple[float, list[tuple[str, str, float]]]:
    """Mean labeller score over prompts, and (prompt, response, score) samples."""
    responses = sample_responses(model, tok, prompts, params, max_prompt_len, seed=seed)
    rows = [(p, r, scorer(p, r)) for p, r in zip(prompts, responses, strict=True)]
    return sum(s for _, _, s in rows) / len(rows), rows
