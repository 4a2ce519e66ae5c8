"""A multi-turn conversation (#28): the user states two to four facts, one a turn, each acknowledged;
the last turn asks for one of them, and the reply must name it: the answer depends on an earlier turn.

    user: my colour is red          assistant: noted
    user: my pet is a fish          assistant: noted
    user: what is my colour ?       assistant: red

Every file is in chat records (docs/data.md, "Conversations"): SFT conversations, comparisons of
replies to a conversation (K = 3, best first), prompts as conversations with the asked slot's value.
Gold (gold.py:recalled): 1 for the asked value, 0.5 for the value of another slot the user stated (a
fact from the conversation, the wrong one), 0 otherwise; it reads the conversation it is given and
checks that the value is in it. Demonstrations give another stated value 30% of the time; rankings of
3 replies (the value, another stated one, one never said) ordered by the gold score, adjacent pairs
swapped 10% of the time.

    python -m bench.tasks <dir> recall
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import Agreement, ranked, task_overrides, write_files

SLOTS = {"colour": ["red", "blue", "green", "gold", "grey", "pink"], "pet": ["cat", "dog", "fish", "bird", "frog"],
         "city": ["rome", "oslo", "lima", "kyiv", "cairo"], "food": ["rice", "soup", "bread", "cake", "pasta"],
         "number": ["three", "seven", "nine", "twelve", "forty"]}

# Conversations of up to 4 facts are up to about 60 tokens before the reply: room for all of them (the demo
# config's 16-token prompts would keep only the question, and the policy could not know the answer)
LENGTHS = ["sft.max_len=72", "rm.max_len=72", "dpo.max_len=72", "ppo.max_prompt_len=64", "evaluation.max_prompt_len=64",
           "ppo.max_new_tokens=6", "evaluation.max_new_tokens=6"]

GOLD = '''
def recalled(prompts, responses, value, **fields):
    """1 for the asked value, 0.5 for another value the user stated in the conversation, else 0."""
    out = []
    for conversation, r, v in zip(prompts, responses, value):
        stated = [m["content"].split()[-1] for m in conversation
                  if m["role"] == "user" and m["content"].startswith("my ")]
        out.append(1.0 if r.strip() == v else 0.5 if r.strip() in stated else 0.0)
    return out
'''


def score(response: str, value: str, stated: list[str]) -> float:
    """As gold.py, from the item's fields (`stated`: the values of the slots not asked)."""
    return 1.0 if response.strip() == value else 0.5 if response.strip() in stated else 0.0


def write_task(root: Path, n_sft: int = 4000, n_rankings: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> dict:
        slots = rng.sample(list(SLOTS), rng.randint(2, 4))
        values = {s: rng.choice(SLOTS[s]) for s in slots}
        turns = []
        for s in slots:
            turns += [{"role": "user", "content": f"my {s} is {values[s]}"}, {"role": "assistant", "content": "noted"}]
        asked = rng.choice(slots)
        turns.append({"role": "user", "content": f"what is my {asked} ?"})
        return {"prompt": turns, "value": values[asked], "stated": [values[s] for s in slots if s != asked],
                "asked": asked}

    def never_said(it: dict) -> str:
        return rng.choice([v for v in SLOTS[it["asked"]] if v != it["value"]])

    def reply(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    sft = []
    for _ in range(n_sft):
        it = item()
        answer = rng.choice(it["stated"]) if rng.random() < 0.3 else it["value"]
        sft.append({"messages": it["prompt"] + reply(answer), "value": it["value"]})
    rankings, agreement = [], Agreement()
    for _ in range(n_rankings):
        it = item()
        judge = lambda c, it=it: score(c, it["value"], it["stated"])  # noqa: E731
        order = ranked([it["value"], rng.choice(it["stated"]), never_said(it)], judge, rng, 0.1)
        rankings.append({"prompt": it["prompt"], "responses": [reply(r) for r in order]})
        agreement.add(order, judge)

    def prompt(it: dict) -> dict:
        return {"prompt": it["prompt"], "value": it["value"]}

    return write_files(root, sft, rankings, [prompt(item()) for _ in range(n_prompts)],
                       [prompt(item()) for _ in range(n_eval)], GOLD, agreement)


def overrides(root: Path) -> list[str]:
    return task_overrides(root, "recalled") + LENGTHS
