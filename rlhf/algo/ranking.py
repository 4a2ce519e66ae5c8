"""The InstructGPT reward-model ranking loss (Ouyang et al. 2022, §3.5, eq. 1).

For a prompt x with K responses ranked best first, every one of the C(K, 2) pairs (y_w ranked
above y_l) contributes −log σ(r(x, y_w) − r(x, y_l)), weighted 1/C(K, 2); the batch loss is the mean
over prompts. Plain chosen/rejected pairs are the K = 2 case. Imports only torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranking_pairs(group_sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices into the flat reward vector of every (winner, loser) pair, and each pair's weight
    1 / (C(K_i, 2) · n_prompts), so the weights of one prompt sum to 1/n_prompts."""
    win, lose, weight = [], [], []
    offset = 0
    for k in group_sizes:
        if k < 2:
            raise ValueError(f"a ranking needs at least 2 responses, got {k}")
        n_pairs = k * (k - 1) // 2
        for i in range(k):
            for j in range(i + 1, k):
                win.append(offset + i)
                lose.append(offset + j)
                weight.append(1.0 / (n_pairs * len(group_sizes)))
        offset += k
    return torch.tensor(win), torch.tensor(lose), torch.tensor(weight)


def ranking_loss(rewards: torch.Tensor, group_sizes: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
    """rewards (N,): one scalar per response, prompts' responses contiguous and best first.

    Returns the loss and metrics: pair accuracy and mean margin (both weighted as the loss is).
    """
    win, lose, weight = ranking_pairs(group_sizes)
    weight = weight.to(rewards.device, rewards.dtype)
    margin = rewards[win.to(rewards.device)] - rewards[lose.to(rewards.device)]  # (n_pairs,)
    loss = -(weight * F.logsigmoid(margin)).sum()
    with torch.no_grad():
        metrics = {"accuracy": float((weight * (margin > 0).to(weight.dtype)).sum()),
                   "margin": float((weight * margin).sum())}
    return loss, metrics
