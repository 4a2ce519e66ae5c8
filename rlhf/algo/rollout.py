"""The rollout record: one PPO batch of experience, every tensor field with its shape.

B: sequences, P: prompt width (left-padded), R: response width (right-padded), T = P + R.
Imports only torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Rollout:
    sequences: torch.Tensor  # (B, T) long: prompt then response tokens
    attention_mask: torch.Tensor  # (B, T) bool: real prompt tokens and response tokens up to EOS
    response_mask: torch.Tensor  # (B, R) bool: generated tokens up to and including EOS
    prompt_len: int  # P
    old_logprobs: torch.Tensor | None = None  # (B, R) log π_old(token) recomputed by the training path
    gen_logprobs: torch.Tensor | None = None  # (B, R) log π(token) seen while sampling
    ref_logprobs: torch.Tensor | None = None  # (B, R) log π_SFT(token), the frozen reference
    values: torch.Tensor | None = None  # (B, R) V(state before each response token), the critic
    scores: torch.Tensor | None = None  # (B,) reward model's score of each whole sequence
    rewards: torch.Tensor | None = None  # (B, R) shaped per-token rewards
    advantages: torch.Tensor | None = None  # (B, R) from ppo.advantage_estimator (GAE: whitened)
    returns: torch.Tensor | None = None  # (B, R) GAE returns, the critic's targets (None without a critic)
    loss_weights: torch.Tensor | None = None  # (B, R) each token's weight in its minibatch's loss (rlhf.algo.ppo)
    is_weights: torch.Tensor | None = None  # (B, R) truncated importance weights π_old/π_sampler (vLLM rollouts)

    @property
    def responses(self) -> torch.Tensor:  # (B, R)
        return self.sequences[:, self.prompt_len:]

    def finished(self, eos_id: int) -> torch.Tensor:
        """(B,) bool: the response ended with EOS rather than at the length limit."""
        return (self.responses.eq(eos_id) & self.response_mask).any(-1)

    def to(self, device) -> Rollout:
        return replace(self, **{k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)})

    def select(self, index: torch.Tensor) -> Rollout:
        """Rows `index` of every tensor field (a minibatch)."""
        fields = {k: v[index] for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return replace(self, **fields)
