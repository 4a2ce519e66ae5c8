"""What every suite task shares: the user file formats it is written in, and the overrides that point
`instructrl` at them (docs/data.md).

A task directory holds sft.jsonl (demonstrations: prompt, response), comparisons.jsonl (rankings:
prompt, responses best first; or chosen/rejected pairs), prompts.jsonl and eval.jsonl (PPO and
held-out prompts with the fields the gold function reads) and gold.py (the programmatic labeller).
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


class Agreement:
    """How often the labelled order of two responses agrees with the gold labeller's (pairs the gold
    scores alike are left out): the ceiling of any reward model's held-out accuracy on these labels."""

    def __init__(self):
        self.agree = self.pairs = 0

    def add(self, best_first: list[str], gold) -> None:
        for better, worse in combinations(best_first, 2):
            a, b = gold(better), gold(worse)
            if a != b:
                self.pairs += 1
                self.agree += a > b

    @property
    def accuracy(self) -> float:
        return self.agree / max(1, self.pairs)


def write_files(root: Path, sft: list[dict], comparisons: list[dict], prompts: list[dict], eval_prompts: list[dict],
                gold_code: str, agreement: Agreement) -> dict[str, Path]:
    """The task's files under root, and labels.json: the labels' agreement with the gold labeller."""
    (root / "gold.py").parent.mkdir(parents=True, exist_ok=True)
    (root / "gold.py").write_text(gold_code)
    (root / "labels.json").write_text(json.dumps({"label_accuracy": agreement.accuracy, "pairs": agreement.pairs}))
    return {"sft": write_jsonl(root / "sft.jsonl", sft), "comparisons": write_jsonl(root / "comparisons.jsonl",
                                                                                    comparisons),
            "prompts": write_jsonl(root / "prompts.jsonl", prompts), "eval": write_jsonl(root / "eval.jsonl",
                                                                                           eval_prompts),
            "gold": root / "gold.py"}


def task_overrides(root: Path, gold: str, bpe_vocab: int = 320) -> list[str]:
    """The files as `instructrl` overrides; `gold` names the function in gold.py."""
    return [f"sft.train_data={root}/sft.jsonl", f"rm.train_data={root}/comparisons.jsonl",
            f"ppo.prompts={root}/prompts.jsonl", f"ppo.eval_prompts={root}/eval.jsonl",
            f"evaluation.gold_function={root}/gold.py:{gold}", f"model.bpe_vocab={bpe_vocab}"]


def ranked(candidates: list[str], score, rng, flip: float) -> list[str]:
    """Candidates best first by `score` (distinct responses only), with each adjacent pair swapped with
    probability `flip`: a labelling team's occasional disagreement."""
    order = sorted(dict.fromkeys(candidates), key=lambda c: -score(c))
    for i in range(len(order) - 1):
        if rng.random() < flip:
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


def labelled_task(root: Path, rng, item, demonstrate, candidates, score, gold_code: str, n_sft: int,
                  n_rankings: int, n_prompts: int, n_eval: int, flip: float = 0.1) -> dict[str, Path]:
    """A task's files from its parts: `item()` draws a prompt with its fields ({"prompt": ..., field: ...});
    `demonstrate(item)` writes a (noisy) demonstration; `candidates(item)` the responses a labelling team
    ranks, by `score(response, **fields)` with adjacent pairs swapped with probability `flip`. Every
    record keeps its item's fields, the demonstrations too (so their own gold can be measured)."""
    def fields(it: dict) -> dict:
        return {k: v for k, v in it.items() if k != "prompt"}

    sft = [{**it, "response": demonstrate(it)} for it in (item() for _ in range(n_sft))]
    rankings, agreement = [], Agreement()
    for _ in range(n_rankings):
        it = item()
        judge = lambda c, it=it: score(c, **fields(it))  # noqa: E731
        order = ranked(candidates(it), judge, rng, flip)
        if len(order) >= 2:
            rankings.append({"prompt": it["prompt"], "responses": order})
            agreement.add(order, judge)
    return write_files(root, sft, rankings, [item() for _ in range(n_prompts)], [item() for _ in range(n_eval)],
                       gold_code, agreement)


def positions_right(response: str, target: list[str]) -> float:
    """The share of the target's words in their place, over the longer of the two (extra words cost)."""
    words = response.split()
    return sum(a == b for a, b in zip(words, target, strict=False)) / max(len(words), len(target), 1)
