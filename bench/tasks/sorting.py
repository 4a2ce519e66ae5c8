"""Sorting: "sort : 14 3 9 0 11" → "0 3 9 11 14". The demonstrations are nearly always right. Meant as a
start far below them; but an SFT policy trained to convergence samples 0.949 against their 0.959
(docs/results.md, fifth round), so the suite still lacks that kind of start.

Gold (gold.py:sorted_share): the share of the sorted numbers in their place, over the longer of the
response and the list. Demonstrations swap one adjacent pair 10% of the time; rankings of 3 candidates
(sorted, one adjacent swap, the list as given) are ordered by the gold score, adjacent pairs swapped 10%
of the time.

    python -m bench.tasks <dir> sorting
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import labelled_task, positions_right, task_overrides

GOLD = '''
def sorted_share(prompts, responses, numbers, **fields):
    """The share of sorted(numbers) in their place, over the longer of the two."""
    out = []
    for r, xs in zip(responses, numbers):
        words, target = r.split(), [str(x) for x in sorted(int(x) for x in xs.split())]
        out.append(sum(a == b for a, b in zip(words, target)) / max(len(words), len(target)))
    return out
'''


def score(response: str, numbers: str) -> float:
    return positions_right(response, [str(x) for x in sorted(int(x) for x in numbers.split())])


def swap(xs: list[int], rng) -> list[int]:
    xs, i = list(xs), rng.randrange(len(xs) - 1)
    xs[i], xs[i + 1] = xs[i + 1], xs[i]
    return xs


def write_task(root: Path, n_sft: int = 4000, n_rankings: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> dict:
        numbers = " ".join(map(str, rng.sample(range(20), rng.randint(4, 7))))
        return {"prompt": f"sort : {numbers}", "numbers": numbers}

    def text(xs: list[int]) -> str:
        return " ".join(map(str, xs))

    def ordered(it: dict) -> list[int]:
        return sorted(int(x) for x in it["numbers"].split())

    return labelled_task(root, rng, item,
                         lambda it: text(swap(ordered(it), rng) if rng.random() < 0.1 else ordered(it)),
                         lambda it: [text(ordered(it)), text(swap(ordered(it), rng)), it["numbers"]],
                         score, GOLD, n_sft, n_rankings, n_prompts, n_eval)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "sorted_share")
