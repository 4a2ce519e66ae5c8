"""Text → token batches for each stage: SFT examples, ranked comparisons, prompts.

Prompts and responses are tokenized separately and joined, so the boundary (what the loss and the
response_mask cover) is exact for any tokenizer. Sequences over the length budget lose prompt
tokens from the left first, then response tokens from the right; the count is reported, never hidden.
Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rlhf.chat import encode_dialogue
from rlhf.data import Comparison


@dataclass
class Encoded:
    prompt: list[int]
    response: list[int]  # ends with EOS (or the chat template's end of turn) unless truncated
    truncated: bool
    # Per prompt token, whether the loss covers it too: the earlier assistant turns of a conversation
    # (SFT on chat records); None: none of the prompt
    prompt_targets: list[bool] | None = None


def fit(p: list[int], r: list[int], max_len: int, targets: list[bool] | None = None) -> Encoded:
    """Prompt and response ids within max_len: the oldest prompt tokens go first (at least one stays),
    then the response's last."""
    truncated = len(p) + len(r) > max_len
    if truncated:
        keep_p = max(1, max_len - len(r))
        p, targets = p[-keep_p:], targets[-keep_p:] if targets is not None else None
        r = r[: max_len - len(p)]
    return Encoded(p, r, truncated, targets)


def encode_pair(tok, prompt: str, response: str, max_len: int) -> Encoded:
    """Token ids of prompt and response (+EOS) fitting max_len."""
    return fit(tok(prompt, add_special_tokens=False)["input_ids"],
               tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], max_len)


def encode_conversation(tok, messages, max_len: int, mark_turns: bool = True) -> Encoded:
    """A conversation ending on an assistant turn, as its chat template renders it: the last turn is the
    response (its end-of-turn token included), and with `mark_turns` the earlier assistant turns are
    marked in the prompt, so SFT's loss covers every assistant turn and never a user or system turn."""
    ids, trained = encode_dialogue(tok, messages)
    cut = len(trained)
    while cut and trained[cut - 1]:  # the last assistant turn: the trained tokens at the end
        cut -= 1
    assert cut < len(ids), "a demonstration ends on an assistant turn"
    return fit(ids[:cut], ids[cut:], max_len, trained[:cut] if mark_turns else None)


def encode_response(tok, c: Comparison, response: str, max_len: int) -> Encoded:
    """One ranked response of a comparison: a reply rendered after its conversation, or text + EOS."""
    if c.context is None:
        return encode_pair(tok, c.prompt, response, max_len)
    return encode_conversation(tok, (*c.context, {"role": "assistant", "content": response}), max_len, False)


def off_prompt_examples(groups: list[list[Encoded]], max_len: int) -> tuple[list[int], list[Encoded]]:
    """Each ranking's best response against the next ranking's best response put after this ranking's
    prompt (RRM, Liu et al. 2024, "RRM: Robust Reward Model Training Mitigates Reward Hacking"): a reply
    to another prompt is worse than the best reply to this one, whatever it shares with it (a polite frame,
    a mood, a length), so the reward model learns what depends on the prompt. Returns the flat index of
    each such best response in the batch's [response for group in groups for response in group] and the
    off-prompt examples, one per pair; a pair whose prompts or responses are the same tokens is left out."""
    starts = [sum(len(g) for g in groups[:i]) for i in range(len(groups))]
    own, off = [], []
    for i, group in enumerate(groups):
        other = groups[(i + 1) % len(groups)][0]
        if len(groups) < 2 or other.prompt == group[0].prompt or other.response == group[0].response:
            continue
        own.append(starts[i])
        off.append(fit(group[0].prompt, other.response, max_len))
    return own, off


def encode_prompt(tok, prompt: str, max_len: int) -> list[int]:
    return tok(prompt, add_special_tokens=False)["input_ids"][-max_len:]


