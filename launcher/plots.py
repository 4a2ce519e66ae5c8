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


def plot_overoptimization(evaluations: dict[int, dict[str, float]], path: Path,
                          round_of: dict[int, int] | None = None) -> Path:
    """Write the plot as a PNG (matplotlib, no display needed); returns its path. With `round_of` (step →
    round, launcher/rounds.py) each round's evaluations are drawn in a colour of their own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(s for s, m in evaluations.items() if "eval/kl" in m and "eval/gold_score" in m)
    x = [math.sqrt(max(evaluations[s]["eval/kl"], 0.0)) for s in steps]
    gold = [evaluations[s]["eval/gold_score"] for s in steps]
    err = [evaluations[s].get("eval/gold_stderr", 0.0) for s in steps]
    proxy = [evaluations[s].get("eval/score") for s in steps]
    # One panel each: the two scores have different units, and twin axes would suggest comparing levels.
    rows = 2 if all(p is not None for p in proxy) else 1
    fig, axes = plt.subplots(rows, 1, sharex=True, figsize=(6.4, 2.4 + 2.2 * rows), dpi=120, squeeze=False)
    top, ax = axes[0][0], axes[-1][0]
    groups = sorted({round_of[s] for s in steps}) if round_of else [None]
    for n, group in enumerate(groups):
        at = [i for i, s in enumerate(steps) if group is None or round_of[s] == group]
        pick = lambda values, at=at: [values[i] for i in at]  # noqa: E731
        label = f"round {group}" if group is not None else None
        if rows == 2:  # a round's proxy is its own reward model's: levels differ between rounds
            top.plot(pick(x), pick(proxy), color="tab:orange" if group is None else f"C{n}", marker="s", label=label)
        ax.errorbar(pick(x), pick(gold), yerr=pick(err), color="tab:blue" if group is None else f"C{n}", marker="o",
                    capsize=3, label=label)
    if round_of:
        ax.legend(fontsize=7)
    if rows == 2:
        top.set_ylabel("proxy score\n(what PPO optimises)")
        for s, xi, yi in zip(steps, x, proxy, strict=True):
            top.annotate(str(s), (xi, yi), textcoords="offset points", xytext=(3, 5), fontsize=7)
    ax.set_ylabel("gold score (± 1 s.e.)")
    for s, xi, yi in zip(steps, x, gold, strict=True):
        ax.annotate(str(s), (xi, yi), textcoords="offset points", xytext=(3, 5), fontsize=7)
    ax.set_xlabel("√KL(policy ‖ start), nats^½ per sequence")
    top.set_title("Over-optimisation: proxy and gold score against √KL (labels: PPO step)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
