"""A second task, of another kind than the embedded list task: sums checked by a program.

"23 + 7 =" → "30". The demonstrations are wrong 30% of the time (off by 1 to 3, as a hurried
labeller's slips); the comparisons are pairs (the right sum against a near miss) whose order is
flipped 10% of the time; the gold function is an exact checker of the `answer` field. Written in the
user file formats, read through the same CLI a user would use:

    python -m bench.tasks <dir> arithmetic    # <dir>/arithmetic/: the four files and gold.py
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.tasks.common import Agreement, task_overrides, write_files

GOLD = '''
def exact(prompts, responses, answer, **fields):
    """1 when the response is exactly the sum, else 0."""
    return [float(r.strip() == str(a)) for r, a in zip(responses, answer)]
'''


def write_task(root: Path, n_sft: int = 4000, n_pairs: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               high: int = 10, seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)

    def item() -> tuple[str, int]:
        a, b = rng.randrange(high), rng.randrange(high)
        return f"{a} + {b} =", a + b

    def slip(answer: int) -> int:
        return max(0, answer + rng.choice((-3, -2, -1, 1, 2, 3)))

    sft = []
    for _ in range(n_sft):
        p, ans = item()
        sft.append({"prompt": p, "answer": ans, "response": str(slip(ans) if rng.random() < 0.3 else ans)})
    pairs, agreement = [], Agreement()
    for _ in range(n_pairs):
        p, ans = item()
        good, bad = str(ans), str(slip(ans))
        if bad == good:
            continue
        if rng.random() < 0.1:
            good, bad = bad, good  # label noise
        pairs.append({"prompt": p, "chosen": good, "rejected": bad})
        agreement.add([good, bad], lambda r, ans=ans: float(r == str(ans)))
    prompts = [{"prompt": p, "answer": a} for p, a in (item() for _ in range(n_prompts))]
    return write_files(root, sft, pairs, prompts, [{"prompt": p, "answer": a} for p, a in
                                                   (item() for _ in range(n_eval))], GOLD, agreement)


def overrides(root: Path) -> list[str]:
    """The task's files and model as `instructrl` overrides."""
    return task_overrides(root, "exact")