def decode_responses(tok, responses: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Response texts (B,) from token ids (B, R), without EOS and padding."""
    texts = []
    for row, keep in zip(responses, response_mask, strict=True):
        tokens = [t for t in row[keep].tolist() if t != tok.eos_token_id]
        texts.append(tok.decode(tokens, skip_special_tokens=True))
    return texts


@dataclass
class LMBatch:
    input_ids: torch.Tensor  # (B, T) long, right-padded
    attention_mask: torch.Tensor  # (B, T) bool
    loss_mask: torch.Tensor  # (B, T) bool: True where input_ids[t] is a response token to predict

    def to(self, device) -> LMBatch:
        return LMBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.loss_mask)))


def collate_lm(examples: list[Encoded], pad_id: int) -> LMBatch:
    """Right-padded batch; the loss covers response tokens (incl. EOS), never the prompt (§3.5 SFT)
    except a conversation's earlier assistant turns."""
    T = max(len(e.prompt) + len(e.response) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    attn = torch.zeros(len(examples), T, dtype=torch.bool)
    loss = torch.zeros(len(examples), T, dtype=torch.bool)
    for b, e in enumerate(examples):
        n_p, n = len(e.prompt), len(e.prompt) + len(e.response)
        ids[b, :n] = torch.tensor(e.prompt + e.response)
        attn[b, :n] = True
        loss[b, n_p:n] = True
        if e.prompt_targets is not None:
            loss[b, :n_p] = torch.tensor(e.prompt_targets, dtype=torch.bool)
    return LMBatch(ids, attn, loss)


@dataclass
class RankedBatch:
    """All responses of a batch of prompts, each forwarded once (see rlhf/reward_model.py)."""

    seqs: LMBatch  # (N, T): the K_i responses of prompt i, prompt by prompt, best first
    group_sizes: list[int]  # K_i per prompt; sum == N


def collate_ranked(tok, comparisons: list[Comparison], max_len: int) -> tuple[RankedBatch, int]:
    """Flatten comparisons into one padded batch; returns it and the number of truncated sequences."""
    encoded = [encode_response(tok, c, r, max_len) for c in comparisons for r in c.responses]
    batch = RankedBatch(collate_lm(encoded, tok.pad_token_id), [len(c.responses) for c in comparisons])
    return batch, sum(e.truncated for e in encoded)


def part_bounds(n_rows: int, parts: int) -> list[int]:
    """Where `parts` near-equal consecutive parts of n_rows rows start (and the last ends): the split
    of a batch over data-parallel ranks (launcher.worker_group.split_batch), the same for every field."""
    return [n_rows * i // parts for i in range(parts + 1)]


def balanced_order(lengths: list[int], parts: int) -> list[int]:
    """A row order whose consecutive parts (part_bounds) hold about the same number of tokens: rows,
    longest first, each go to the part with the fewest tokens so far among those not yet full (the
    greedy longest-processing-time rule); each part keeps its rows in their original order."""
    bounds = part_bounds(len(lengths), parts)
    room = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    loads, members = [0] * parts, [[] for _ in range(parts)]
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        k = min((k for k in range(parts) if len(members[k]) < room[k]), key=lambda k: (loads[k], k))
        members[k].append(i)
        loads[k] += lengths[i]
    return [i for rows in members for i in sorted(rows)]


def count_steps(n_items: int, batch_size: int, grad_accum: int, epochs: int) -> int:
    """Optimizer steps of `epochs` passes over n_items in batches, grad_accum batches per step."""
    return math.ceil(n_items / (batch_size * grad_accum)) * epochs


def epoch_batches(items: list, batch_size: int, epochs: int, seed: int) -> Iterator[list]:
    """Batches of `items` for `epochs` passes, each pass in a fresh seeded shuffle."""
    rng = random.Random(seed)
    for _ in range(epochs):
        order = list(range(len(items)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            yield [items[j] for j in order[i:i + batch_size]]
