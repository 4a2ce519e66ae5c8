"""A length constraint: "write 4 words : sun" → four words, the first of them the given one.

Gold (gold.py:length): 1 when the response has exactly the asked number of words and starts with the
given word; 0.5 when only the count is right; 0 otherwise. Demonstrations miss the count by one 30% of
the time; rankings of 3 candidates (counts N, N±1, N±2 around the asked N) are ordered by the gold
score, ties by closeness of the count, adjacent pairs swapped 10% of the time.

    python -m bench.tasks <dir> length
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import Agreement, ranked, task_overrides, write_files

WORDS = ["sun", "moon", "star", "tree", "rock", "bird", "fish", "cloud", "rain", "snow", "wind", "leaf"]

GOLD = '''
def length(prompts, responses, n, first, **fields):
    """1: exactly n words, starting with `first`; 0.5: n words; 0: otherwise."""
    out = []
    for r, k, w in zip(responses, n, first):
        words = r.split()
        out.append(0.0 if len(words) != int(k) else (1.0 if words[0] == w else 0.5))
    return out
'''


def score(response: str, n: int, first: str) -> float:
    words = response.split()
    return 0.0 if len(words) != n else (1.0 if words[0] == first else 0.5)


def write_task(root: Path, n_sft: int = 4000, n_rankings: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> dict:
        n, first = rng.randint(2, 7), rng.choice(WORDS)
        return {"prompt": f"write {n} words : {first}", "n": n, "first": first}

    def words(k: int, first: str) -> str:
        return " ".join([first] + [rng.choice(WORDS) for _ in range(max(0, k - 1))])

    sft = []
    for _ in range(n_sft):
        it = item()
        k = it["n"] + (rng.choice((-1, 1)) if rng.random() < 0.3 else 0)
        sft.append({**it, "response": words(max(1, k), it["first"])})
    rankings, agreement = [], Agreement()
    for _ in range(n_rankings):
        it = item()
        cands = [words(max(1, it["n"] + d), it["first"] if rng.random() < 0.8 else rng.choice(WORDS))
                 for d in (0, rng.choice((-1, 1)), rng.choice((-2, 2)))]
        order = ranked(cands, lambda c, it=it: score(c, it["n"], it["first"]) - 0.01 * abs(len(c.split()) - it["n"]),
                       rng, 0.1)
        if len(order) >= 2:
            rankings.append({"prompt": it["prompt"], "responses": order})
            agreement.add(order, lambda c, it=it: score(c, it["n"], it["first"]))
    return write_files(root, sft, rankings, [item() for _ in range(n_prompts)], [item() for _ in range(n_eval)], GOLD,
                       agreement)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "length")
