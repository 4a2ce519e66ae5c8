"""A style with no single keyword to latch onto: "describe : the sea" → four adjectives, as many of
them as possible from a formal register ("serene vast radiant noble") rather than a casual one
("nice big cool fun"), each formal word counted once.

Gold (gold.py:formal): the number of distinct formal words among the response's words, over the
larger of 4 and its length (a repeated formal word earns nothing more; extra words dilute). Each of
twelve formal words is worth a twelfth of the style: no one word carries it. Demonstrations draw each
adjective from either register at even odds; rankings of 3 candidates (0-4 formal words, one of them
sometimes repeating a formal word) are ordered by the gold score, adjacent pairs swapped 10% of the time.

    python -m bench.tasks <dir> style
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import labelled_task, task_overrides

FORMAL = ["splendid", "serene", "vast", "ancient", "graceful", "radiant", "noble", "tranquil", "majestic",
          "elegant", "gentle", "vivid"]
CASUAL = ["nice", "cool", "big", "old", "fun", "neat", "good", "pretty", "fine", "great", "sweet", "okay"]
TOPICS = ["the sea", "a forest", "the city", "a river", "the sky", "a garden", "the hills", "a lake"]

GOLD = '''
FORMAL = {"splendid", "serene", "vast", "ancient", "graceful", "radiant", "noble", "tranquil", "majestic",
          "elegant", "gentle", "vivid"}


def formal(prompts, responses, **fields):
    """Distinct formal words among the response's words, over max(4, its length)."""
    return [len(FORMAL & set(r.split())) / max(4, len(r.split())) for r in responses]
'''


def score(response: str) -> float:
    words = response.split()
    return len(set(FORMAL) & set(words)) / max(4, len(words))


def adjectives(rng, n_formal: int, repeat: bool = False) -> str:
    words = rng.sample(FORMAL, n_formal) + rng.sample(CASUAL, 4 - n_formal)
    rng.shuffle(words)
    if repeat and n_formal:
        words = [words[0]] * 4 if words[0] in FORMAL else [w for w in words if w in FORMAL][:1] * 4
    return " ".join(words)


def write_task(root: Path, n_sft: int = 4000, n_rankings: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> dict:
        return {"prompt": f"describe : {rng.choice(TOPICS)}"}

    def candidates(it: dict) -> list[str]:
        return [adjectives(rng, rng.randint(0, 4), repeat=i == 0 and rng.random() < 0.3) for i in range(3)]

    return labelled_task(root, rng, item, lambda it: adjectives(rng, sum(rng.random() < 0.5 for _ in range(4))),
                         candidates, lambda c: score(c), GOLD, n_sft, n_rankings, n_prompts, n_eval)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "formal")
