"""Which evaluation a finished PPO run would export under each judge of its objective, read off its
held-out samples (<run>/ppo/samples/step-N.jsonl): the score PPO trained against (each row's "score"),
and another reward model's (a validation reward model, `rm.validation`), both less β × each sample's KL
and compared as ppo.export compares them (rlhf/algo/selection.py). The gold, where the rows carry it,
says what each choice is worth; it decides nothing.

    python bench/export_judges.py <other reward model> <run dir> [<run dir> ...]

The other reward model's score is normalised by its reward_stats.json and clipped as the run's config
says; a response the run scored as cut off (ppo.missing_eos_score) keeps that score. The responses are
re-tokenised from their text, so the scores can differ slightly from a live run's (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.probe_rm import load_rm, score  # noqa: E402
from models.tokenizer import load_tokenizer  # noqa: E402
from rlhf.algo.selection import last_unless_beaten, per_prompt_means, per_prompt_objective, stderr  # noqa: E402
from rlhf.reward_model import read_reward_stats  # noqa: E402


def evaluations(run: Path) -> dict[int, list[dict]]:
    files = (run / "ppo" / "samples").glob("step-*.jsonl")
    return {int(f.stem.split("-")[1]): [json.loads(line) for line in f.read_text().splitlines()]
            for f in sorted(files, key=lambda f: int(f.stem.split("-")[1]))}


def choose(objective: dict[int, list[float]]) -> tuple[int, float, float]:
    """ppo.export=objective's choice: the step exported, and the best earlier evaluation's gain ± s.e."""
    step, gain = last_unless_beaten(objective)
    return (step, gain.mean, gain.stderr) if gain else (step, 0.0, 0.0)


def judge(run: Path, rm_dir: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    p, samples = cfg["ppo"], cfg["evaluation"]["samples_per_prompt"]
    tok, model, stats = load_tokenizer(rm_dir), load_rm(rm_dir), read_reward_stats(rm_dir)
    clip, cut = p["score_clip"], p["missing_eos_score"]
    evals = evaluations(run)
    trained, other, gold = {}, {}, {}
    for step, rows in evals.items():
        kls = [r["kl"] for r in rows]
        judged = []
        for r in rows:
            if cut is not None and r["score"] == cut:
                judged.append(cut)
                continue
            value = (score(model, tok, r["prompt"], r["response"]) - stats["mean"]) / stats["std"]
            judged.append(p["reward_model_weight"] * (max(-clip, min(clip, value)) if clip else value))
        trained[step] = per_prompt_objective([r["score"] for r in rows], kls, p["kl_coef"], samples)
        other[step] = per_prompt_objective(judged, kls, p["kl_coef"], samples)
        if "gold" in rows[0]:
            per_prompt = per_prompt_means([r["gold"] for r in rows], samples)
            gold[step] = (statistics.fmean(per_prompt), stderr(per_prompt))
    return {"trained": choose(trained), "other": choose(other), "gold": gold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rm", type=Path, help="the other reward model (with its tokenizer and reward_stats.json)")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories holding ppo/samples and config.yaml")
    args = parser.parse_args()
    if any(p["reward_functions"] for p in (yaml.safe_load((r / "config.yaml").read_text())["ppo"] for r in args.runs)):
        raise SystemExit("a run with reward functions: this script judges the reward model's part only")
    print("| run | trained-against judge: step · gold | other judge: step · gold (gain ± s.e.) | best evaluation |")
    print("| --- | --- | --- | --- |")
    for run in args.runs:
        out = judge(run, args.rm)
        print(row(run, out["trained"], out["other"], out["gold"]), flush=True)


def row(run: Path, trained: tuple, other: tuple, gold: dict[int, tuple[float, float]]) -> str:
    def cell(choice: tuple) -> str:
        return f"{choice[0]}" + (f" · {gold[choice[0]][0]:.3f}" if gold else "")

    best = max(gold, key=lambda s: gold[s][0]) if gold else None
    peak = f"{gold[best][0]:.3f} ± {gold[best][1]:.3f} (step {best})" if gold else "–"
    return f"| {run} | {cell(trained)} | {cell(other)} ({other[1]:.4f} ± {other[2]:.4f}) | {peak} |"

if __name__ == "__main__":
    main()
