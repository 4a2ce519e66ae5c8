"""Words that must and must not appear: "use red , not blue : the cat" → a short phrase about the
subject that contains "red" and never "blue".

Gold (gold.py:keywords): 0.5 for the required word present + 0.5 for the forbidden word absent.
Demonstrations break one of the two rules 30% of the time; comparisons are pairs (a phrase that keeps
both rules against one that breaks one), the order flipped 10% of the time.

    python -m bench.tasks <dir> keywords
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import Agreement, task_overrides, write_files

COLOURS = ["red", "blue", "green", "black", "white", "gold", "grey", "pink"]
SUBJECTS = ["the cat", "the dog", "a car", "the house", "a boat", "the hat", "a box", "the door"]
FILLER = ["is", "very", "small", "big", "old", "new", "and", "quite"]

GOLD = '''
def keywords(prompts, responses, must, never, **fields):
    """0.5 for `must` among the words, + 0.5 for `never` not among them."""
    return [0.5 * (m in r.split()) + 0.5 * (v not in r.split()) for r, m, v in zip(responses, must, never)]
'''


def score(response: str, must: str, never: str) -> float:
    words = response.split()
    return 0.5 * (must in words) + 0.5 * (never not in words)


def write_task(root: Path, n_sft: int = 4000, n_pairs: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> dict:
        must, never = rng.sample(COLOURS, 2)
        subject = rng.choice(SUBJECTS)
        return {"prompt": f"use {must} , not {never} : {subject}", "must": must, "never": never,
                "subject": subject}

    def phrase(it: dict, keep: bool) -> str:
        colour = it["must"]
        extra = []
        if not keep:  # break one rule: leave out the required word, or add the forbidden one
            if rng.random() < 0.5:
                colour = rng.choice([c for c in COLOURS if c not in (it["must"], it["never"])])
            else:
                extra = [it["never"]]
        words = [it["subject"], rng.choice(FILLER), colour, *extra]
        return " ".join(words)

    sft = [{**it, "response": phrase(it, rng.random() >= 0.3)} for it in
           (item() for _ in range(n_sft))]
    pairs, agreement = [], Agreement()
    for _ in range(n_pairs):
        it = item()
        good, bad = phrase(it, True), phrase(it, False)
        if rng.random() < 0.1:
            good, bad = bad, good
        pairs.append({"prompt": it["prompt"], "chosen": good, "rejected": bad})
        agreement.add([good, bad], lambda r, it=it: score(r, it["must"], it["never"]))
    return write_files(root, sft, pairs, [item() for _ in range(n_prompts)], [item() for _ in range(n_eval)], GOLD,
                       agreement)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "keywords")
