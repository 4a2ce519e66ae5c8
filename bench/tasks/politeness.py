"""A tone preference: "ask : open the door" → "please open the door , thank you".

Gold (gold.py:polite): a third each for opening politely ("please" or "kindly"), stating the request
(its words in order), and closing with thanks ("thank you" or "thanks"); 0 when the reply is rude
("now", "hurry", "quick"). Demonstrations are curt or rude 30% of the time; rankings of 3 candidates
are ordered by the gold score, adjacent pairs swapped 10% of the time.

    python -m bench.tasks <dir> politeness
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import Agreement, ranked, task_overrides, write_files

VERBS = ["open", "close", "bring", "move", "clean", "check", "find", "fix"]
OBJECTS = ["the door", "the box", "a chair", "the window", "the lamp", "a book", "the bag", "the key"]
RUDE = ("now", "hurry", "quick")

GOLD = '''
def polite(prompts, responses, request, **fields):
    """(opens with please/kindly + states the request + closes with thanks) / 3; 0 if rude."""
    out = []
    for r, q in zip(responses, request):
        words = r.split()
        if any(w in ("now", "hurry", "quick") for w in words):
            out.append(0.0)
            continue
        opens = bool(words) and words[0] in ("please", "kindly")
        closes = r.endswith("thank you") or r.endswith("thanks")
        out.append((opens + (q in r) + closes) / 3)
    return out
'''


def score(response: str, request: str) -> float:
    words = response.split()
    if any(w in RUDE for w in words):
        return 0.0
    opens = bool(words) and words[0] in ("please", "kindly")
    closes = response.endswith("thank you") or response.endswith("thanks")
    return (opens + (request in response) + closes) / 3


def write_task(root: Path, n_sft: int = 4000, n_rankings: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> dict:
        request = f"{rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        return {"prompt": f"ask : {request}", "request": request}

    def reply(request: str, quality: str) -> str:
        if quality == "polite":
            return f"{rng.choice(('please', 'kindly'))} {request} , {rng.choice(('thank you', 'thanks'))}"
        if quality == "curt":  # one polite part missing
            return rng.choice((f"please {request}", f"{request} , thanks"))
        return f"{request} {rng.choice(RUDE)}"

    sft = []
    for _ in range(n_sft):
        it = item()
        quality = "polite" if rng.random() >= 0.3 else rng.choice(("curt", "rude"))
        sft.append({**it, "response": reply(it["request"], quality)})
    rankings, agreement = [], Agreement()
    for _ in range(n_rankings):
        it = item()
        cands = [reply(it["request"], q) for q in ("polite", "curt", "rude")]
        order = ranked(cands, lambda c, it=it: score(c, it["request"]), rng, 0.1)
        if len(order) >= 2:
            rankings.append({"prompt": it["prompt"], "responses": order})
            agreement.add(order, lambda c, it=it: score(c, it["request"]))
    return write_files(root, sft, rankings, [item() for _ in range(n_prompts)], [item() for _ in range(n_eval)], GOLD,
                       agreement)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "polite")
