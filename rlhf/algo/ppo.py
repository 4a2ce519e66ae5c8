"""PPO for language models: KL estimators, reward shaping, GAE, the clipped losses, the KL controller.

Sources: PPO (Schulman et al. 2017) eq. 7 and 9; GAE (Schulman et al. 2016) eq. 16; per-token KL
penalty and adaptive controller (Ziegler et al. 2019 §2.2); InstructGPT (Ouyang et al. 2022) eq. 2
for the objective with pretraining mix; KL estimators k1/k2/k3 from Schulman's note "Approximating
KL divergence" (2020); clip-higher from DAPO (Yu et al. 2025). Every function takes tensors and
returns tensors (+ a flat metrics dict).
Imports only torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.algo.masked import masked_mean


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """log π(y)/π_ref(y) per token: unbiased for KL(π‖π_ref), high variance, can be negative."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(r − 1) − log r with r = π_ref/π per token: unbiased for KL(π‖π_ref), low variance, ≥ 0."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """½ (log π(y)/π_ref(y))² per token: biased, ≥ 0, and its gradient is the KL's gradient on-policy."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(estimator: str, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) at the sampled tokens (B, R) by Schulman's k1, k2 or k3."""
    return KL_ESTIMATORS[estimator](logprobs, ref_logprobs)


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


def score_unfinished(scores: torch.Tensor, done: torch.Tensor, value: float | None) -> torch.Tensor:
    """Scores (B,) with every response that did not finish (`done` False) given `value` instead; None
    leaves them as they are. A reward model learns from finished responses and is read at their EOS:
    the score of a cut-off response is read at a token it never learned to score, and PPO finds and
    exploits that. A fixed low score for it is the remedy of Stiennon et al. 2020 (their −1 on the
    normalised scale; Huang et al. 2024, "The N+ implementation details of RLHF with PPO", §3)."""
    if value is None:
        return scores
    return torch.where(done.to(scores.device), scores, torch.full_like(scores, value))


def normalize_scores(scores: torch.Tensor, mean: float, std: float, clip: float | None) -> torch.Tensor:
    """(score − mean) / std from the reward model's held-out statistics, optionally clipped to ±clip."""
    out = (scores - mean) / max(std, 1e-8)
    return out.clamp(-clip, clip) if clip else out


ENSEMBLE_REDUCTIONS = ("min", "mean")


def ensemble_scores(scores: torch.Tensor, stats: list[dict[str, float]], reduce: str) -> torch.Tensor:
    """One score (B,) from an ensemble of reward models' raw scores (M, B): each member's score on its
    own held-out scale, (score − mean) / std, reduced over the members ("min": the worst case, Coste et
    al. 2023's WCO; "mean"), and put back on the first member's raw scale, so that what follows (the
    normalisation by the first member's statistics, or none) reads it as that member's score. A policy
    that finds a response one member over-rates gains only what every member grants it."""
    if reduce not in ENSEMBLE_REDUCTIONS:
        raise ValueError(f"unknown ensemble reduction {reduce!r}; one of {ENSEMBLE_REDUCTIONS}")
    if scores.shape[0] != len(stats):
        raise ValueError(f"{scores.shape[0]} members' scores, {len(stats)} members' statistics")
    mean = torch.tensor([s["mean"] for s in stats], dtype=torch.float32).unsqueeze(-1)  # (M, 1)
    std = torch.tensor([max(s["std"], 1e-8) for s in stats], dtype=torch.float32).unsqueeze(-1)
    z = (scores.float() - mean) / std
    reduced = z.min(0).values if reduce == "min" else z.mean(0)
    return mean[0] + std[0] * reduced


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


LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def loss_weights(response_mask: torch.Tensor, mode: str, horizon: int) -> torch.Tensor:
    """Each token's weight (B, R) in a minibatch's loss, set for the whole minibatch (the two means sum
    to 1 over it); a rank that holds some of its rows adds Σ weight × per-token loss, so the loss (and,
    with gradients averaged over data-parallel ranks, the update) is the whole minibatch's on any number of ranks.
    token_mean: every valid token alike (long responses weigh more); seq_mean_token_mean: each
    sequence alike, its tokens averaged (GRPO's original); seq_mean_token_sum_norm: each token
    1/(B·horizon), a constant that favours neither short nor long responses (Dr. GRPO, Liu et al. 2025 §3)."""
    mask = response_mask.float()
    if mode == "token_mean":
        return mask / mask.sum().clamp(min=1.0)
    n_seqs = max(1, mask.shape[0])
    if mode == "seq_mean_token_mean":
        return mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / n_seqs
    if mode == "seq_mean_token_sum_norm":
        return mask / (n_seqs * horizon)
    raise ValueError(f"unknown loss aggregation {mode!r}; one of {LOSS_AGGREGATIONS}")


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                weights: torch.Tensor, clip_low: float, clip_high: float | None = None,
                is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate (PPO eq. 7), Σ weight × per-token loss (see loss_weights). The ratio is clipped
    to [1 − clip_low, 1 + clip_high]; clip_high > clip_low is DAPO's clip-higher (Yu et al. 2025 §3.1),
    which leaves more room to raise unlikely tokens. None: symmetric. is_weights (B, R): each token's
    surrogate × its importance weight (truncated_is_weights), for samples from another engine."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + (clip_low if clip_high is None else clip_high))
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights
    loss = (per_token * weights).sum()
    with torch.no_grad():
        mask = weights > 0
        metrics = {"policy/clipfrac": float(masked_mean((clipped > unclipped).float(), mask)),
                   "policy/approx_kl": float(masked_mean(torch.expm1(log_ratio) - log_ratio, mask))}
    return loss, metrics


