"""Advantage estimators: GAE with a critic, and the critic-free ones that compare the samples of a prompt
(GRPO, RLOO) or of the whole batch (REINFORCE++). veRL's names; one dispatch, `estimate_advantages`.

Sources: GAE (Schulman et al. 2016, eq. 16); GRPO (Shao et al. 2024, DeepSeekMath §4.1.2, outcome
supervision) and Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training", §3: no division by
the group's std); RLOO (Ahmadian et al. 2024, eq. 6); REINFORCE++ (Hu 2025, §3: discounted token
returns whitened over the batch). The sequence return of the outcome estimators is the sum of the
shaped per-token rewards: the score, plus −β·KL per token when the KL is in the reward (as veRL).
Samples of one prompt are contiguous rows, `group` of them. Imports only torch.
"""

from __future__ import annotations

import torch

from rlhf.algo.masked import masked_whiten

ESTIMATORS = ("gae", "grpo", "rloo", "reinforce_pp")


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns (B, R). The episode ends after the last response token: the value
    after it is 0, and padded positions carry neither reward nor value."""
    mask = response_mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def leave_one_out(scores: torch.Tensor, group: int) -> torch.Tensor:
    """scores (B,) in contiguous groups of `group` samples of one prompt → each minus the mean of the
    other samples of its prompt (the RLOO baseline, Ahmadian et al. 2024)."""
    s = scores.view(-1, group)
    others = (s.sum(-1, keepdim=True) - s) / (group - 1)
    return (s - others).view(-1)


def grpo_advantages(returns: torch.Tensor, response_mask: torch.Tensor, group: int, scale_by_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """(B,) sequence returns → (B, R) advantages: each return minus its group's mean, divided by the
    group's (Bessel) std unless scale_by_std is False (Dr. GRPO), the same on every response token."""
    s = returns.view(-1, group)  # (B / group, group)
    adv = s - s.mean(-1, keepdim=True)
    if scale_by_std:
        adv = adv / (s.std(-1, keepdim=True) + eps)
    return adv.reshape(-1, 1) * response_mask.to(returns.dtype)


def rloo_advantages(returns: torch.Tensor, response_mask: torch.Tensor, group: int) -> torch.Tensor:
    """(B,) sequence returns → (B, R): each minus the mean of the other samples of its prompt."""
    return leave_one_out(returns, group)[:, None] * response_mask.to(returns.dtype)


def reinforce_pp_advantages(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, R) per-token rewards → discounted returns-to-go G_t = Σ_{t'≥t} γ^{t'−t} r_t', whitened over
    every valid token of the batch (the batch mean is REINFORCE++'s baseline)."""
    mask = response_mask.to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return masked_whiten(returns, response_mask)


def estimate_advantages(estimator: str, rewards: torch.Tensor, response_mask: torch.Tensor,
                        values: torch.Tensor | None = None, group: int = 1, gamma: float = 1.0, lam: float = 0.95,
                        grpo_std: bool = True, whiten: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advantages (B, R), and the critic's returns (B, R) for GAE (None otherwise), from the shaped
    per-token rewards. `whiten` is GAE's option (the others are normalised by construction)."""
    if estimator == "gae":
        assert values is not None, "GAE needs the critic's values"
        advantages, returns = compute_gae(rewards, values, response_mask, gamma, lam)
        return (masked_whiten(advantages, response_mask) if whiten else advantages), returns
    sequence = (rewards * response_mask).sum(-1)  # (B,) the return of the whole response
    if estimator == "grpo":
        return grpo_advantages(sequence, response_mask, group, grpo_std), None
    if estimator == "rloo":
        return rloo_advantages(sequence, response_mask, group), None
    if estimator == "reinforce_pp":
        return reinforce_pp_advantages(rewards, response_mask, gamma), None
    raise ValueError(f"unknown advantage estimator {estimator!r}; one of {ESTIMATORS}")


def uniform_groups(scores: torch.Tensor, group: int, tol: float = 1e-6) -> torch.Tensor:
    """(B,) bool: rows whose prompt's samples all scored the same (within tol). Their group-relative
    advantage is zero, so they only dilute the batch (DAPO's dynamic sampling filter, Yu et al. 2025)."""
    s = scores.view(-1, group)
    same = (s.max(-1).values - s.min(-1).values) <= tol  # (B / group,)
    return same.repeat_interleave(group)
