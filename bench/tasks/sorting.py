"""Sorting from scarce demonstrations: "sort : 14 3 9 0 11" → "0 3 9 11 14". The start far below the
demonstrations (#27): 400 demonstrations, nearly always right, against 3,000 rankings, as when
demonstrations are the expensive label (InstructGPT had 13k SFT prompts and 33k ranked). With 4,000
demonstrations a converged SFT policy sampled 0.949 against their 0.959; with 400 it samples about 0.59
against 0.96: it drops, repeats and invents numbers.

Gold (gold.py:sorted_share): the share of the sorted numbers in their place, over the longer of the
response and the list. Demonstrations swap one adjacent pair 10% of the time. Rankings of 5 candidates
(sorted, one adjacent swap, one number dropped, one number changed to one not in the list, the list as
given: the kinds of slip such a policy makes, as when labellers rank its own samples) are ordered by the
gold score, adjacent pairs swapped 10% of the time.

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


def drop(xs: list[int], rng) -> list[int]:
    xs = list(xs)
    del xs[rng.randrange(len(xs))]
    return xs


def change(xs: list[int], rng) -> list[int]:
    xs, i = list(xs), rng.randrange(len(xs))
    xs[i] = rng.choice([x for x in range(20) if x not in xs])
    return xs


def write_task(root: Path, n_sft: int = 400, n_rankings: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
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
                         lambda it: [text(ordered(it)), text(swap(ordered(it), rng)), text(drop(ordered(it), rng)),
                                    text(change(ordered(it), rng)), it["numbers"]],
                         score, GOLD, n_sft, n_rankings, n_prompts, n_eval)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "sorted_share")
