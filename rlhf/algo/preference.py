"""Direct preference optimisation on rankings: DPO (Rafailov et al. 2023, eq. 7) and IPO (Azar et al.
2023, eq. 17), over the same C(K, 2) pairs and 1/C(K, 2) weights as the InstructGPT reward loss.

A K-way ranking of one prompt gives C(K, 2) (better, worse) pairs that share their responses; as in
InstructGPT §3.5 they stay one batch element and each prompt weighs the same, however large its K
(rlhf/algo/ranking.py). The implicit reward of a response is β·(log π(y|x) − log π_ref(y|x)), with
sequence log-probs summed over response tokens. Imports only torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.algo.ranking import ranking_pairs

PREFERENCE_LOSSES = ("dpo", "ipo")


def preference_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, group_sizes: list[int], beta: float,
                    kind: str = "dpo") -> tuple[torch.Tensor, dict[str, float]]:
    """logprobs, ref_logprobs (N,): each response's summed log-prob under the policy and the frozen
    reference, prompts' responses contiguous and best first. DPO: −log σ(β·Δ); IPO: (Δ − 1/(2β))², with
    Δ = (log π − log π_ref)(better) − (log π − log π_ref)(worse); each pair weighted 1/(C(K_i, 2)·n)."""
    win, lose, weight = (t.to(logprobs.device) for t in ranking_pairs(group_sizes))
    weight = weight.to(logprobs.dtype)
    log_ratio = logprobs - ref_logprobs  # (N,)
    delta = log_ratio[win] - log_ratio[lose]  # (n_pairs,)
    if kind == "dpo":
        per_pair = -F.logsigmoid(beta * delta)
    elif kind == "ipo":
        per_pair = (delta - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {kind!r}; one of {PREFERENCE_LOSSES}")
    loss = (weight * per_pair).sum()
    with torch.no_grad():
        metrics = {"accuracy": float((weight * (delta > 0).to(weight.dtype)).sum()),
                   "margin": float((weight * beta * delta).sum()),
                   "chosen_reward": float(beta * log_ratio[win].mean()),
                   "rejected_reward": float(beta * log_ratio[lose].mean())}
    return loss, metrics
