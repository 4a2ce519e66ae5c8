"""Long responses: "count from 17 , 26 numbers" → "17 18 19 … 42" (26 to 30 numbers: 24 or more tokens, a slip too).

Gold (gold.py:counted): the share of the numbers in their place, over the longer of the response and
the count (a skipped or repeated number shifts everything after it; stopping early or late costs).
Demonstrations slip once (a number skipped or repeated, or the count one or two short) 30% of the time;
rankings of 3 candidates (exact, a slip, two slips) are ordered by the gold score, adjacent pairs
swapped 10% of the time. The task's responses need more room than the demo config gives: its overrides
raise the lengths.

    python -m bench.tasks <dir> counting
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import labelled_task, positions_right, task_overrides

GOLD = '''
def counted(prompts, responses, start, n, **fields):
    """The share of start, start+1, … (n numbers) in their place, over the longer of the two."""
    out = []
    for r, s, k in zip(responses, start, n):
        words, target = r.split(), [str(x) for x in range(int(s), int(s) + int(k))]
        out.append(sum(a == b for a, b in zip(words, target)) / max(len(words), len(target)))
    return out
'''
LENGTHS = ["ppo.max_new_tokens=72", "evaluation.max_new_tokens=72", "ppo.max_prompt_len=16",
           "evaluation.max_prompt_len=16", "sft.max_len=96", "rm.max_len=96", "dpo.max_len=96"]


def score(response: str, start: int, n: int) -> float:
    return positions_right(response, [str(x) for x in range(start, start + n)])


def slip(numbers: list[int], rng) -> list[int]:
    numbers, i = list(numbers), rng.randrange(1, len(numbers) - 1)
    kind = rng.choice(("skip", "repeat", "short"))
    if kind == "skip":
        return numbers[:i] + numbers[i + 1:]
    if kind == "repeat":
        return numbers[:i] + [numbers[i]] + numbers[i:]
    return numbers[:-rng.choice((1, 2))]


def write_task(root: Path, n_sft: int = 4000, n_rankings: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> dict:
        start, n = rng.randint(1, 30), rng.randint(26, 30)
        return {"prompt": f"count from {start} , {n} numbers", "start": start, "n": n}

    def numbers(it: dict) -> list[int]:
        return list(range(it["start"], it["start"] + it["n"]))

    def text(xs: list[int]) -> str:
        return " ".join(map(str, xs))

    return labelled_task(root, rng, item,
                         lambda it: text(slip(numbers(it), rng) if rng.random() < 0.3 else numbers(it)),
                         lambda it: [text(numbers(it)), text(slip(numbers(it), rng)),
                                     text(slip(slip(numbers(it), rng), rng))],
                         score, GOLD, n_sft, n_rankings, n_prompts, n_eval)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "counted") + LENGTHS
