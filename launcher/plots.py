"""The over-optimisation view: gold and proxy score against √KL at every evaluation.

Gao, Schulman and Hilton (2022), "Scaling Laws for Reward Model Overoptimization", plot the gold
reward model's score and the proxy's against d = √KL(π‖π_init): the proxy keeps rising while the
gold score peaks and falls once the policy exploits the proxy's errors. The proxy here is the score
PPO optimises (reward model and reward functions, weighted); the gold score is the task's gold
function. Both come from the same held-out samples.
"""

from __future__ import annotations

import math
from pathlib import Path


def plot_overoptimization(evaluations: dict[int, dict[str, float]], path: Path) -> Path:
    """Write the plot as a PNG (matplotlib, no display needed); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(s for s, m in evaluations.items() if "eval/kl" in m and "eval/gold_score" in m)
    x = [math.sqrt(max(evaluations[s]["eval/kl"], 0.0)) for s in steps]
    gold = [evaluations[s]["eval/gold_score"] for s in steps]
    err = [evaluations[s].get("eval/gold_stderr", 0.0) for s in steps]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.errorbar(x, gold, yerr=err, color="tab:blue", marker="o", capsize=3, label="gold score (± 1 s.e.)")
    ax.set_xlabel("√KL(policy ‖ start), nats^½ per sequence")
    ax.set_ylabel("gold score", color="tab:blue")
    for s, xi, yi in zip(steps, x, gold, strict=True):
        ax.annotate(str(s), (xi, yi), textcoords="offset points", xytext=(3, 5), fontsize=7, color="tab:blue")
    proxy = [evaluations[s].get("eval/score") for s in steps]
    lines = ax.get_legend_handles_labels()
    if all(p is not None for p in proxy):
        twin = ax.twinx()
        twin.plot(x, proxy, color="tab:orange", marker="s", label="proxy score (what PPO optimises)")
        twin.set_ylabel("proxy score", color="tab:orange")
        extra = twin.get_legend_handles_labels()
        lines = (lines[0] + extra[0], lines[1] + extra[1])
    ax.legend(*lines, loc="lower right", fontsize=8)
    ax.set_title("Over-optimisation: gold vs proxy (labels: PPO step)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
