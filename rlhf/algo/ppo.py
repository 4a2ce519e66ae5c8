"""PPO for language models: KL estimators, reward shaping, GAE, the clipped losses, the KL controller.

Sources: PPO (Schulman et al. 2017) eq. 7 and 9; GAE (Schulman et al. 2016) eq. 16; per-token KL
penalty and adaptive controller (Ziegler et al. 2019 §2.2); InstructGPT (Ouyang et al. 2022) eq. 2
for the objective with pretraining mix; KL estimators k1/k3 from Schulman's note "Approximating KL
divergence" (2020). Every function takes tensors and returns tensors (+ a flat metrics dict).
Imports only torch.
"""

from __future__ import annotations

import torch

from rlhf.algo.masked import masked_mean


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """log π(y)/π_ref(y) per token: unbiased for KL(π‖π_ref), high variance, can be negative."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(r − 1) − log r with r = π_ref/π per token: unbiased for KL(π‖π_ref), low variance, ≥ 0."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) position of the last True of each row of a (B, R) mask (0 for an empty row)."""
    idx = torch.arange(mask.shape[-1], device=mask.device)
    return (idx * mask.long()).argmax(-1)


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """Per-token rewards (B, R): −β·KL on every response token, plus the sequence score on the last
    response token (the EOS, or the last sampled token of a truncated response), found from the mask."""
    rewards = -kl_coef * kl * response_mask
    rows = torch.arange(scores.shape[0], device=scores.device)
    has_tokens = response_mask.any(-1)
    rewards[rows, last_index(response_mask)] += scores * has_tokens
    return rewards


def normalize_scores(scores: torch.Tensor, mean: float, std: float, clip: float | None) -> torch.Tensor:
    """(score − mean) / std from the reward model's held-out statistics, optionally clipped to ±clip."""
    out = (scores - mean) / max(std, 1e-8)
    return out.clamp(-clip, clip) if clip else out


def combine_scores(components: dict[str, torch.Tensor], weights: dict[str, float],
                   rm_stats: dict[str, float] | None = None, clip: float | None = None) -> torch.Tensor:
    """The sequence score PPO optimises (B,): Σ weight × component. The reward model's component
    ("rm") is first normalised by its held-out mean/std and clipped, when rm_stats are given; reward
    functions' scores enter as they are (they carry their own scale, e.g. 0/1 for a right answer)."""
    total = None
    for name, weight in weights.items():
        value = components[name].float()
        if name == "rm" and rm_stats is not None:
            value = normalize_scores(value, rm_stats["mean"], rm_stats["std"], clip)
        total = weight * value if total is None else total + weight * value
    assert total is not None, "at least one score component"
    return total


def leave_one_out(scores: torch.Tensor, group: int) -> torch.Tensor:
    """scores (B,) in contiguous groups of `group` samples of one prompt → each minus the mean of the
    other samples of its prompt (the RLOO baseline, Ahmadian et al. 2024)."""
    s = scores.view(-1, group)
    others = (s.sum(-1, keepdim=True) - s) / (group - 1)
    return (s - others).view(-1)


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


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, clip_eps: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate (PPO eq. 7), averaged over all valid tokens of the minibatch (token-mean)."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), response_mask)
    with torch.no_grad():
        metrics = {"policy/clipfrac": float(masked_mean((clipped > unclipped).float(), response_mask)),
                   "policy/approx_kl": float(masked_mean(torch.expm1(log_ratio) - log_ratio, response_mask))}
    return loss, metrics


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor,
               clip: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss: ½·max((V − G)², (V_clip − G)²), V_clip within ±clip of the rollout's values."""
    error = (values - returns) ** 2
    if clip:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        error_clipped = (clipped - returns) ** 2
        loss = 0.5 * masked_mean(torch.maximum(error, error_clipped), response_mask)
        frac = masked_mean((error_clipped > error).float(), response_mask)
    else:
        loss, frac = 0.5 * masked_mean(error, response_mask), torch.zeros(())
    return loss, {"critic/value_error": float(masked_mean(error.detach(), response_mask)),
                  "critic/clipfrac": float(frac)}


def ppo_policy_objective(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                         response_mask: torch.Tensor, entropy: torch.Tensor, clip_eps: float, entropy_coef: float,
                         ptx_loss: torch.Tensor | None, ptx_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The one assembly of the policy's loss (InstructGPT eq. 2, as a loss to minimise):
    clipped surrogate − entropy_coef·entropy + γ_ptx·LM loss on pretraining text."""
    loss, metrics = policy_loss(logprobs, old_logprobs, advantages, response_mask, clip_eps)
    ent = masked_mean(entropy, response_mask)
    metrics["policy/entropy"] = float(ent.detach())
    metrics["policy/pg_loss"] = float(loss.detach())
    loss = loss - entropy_coef * ent
    if ptx_loss is not None and ptx_coef:
        loss = loss + ptx_coef * ptx_loss
        metrics["policy/ptx_loss"] = float(ptx_loss.detach())
    return loss, metrics


class KLController:
    """β for the per-token KL penalty: fixed, or adaptive (Ziegler et al. 2019 §2.2):
    e = clip(KL/target − 1, ±0.2); β ← β·(1 + e·n/horizon), n = samples in the step."""

    def __init__(self, init: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_samples: int) -> float:
        if self.target is not None:
            error = max(-0.2, min(0.2, kl / self.target - 1))
            self.value *= 1 + error * n_samples / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
