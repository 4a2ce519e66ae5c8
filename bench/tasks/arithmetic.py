"""A second task, of another kind than the embedded list task: sums checked by a program.

"23 + 7 =" → "30". The demonstrations are wrong 30% of the time (off by 1 to 3, as a hurried
labeller's slips); the comparisons are pairs (the right sum against a near miss) whose order is
flipped 10% of the time; the gold function is an exact checker of the `answer` field. Written in the
user file formats, read through the same CLI a user would use:

    python -m bench.tasks.arithmetic <dir>      # sft.jsonl, comparisons.jsonl, prompts.jsonl, eval.jsonl, gold.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

GOLD = '''
def exact(prompts, responses, answer, **fields):
    """1 when the response is exactly the sum, else 0."""
    return [float(r.strip() == str(a)) for r, a in zip(responses, answer)]
'''


def write_task(root: Path, n_sft: int = 4000, n_pairs: int = 3000, n_prompts: int = 2000, n_eval: int = 200,
               high: int = 10, seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    def item() -> tuple[str, int]:
        a, b = rng.randrange(high), rng.randrange(high)
        return f"{a} + {b} =", a + b

    def slip(answer: int) -> int:
        return max(0, answer + rng.choice((-3, -2, -1, 1, 2, 3)))

    def write(name: str, rows: list[dict]) -> Path:
        with open(root / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return root / name

    sft = []
    for _ in range(n_sft):
        p, ans = item()
        sft.append({"prompt": p, "response": str(slip(ans) if rng.random() < 0.3 else ans)})
    pairs = []
    for _ in range(n_pairs):
        p, ans = item()
        good, bad = str(ans), str(slip(ans))
        if bad == good:
            continue
        if rng.random() < 0.1:
            good, bad = bad, good  # label noise
        pairs.append({"prompt": p, "chosen": good, "rejected": bad})
    (root / "gold.py").write_text(GOLD)
    return {"sft": write("sft.jsonl", sft), "comparisons": write("comparisons.jsonl", pairs),
            "prompts": write("prompts.jsonl", [{"prompt": p, "answer": a} for p, a in
                                               (item() for _ in range(n_prompts))]),
            "eval": write("eval.jsonl", [{"prompt": p, "answer": a} for p, a in (item() for _ in range(n_eval))]),
            "gold": root / "gold.py"}


def overrides(root: Path) -> list[str]:
    """The task's files and model as `instructrl` overrides."""
    return [f"sft.train_data={root}/sft.jsonl", f"rm.train_data={root}/comparisons.jsonl",
            f"ppo.prompts={root}/prompts.jsonl", f"ppo.eval_prompts={root}/eval.jsonl",
            f"evaluation.gold_function={root}/gold.py:exact", "model.bpe_vocab=320"]


if __name__ == "__main__":
    for name, path in write_task(Path(sys.argv[1])).items():
        print(f"{name}: {path}")
