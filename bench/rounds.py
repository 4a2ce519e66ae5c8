"""Rounds against one round at an equal label budget (#29): on a suite task, a simulated labelling team
ranks K samples per prompt of the policy; one round labels all its prompts on the SFT policy's samples
up front, N rounds label a share each on the policy of their time. Both from the task's SFT policy
(<out>/<task>/base, trained by bench/sweep_defaults.py), the same PPO steps in all, the reward models
judged on the same held-out rankings (the last 150 of the task's own). The prompts labelled are the
task's PPO prompts, which carry the fields its gold reads.

    python bench/rounds.py --out runs/r6 --tasks keywords arithmetic --arms 1 3 3-continue

The team (<out>/<task>/rounds/labeller.py): the task's gold score of every response, adjacent score
levels swapped with probability 0.1, as in the task's own rankings (bench/tasks/common.py `ranked`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare_algorithms import DEMO, Task, cli  # noqa: E402

LABELLER = '''"""A simulated labelling team: the task's gold score of each response, adjacent score levels swapped
with probability FLIP (seeded by the prompt and its responses)."""
import importlib.util
import json
import random
import zlib
from pathlib import Path

__version__ = "team-flip-{flip}"
FLIP = {flip}
_spec = importlib.util.spec_from_file_location("task_gold", Path(__file__).resolve().parents[1] / "task" / "gold.py")
_gold = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gold)
GOLD = getattr(_gold, "{name}")


def team(prompts, responses, **fields):
    out = []
    for i, (prompt, group) in enumerate(zip(prompts, responses)):
        one = {{k: [v[i]] * len(group) for k, v in fields.items()}}
        scores = GOLD([prompt] * len(group), group, **one)
        levels = sorted(set(scores), reverse=True)
        rng = random.Random(zlib.crc32(json.dumps([prompt, group]).encode()))
        for j in range(len(levels) - 1):
            if rng.random() < FLIP:
                levels[j], levels[j + 1] = levels[j + 1], levels[j]
        place = {{level: -n for n, level in enumerate(levels)}}
        out.append([place[s] for s in scores])
    return out
'''
HELD_OUT = 150  # the task's last rankings: every arm's reward models are judged on them


def prepare(task: Task, flip: float = 0.1) -> Path:
    """The team's labeller file, the prompt pool (the task's PPO prompts: they carry the fields the gold
    reads, which its rankings need not) and the held-out rankings, under <out>/<task>/rounds."""
    root = task.out / "rounds"
    root.mkdir(parents=True, exist_ok=True)
    name = task.gold().rpartition(":")[2]
    (root / "labeller.py").write_text(LABELLER.format(flip=flip, name=name))
    rows = [json.loads(line) for line in (task.out / "task" / "comparisons.jsonl").read_text().splitlines()]
    (root / "held_out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-HELD_OUT:]))
    return root


def run_arm(task: Task, arm: str, labels: int, steps: int, k: int, seed: int = 0) -> dict:
    """One arm: "<n>" rounds, or "<n>-continue" (each round's reward model from the one before)."""
    rounds = int(arm.split("-")[0])
    root = prepare(task)
    name = f"rounds-{arm}-{labels}" + (f"-s{seed}" if seed else "")
    files = [o for o in task.files() if not o.startswith(("sft.", "rm.train_data=", "rm.eval_data="))]
    extra = ["rm.rounds_init=continue"] if arm.endswith("-continue") else []
    wall = cli(["pipeline", *DEMO, f"run.out_dir={task.out}", f"run.name={name}", "run.overwrite=true", *files,
                f"ppo.policy_init={task.base}/sft", f"rm.init={task.base}/sft", f"rm.eval_data={root}/held_out.jsonl",
                f"sample.prompts={task.out}/task/prompts.jsonl", f"sample.limit={labels // rounds}", f"sample.k={k}",
                f"rm.labeller={root}/labeller.py:team", f"run.rounds={rounds}", f"ppo.steps={steps}", *extra,
                f"ppo.seed={seed}", f"rm.seed={seed}", f"sample.seed={seed}", f"run.seed={seed}"],
               task.out / f"{name}.log")
    summary = json.loads((task.out / name / "summary.json").read_text())
    return {"rounds": summary["rounds"], "wall_s": wall, "labels": labels, "steps": steps, "seed": seed}


def table(results: dict[str, dict[str, dict]]) -> str:
    lines = ["| task | arm | round | comparisons so far | RM held-out accuracy | gold at the round's end | KL |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for task, arms in results.items():
        for arm, r in arms.items():
            for x in r["rounds"]:
                gold = f"{x['gold']:.3f} ± {x['gold_stderr']:.3f}"
                lines.append(f"| {task} | {arm} | {x['round']} | {x['comparisons_so_far']} | "
                             f"{x['rm_eval_accuracy']:.3f} | {gold} | {x['kl']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/r6")
    parser.add_argument("--tasks", nargs="+", default=["keywords", "arithmetic"])
    parser.add_argument("--arms", nargs="+", default=["1", "3"])
    parser.add_argument("--labels", type=int, default=1500, help="prompts labelled in all (K responses each)")
    parser.add_argument("--steps", type=int, default=150, help="PPO steps in all")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of sampling, the RM and PPO")
    parser.add_argument("--table", action="store_true", help="print the saved results; run nothing")
    args = parser.parse_args()
    results = {}
    for name in args.tasks:
        task = Task(name, (ROOT / args.out / name).resolve())
        saved = task.out / "rounds.json"
        done = json.loads(saved.read_text()) if saved.exists() else {}
        keys = [(arm, seed, arm if not seed else f"{arm}/s{seed}") for arm in args.arms for seed in args.seeds]
        for arm, seed, key in keys:
            if key not in done and not args.table:
                done[key] = run_arm(task, arm, args.labels, args.steps, args.k, seed)
                saved.write_text(json.dumps(done, indent=1))
        results[name] = {key: done[key] for _, _, key in keys if key in done}
    print(table(results))


if __name__ == "__main__":
    main()
