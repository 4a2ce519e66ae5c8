"""Why a PPO run's exported policy ends below its best held-out evaluation, read off its saved samples.

A run ends "below its best" (the issue's export criterion, #27) when its exported policy's gold is more than one
standard error under its best evaluation's. For each such run of a sweep (`<out>/<task>/sweep.json`, keys
SETTING/sSEED/STEPS) this prints, prompt by prompt over the held-out samples (`<run>/ppo/samples/step-N.jsonl`, or
the digest of them bench/keep_results.py keeps):

- the gold of the exported step and of the gold's best step, and their paired difference ± its standard error;
- the held-out objective (score − β·KL, the only measure the export reads) at the gold's best step minus the
  exported step's, ± its standard error, and the step where the objective was highest.

Where the objective is highest at the exported step, no rule reading the objective could have exported the gold's
best: what remains is the reward model's disagreement with the gold, or the evaluation's noise, not the export.

    python bench/below_best.py --out runs/r33 --tasks notes arithmetic style --runs r32-rm-min10-seed4/s4/300
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_evaluations import per_prompt_evaluations  # noqa: E402
from rlhf.algo.selection import paired_gain  # noqa: E402


def explain(run_dir: Path) -> dict | None:
    """The exported step's shortfall against the gold's best step (None when it is within one standard error)."""
    result = json.loads((run_dir / "ppo" / "result.json").read_text())
    evals = {int(s): e for s, e in result["evaluations"].items()}
    exported = int(result.get("exported_step") or max(evals))
    best = max(evals, key=lambda s: evals[s]["eval/gold_score"])  # the first of equals
    if evals[exported]["eval/gold_score"] >= evals[best]["eval/gold_score"] - evals[best]["eval/gold_stderr"]:
        return None
    per_prompt = per_prompt_evaluations(run_dir)
    if per_prompt is None:
        raise SystemExit(f"{run_dir}/ppo/samples: the samples carry no score or KL to read the objective from")
    objectives = {s: e["objective"] for s, e in per_prompt.items()}
    gold = paired_gain(per_prompt[best]["gold"], per_prompt[exported]["gold"])
    objective = paired_gain(objectives[best], objectives[exported])
    highest = max((s for s in objectives if s > 0), key=lambda s: statistics.fmean(objectives[s]))
    return {"exported": exported, "best": best, "gold_exported": evals[exported]["eval/gold_score"],
            "gold_best": evals[best]["eval/gold_score"], "gold_best_stderr": evals[best]["eval/gold_stderr"],
            "gold_gap": gold, "objective_gap": objective, "highest_objective": highest}


def table(out: Path, tasks: list[str], runs: list[str]) -> str:
    lines = ["| task | run | exported step: gold | gold's best step: gold ± s.e. | paired gold gap | objective at the "
             "best − exported | objective highest at |", "| --- " * 7 + "|"]
    for task in tasks:
        recorded = json.loads((out / task / "sweep.json").read_text())
        for key in runs:
            if key not in recorded:
                raise SystemExit(f"{out / task / 'sweep.json'}: no run {key}")
            label, seed, steps = key.split("/")
            why = explain(out / task / f"sweep-{label}-{seed}-{steps}")
            if why is None:
                continue
            lines.append(f"| {task} | {key} | {why['exported']}: {why['gold_exported']:.3f} | {why['best']}: "
                         f"{why['gold_best']:.3f} ± {why['gold_best_stderr']:.3f} | "
                         f"{why['gold_gap'].mean:+.4f} ± {why['gold_gap'].stderr:.4f} | "
                         f"{why['objective_gap'].mean:+.4f} ± {why['objective_gap'].stderr:.4f} | "
                         f"{why['highest_objective']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a sweep's --out (its runs' samples are read)")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="sweep.json keys, e.g. r32-rm-min10-seed4/s4/300")
    args = parser.parse_args(argv)
    print(table(args.out, args.tasks, args.runs))


if __name__ == "__main__":
    main()
