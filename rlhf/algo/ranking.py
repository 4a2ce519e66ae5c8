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


def length_bias(rewards: torch.Tensor, lengths: torch.Tensor, group_sizes: list[int]) -> dict[str, float]:
    """How much response length explains the labels and the rewards, over the labelled pairs whose two
    responses differ in length (ties left out): the share whose labelled winner is the longer one, the
    share where the reward model scores the longer one higher, and the correlation of reward and
    length over all responses. A reward model that prefers the longer response far more often than
    its labels do has learned length (Singhal et al. 2023, "A long way to go")."""
    win, lose, _ = ranking_pairs(group_sizes)
    lengths = lengths.to(rewards.device).float()
    longer_first = lengths[win] > lengths[lose]
    differ = lengths[win] != lengths[lose]
    rm_longer = torch.where(longer_first, rewards[win] > rewards[lose], rewards[lose] > rewards[win])
    n = int(differ.sum())
    corr = torch.corrcoef(torch.stack([rewards.float(), lengths]))[0, 1] if lengths.std() > 0 else torch.tensor(0.0)
    return {"pairs": float(n),
            "labels_prefer_longer": float(longer_first[differ].float().mean()) if n else float("nan"),
            "rm_prefers_longer": float(rm_longer[differ].float().mean()) if n else float("nan"),
            "corr": float(corr)}