def truncated_is_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """Truncated importance weights min(π_old / π_rollout, cap) per token (B, R), 0 on padding.

    When another engine samples (vLLM), its log-probs differ from the trainer's for the same weights;
    the PPO ratio is taken against the trainer's π_old, so each token's surrogate is reweighted by how
    much likelier π_old made it than the sampler did, truncated at `cap` to bound the variance (Yao et
    al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"; veRL's and
    OpenRLHF's TIS)."""
    return (old_logprobs - rollout_logprobs).exp().clamp(max=cap) * mask


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, weights: torch.Tensor,
               clip: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss: ½·max((V − G)², (V_clip − G)²), V_clip within ±clip of the rollout's values;
    Σ weight × per-token loss."""
    error = (values - returns) ** 2
    mask = weights > 0
    if clip:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        error_clipped = (clipped - returns) ** 2
        loss = 0.5 * (torch.maximum(error, error_clipped) * weights).sum()
        frac = masked_mean((error_clipped > error).float(), mask)
    else:
        loss, frac = 0.5 * (error * weights).sum(), torch.zeros(())
    return loss, {"critic/value_error": float(masked_mean(error.detach(), mask)),
                  "critic/clipfrac": float(frac)}


@dataclass(frozen=True)
class KLTerm:
    """The KL as a loss term (GRPO's choice, Shao et al. 2024 eq. 3) instead of a reward penalty."""

    ref_logprobs: torch.Tensor  # (B, R)
    coef: float
    estimator: str


def ppo_policy_objective(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                         weights: torch.Tensor, entropy: torch.Tensor, clip_eps: float, entropy_coef: float,
                         ptx_loss: torch.Tensor | None, ptx_coef: float, clip_eps_high: float | None = None,
                         kl: KLTerm | None = None, is_weights: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """The one assembly of the policy's loss (InstructGPT eq. 2, as a loss to minimise): clipped
    surrogate (× truncated importance weights when another engine sampled) − entropy_coef·entropy
    (+ β·KL estimate when the KL is a loss term) + γ_ptx·LM loss on pretraining text. Every token term
    is aggregated with the same weights."""
    loss, metrics = policy_loss(logprobs, old_logprobs, advantages, weights, clip_eps, clip_eps_high, is_weights)
    ent = (entropy * weights).sum()
    metrics["policy/entropy"] = float(ent.detach())
    metrics["policy/pg_loss"] = float(loss.detach())
    loss = loss - entropy_coef * ent
    if kl is not None and kl.coef:
        kl_loss = (kl_estimate(kl.estimator, logprobs, kl.ref_logprobs) * weights).sum()
        loss = loss + kl.coef * kl_loss
        metrics["policy/kl_loss"] = float(kl_loss.detach())
    if ptx_loss is not None and ptx_coef:
        loss = loss + ptx_coef * ptx_loss
        metrics["policy/ptx_loss"] = float(ptx_loss.detach())
    return loss, metrics


def within_prompt_variance(scores: torch.Tensor, group: int) -> float:
    """Mean over prompts of the (Bessel) variance of the scores of each prompt's `group` samples (B,)."""
    return float(scores.view(-1, group).var(-1).mean())


class SpreadScale:
    """The unit of the score that the KL penalty is weighed against: the root of the running mean,
    over all steps so far, of the within-prompt score variance (`within_prompt_variance`). Dividing the
    baselined scores by it makes β mean the same on every task: β nats of KL cost as much as one
    standard deviation of the scores that the policy's own samples of one prompt get, whether the
    reward model separates responses sharply or softly (docs/ppo.md). Same idea as TRL's `use_score_scaling`
    and OpenRLHF's reward normalisation, but with the within-prompt spread (the part that the leave-one-out
    baseline leaves) rather than the batch's. `floor` keeps constant scores from dividing by zero."""

    def __init__(self, floor: float = 1e-3):
        self.mean_var, self.steps, self.floor = 0.0, 0, floor

    def update(self, scores: torch.Tensor, group: int) -> float:
        self.steps += 1
        self.mean_var += (within_prompt_variance(scores, group) - self.mean_var) / self.steps
        return self.value

    @property
    def value(self) -> float:
        return max(self.mean_var ** 0.5, self.floor)

    def state_dict(self) -> dict:
        return {"mean_var": self.mean_var, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.mean_var, self.steps = state["mean_var"], state["steps"]


class KLController:
    """β for the per-token KL penalty: fixed, adaptive (Ziegler et al. 2019 §2.2):
    e = clip(KL/target − 1, ±0.2); β ← β·(1 + e·n/horizon), n = samples in the step,
    or scheduled: `start` at step 0, falling linearly to `init` at step `decay_steps`, `init` after."""

    def __init__(self, init: float, target: float | None = None, horizon: int = 10000,
                 start: float | None = None, decay_steps: int = 1):
        if start is not None and target is not None:
            raise ValueError("a scheduled β is fixed: give start or target, not both")
        self.value, self.target, self.horizon = init, target, horizon
        self.start, self.decay_steps = start, decay_steps

    def at(self, step: int) -> float:
        """β of the 0-based PPO step `step`."""
        if self.start is None:
            return self.value
        return self.value + (self.start - self.value) * max(0.0, 1 - step / self.decay_steps)

    def update(self, kl: float, n_samples: int) -> float:
        if self.target is not None:
            error = max(-0.2, min(0.2, kl / self.target - 1))
            self.value *= 1 + error * n_samples / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
