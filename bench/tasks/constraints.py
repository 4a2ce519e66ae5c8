"""Several independent constraints in one response: "note on tea , 4 words , no red" → four words that
name the topic and never the colour, e.g. "tea is warm green".

Gold (gold.py:constraints): a third for each constraint kept: the topic among the words, exactly the
asked number of words, the forbidden colour absent. Demonstrations break each constraint independently
25% of the time; rankings of 4 candidates, each breaking each constraint with probability 1/2, are
ordered by the gold score (ties in drawn order), adjacent pairs swapped 10% of the time.

    python -m bench.tasks <dir> constraints
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import labelled_task, task_overrides

TOPICS = ["fish", "bread", "rain", "music", "tea", "snow", "books", "trees"]
FILLER = ["is", "good", "very", "warm", "and", "we", "like", "old", "new", "soft", "fresh", "small"]
COLOURS = ["red", "blue", "green", "black"]

GOLD = '''
def constraints(prompts, responses, topic, n, avoid, **fields):
    """(topic among the words + exactly n words + `avoid` absent) / 3."""
    out = []
    for r, t, k, a in zip(responses, topic, n, avoid):
        words = r.split()
        out.append(((t in words) + (len(words) == int(k)) + (a not in words)) / 3)
    return out
'''


def score(response: str, topic: str, n: int, avoid: str) -> float:
    words = response.split()
    return ((topic in words) + (len(words) == n) + (avoid not in words)) / 3


def note(it: dict, rng, p_break: float) -> str:
    """A note that breaks each of the three constraints with probability p_break."""
    n = it["n"] + (rng.choice((-1, 1)) if rng.random() < p_break else 0)
    words = [rng.choice(FILLER + [c for c in COLOURS if c != it["avoid"]]) for _ in range(max(1, n))]
    if rng.random() >= p_break:
        words[rng.randrange(len(words))] = it["topic"]
    if rng.random() < p_break:
        words[rng.randrange(len(words))] = it["avoid"]
    return " ".join(words)


def write_task(root: Path, n_sft: int = 4000, n_rankings: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> dict:
        topic, n, avoid = rng.choice(TOPICS), rng.randint(3, 6), rng.choice(COLOURS)
        return {"prompt": f"note on {topic} , {n} words , no {avoid}", "topic": topic, "n": n, "avoid": avoid}

    return labelled_task(root, rng, item, lambda it: note(it, rng, 0.25), lambda it: [note(it, rng, 0.5)
                                                                                       for _ in range(4)],
                         score, GOLD, n_sft, n_rankings, n_prompts, n_eval)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "constraints")
