"""Content copied from the prompt: "repeat : moon fish red boat" → "moon fish red boat".

Gold (gold.py:copied): the share of the prompt's words in their place in the response, over the longer
of the two (a dropped, swapped, changed or extra word costs). Demonstrations slip once (a word dropped,
changed, or two swapped) 30% of the time; rankings of 3 candidates (exact, one slip, two slips) are
ordered by the gold score, adjacent pairs swapped 10% of the time.

    python -m bench.tasks <dir> copying
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import labelled_task, positions_right, task_overrides

WORDS = ["sun", "moon", "star", "tree", "rock", "bird", "fish", "cloud", "rain", "snow", "wind", "leaf", "red",
         "blue", "green", "gold", "cat", "dog", "car", "boat"]

GOLD = '''
def copied(prompts, responses, text, **fields):
    """The share of `text`'s words in their place in the response, over the longer of the two."""
    out = []
    for r, t in zip(responses, text):
        words, target = r.split(), t.split()
        out.append(sum(a == b for a, b in zip(words, target)) / max(len(words), len(target), 1))
    return out
'''


def score(response: str, text: str) -> float:
    return positions_right(response, text.split())


def slip(words: list[str], rng) -> list[str]:
    """One mistake: a word dropped, changed, or swapped with its neighbour."""
    words, i = list(words), rng.randrange(len(words) - 1)
    kind = rng.choice(("drop", "change", "swap"))
    if kind == "drop":
        del words[i]
    elif kind == "change":
        words[i] = rng.choice([w for w in WORDS if w != words[i]])
    else:
        words[i], words[i + 1] = words[i + 1], words[i]
    return words


def write_task(root: Path, n_sft: int = 4000, n_rankings: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> dict:
        text = " ".join(rng.sample(WORDS, rng.randint(4, 7)))
        return {"prompt": f"repeat : {text}", "text": text}

    def demonstrate(it: dict) -> str:
        words = it["text"].split()
        return " ".join(slip(words, rng) if rng.random() < 0.3 else words)

    def candidates(it: dict) -> list[str]:
        words = it["text"].split()
        return [" ".join(words), " ".join(slip(words, rng)), " ".join(slip(slip(words, rng), rng))]

    return labelled_task(root, rng, item, demonstrate, candidates, score, GOLD, n_sft, n_rankings, n_prompts, n_eval)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "copied")
