"""A finished PPO run's held-out evaluations read back for the suite's bench scripts: each evaluation's per-prompt
objective (score − β·KL) and gold, off the run's saved samples or the digest bench/keep_results.py keeps of them;
ppo.export's rules, and candidates for it, applied again to them (--export-rule of bench/sweep_defaults.py,
bench/tail_average.py, bench/read_patience.py, bench/below_best.py). Reads files; runs nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf.algo.selection import earliest_within_noise, last_unless_beaten, objective_of, per_prompt_means  # noqa: E402

# ppo.export's rules, and candidates for it, read off a finished run's saved evaluations (--export-rule)
EXPORT_RULES = {"objective": lambda objectives: last_unless_beaten(objectives)[0], "earliest": earliest_within_noise}


def gap_closed(start: float, gold: float) -> float:
    """The share of the gap between the SFT policy's gold and a perfect 1.0 that `gold` closes."""
    return (gold - start) / (1.0 - start) if start < 1 else float("nan")


DIGEST = "evaluations.json"  # <run>/ppo/: each evaluation's per-prompt objective and gold, kept for its samples


def per_prompt_evaluations(run_dir: Path) -> dict[int, dict[str, list[float]]] | None:
    """Each evaluation's per-prompt objective (score − β·KL) and gold, by step, read off the run's saved samples
    (<run>/ppo/samples/step-N.jsonl), or where those are gone off the digest bench/keep_results.py kept of them
    (<run>/ppo/evaluations.json); None where the samples lack a score or a KL."""
    ppo = run_dir / "ppo"
    if not (ppo / "samples").is_dir() and (ppo / DIGEST).exists():
        return {int(s): e for s, e in json.loads((ppo / DIGEST).read_text()).items()}
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    beta, samples = cfg["ppo"]["kl_coef"], cfg["evaluation"]["samples_per_prompt"]
    out = {}
    for step in json.loads((ppo / "result.json").read_text())["evaluations"]:
        rows = [json.loads(line) for line in (ppo / "samples" / f"step-{step}.jsonl").read_text().splitlines()]
        objective = objective_of(rows, beta, samples)
        if objective is None:
            return None
        out[int(step)] = {"objective": objective, "gold": per_prompt_means([r["gold"] for r in rows], samples)}
    return out


def run_objectives(run_dir: Path) -> tuple[dict[int, list[float]] | None, dict[str, dict]]:
    """A finished run's per-prompt objective (score − β·KL) at each evaluation (per_prompt_evaluations; None where
    its samples lack a score or a KL), and its evaluations' metrics."""
    evals = json.loads((run_dir / "ppo" / "result.json").read_text())["evaluations"]
    per_prompt = per_prompt_evaluations(run_dir)
    return (None if per_prompt is None else {s: e["objective"] for s, e in per_prompt.items()}), evals


def reexport(run_dir: Path, run: dict, rule: str) -> dict:
    """`run` (its sweep.json entry) as if its PPO stage had exported by `rule` (EXPORT_RULES): the gold of the
    evaluation the rule picks from each evaluation's per-prompt score − β·KL (per_prompt_evaluations: the run's saved
    samples or their kept digest). The gold picks nothing; a run whose samples lack a score or KL is as it ran."""
    objectives, evals = run_objectives(run_dir)
    if objectives is None:
        return run
    step = EXPORT_RULES[rule](objectives)
    chosen = evals[str(step)]
    return run | {"gold": chosen["eval/gold_score"], "stderr": chosen["eval/gold_stderr"], "kl": chosen["eval/kl"],
                  "closed": gap_closed(run["sft"], chosen["eval/gold_score"]), "exported_step": step}
