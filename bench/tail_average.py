"""Averages of a finished PPO run's last policy checkpoints, evaluated as the run evaluates (#27's export criterion).

A run whose policy wobbles on a plateau ends below its best evaluation when the best of its evaluations caught a
high point of the wobble. Averaging the weights of the run's last checkpoints (Izmailov et al. 2018) removes the
wobble. For each run (`<out>/<task>/sweep.json`, keys SETTING/sSEED/STEPS; run with `ppo.save_every` equal to
`ppo.eval_every` and `run.save_total_limit=0`, as the settings `r36-snapshots-seed<k>` do) this averages the
policy's weights over the last n checkpoints (uniform, n from --windows; 1 is the last policy itself) and
evaluates each average on the run's held-out prompts with the run's own judges: its reward model (normalised and
clipped as the run did), its reference (the KL) and its gold, with the run's evaluation seed, so the last policy's
evaluation repeats the run's own. It prints each average's gold against the run's best evaluation (the criterion:
within one standard error of it), and its held-out objective (score − β·KL, what `ppo.export` reads) against the
last policy's, prompt by prompt. Then, in sweep_defaults' tables, each window as `ppo.average_last` would have ended the
run (with `ppo.average_span=1`: the default span, the last quarter, holds 4 evaluations of a 300-step run; its export
included), and with --held-out the window chosen leave-one-task-out. With --fresh K, the issue's
export criterion read without its selection's bias (docs/results.md, "The export criterion read without its
selection's bias"): the best of 13 evaluations was chosen on its own samples, so each window's exported policy and
its best evaluation's policy are evaluated again under K sampling seeds no run uses (FRESH_SEED on), and the run is
below its best when the export's pooled gold is lower than the best's by more than one of the best's fresh standard
errors. With --export-rule earliest each window's run ends by the one-standard-error rule instead of
ppo.export=objective (read off the run's samples or their kept digest). What a run's reading needs is cached as
<run>/ppo/tail_average.json, which bench/keep_results.py keeps: the tables print from the kept copy.

    python bench/tail_average.py --out runs/r33 --tasks notes --runs r36-snapshots-seed4/s4/300 --windows 1 2 4 7
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_evaluations import EXPORT_RULES, gap_closed, run_objectives  # noqa: E402
from bench.sweep_defaults import held_out_table  # noqa: E402
from bench.sweep_defaults import table as sweep_table  # noqa: E402
from rlhf.algo.averaging import mean_state  # noqa: E402
from rlhf.algo.selection import (  # noqa: E402
    Gain,
    paired_gain,
    per_prompt_means,
    per_prompt_objective,
)

RANK_FILE = "rank-00000.safetensors"
FRESH_SEED = 1001  # the first sampling seed of a fresh reading (runs sample with run.seed, 0 by default)


def snapshots(run_dir: Path) -> dict[int, Path]:
    """The policy weights of each kept checkpoint by step (one-rank runs: a checkpoint of several ranks holds
    shards, which this does not merge)."""
    out = {}
    for d in (run_dir / "ppo").glob("checkpoint-*"):
        files = sorted((d / "policy").glob("rank-*.safetensors"))
        if [f.name for f in files] != [RANK_FILE]:
            raise SystemExit(f"{d}/policy: {len(files)} rank files; this reads one-rank runs only")
        out[int(d.name.split("-")[1])] = files[0]
    return dict(sorted(out.items()))


def write_average(run_dir: Path, steps: list[int], files: dict[int, Path], path: Path) -> Path:
    """The average of the policy's checkpoints at `steps` as an HF checkpoint at `path`."""
    from models.hf import load_pretrained, save_pretrained

    model = load_pretrained(run_dir / "ppo" / "policy")  # for its config
    return save_pretrained(model, path, state=mean_state([load_file(files[s]) for s in steps]))


class RunJudges:
    """A finished run's held-out prompts and judges, rebuilt from its config.yaml."""

    def __init__(self, run_dir: Path):
        import yaml

        from launcher.config import Config
        from launcher.worker_group import LocalGroup
        from models.tokenizer import load_tokenizer
        from parallel.engine import EngineConfig
        from parallel.host import ModelSource
        from rlhf.chat import render_prompts
        from rlhf.data import DataConfig, load_prompts
        from rlhf.evaluate import Judges
        from rlhf.functions import TaskFunction
        from rlhf.reward_model import read_reward_stats
        from rlhf.scoring import RewardWorker
        from rlhf.workers import ReferenceWorker

        self.cfg = cfg = Config.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
        p = cfg.ppo
        if p.reward_functions or p.reward_model is None or cfg.evaluation.gold_function is None:
            raise SystemExit(f"{run_dir}: this reads runs scored by a reward model alone, with a gold function")
        self.tok = load_tokenizer(run_dir / "tokenizer")
        self.prompts = render_prompts(self.tok, load_prompts(p.eval_prompts, DataConfig()))
        stats = read_reward_stats(p.reward_model) if p.normalize_scores else None
        self.judges = Judges(gold=TaskFunction(cfg.evaluation.gold_function.resolved(ROOT), ROOT),
                             reward=LocalGroup(RewardWorker, ModelSource(path=p.reward_model), EngineConfig()),
                             reference=LocalGroup(ReferenceWorker, ModelSource(path=p.policy_init), EngineConfig()),
                             weights=p.score_weights, rm_stats=stats, clip=p.score_clip,
                             missing_eos_score=p.missing_eos_score)

    def evaluate(self, policy_dir: Path, seeds: list[int] | None = None):
        """The policy at `policy_dir` evaluated under each of `seeds` (default: the run's own evaluation seed)."""
        from launcher.worker_group import LocalGroup
        from parallel.engine import EngineConfig
        from parallel.host import ModelSource
        from rlhf.evaluate import evaluate_policy
        from rlhf.workers import PolicyWorker

        policy = LocalGroup(PolicyWorker, ModelSource(path=str(policy_dir)), EngineConfig())
        return [evaluate_policy(policy, self.tok, self.prompts, self.cfg.evaluation, self.judges, seed)
                for seed in (seeds if seeds is not None else [self.cfg.run.seed])]


def read_run(run_dir: Path, windows: list[int]) -> dict:
    """Each window's average evaluated, against the run's own evaluations."""
    result = json.loads((run_dir / "ppo" / "result.json").read_text())
    evals = {int(s): e for s, e in result["evaluations"].items()}
    best = max((s for s in evals if s > 0), key=lambda s: evals[s]["eval/gold_score"])
    files = snapshots(run_dir)
    last = max(evals)
    if last not in files:
        raise SystemExit(f"{run_dir}/ppo/checkpoint-{last}: the last policy's checkpoint is not kept")
    judges = RunJudges(run_dir)
    samples, beta = judges.cfg.evaluation.samples_per_prompt, judges.cfg.ppo.kl_coef
    rows = {}
    for n in windows:
        steps = sorted(files)[-n:]
        if len(steps) < n or (n > 1 and any(s not in evals for s in steps)):
            raise SystemExit(f"{run_dir}: {n} checkpoints at evaluation steps asked for, kept: {sorted(files)}")
        [ev] = judges.evaluate(write_average(run_dir, steps, files, run_dir / "ppo" / f"average-{n}"))
        gold = per_prompt_means([r["gold"] for r in ev.rows], samples)
        objective = per_prompt_objective([r["score"] for r in ev.rows], [r["kl"] for r in ev.rows], beta, samples)
        rows[n] = {"steps": steps, "gold": ev.gold.mean, "gold_stderr": ev.gold.stderr, "kl": ev.metrics["eval/kl"],
                   "per_prompt_gold": gold, "per_prompt_objective": objective}
    one = rows.get(1)
    for r in rows.values():
        r["objective"] = statistics.fmean(r["per_prompt_objective"])
        if one is not None:
            r["gold_gain"] = dataclasses.asdict(paired_gain(r["per_prompt_gold"], one["per_prompt_gold"]))
            r["objective_gain"] = dataclasses.asdict(paired_gain(r["per_prompt_objective"],
                                                                  one["per_prompt_objective"]))
    return {"best_step": best, "best_gold": evals[best]["eval/gold_score"],
            "best_stderr": evals[best]["eval/gold_stderr"], "run_last_gold": evals[last]["eval/gold_score"],
            "windows": {n: {k: v for k, v in r.items() if k != "per_prompt_gold"} for n, r in rows.items()}}


def as_exported(run_dir: Path, read: dict, rule: str = "objective") -> dict[int, dict]:
    """Each window's run as `ppo.average_last=n ppo.average_span=1` would have ended it, in sweep.json's fields: the
    average evaluated as the last step's evaluation, and ppo.export=objective weighing its objective against every
    earlier evaluation's (rlhf/algo/selection.last_unless_beaten; or another of run_evaluations.EXPORT_RULES); the best
    evaluation is the best of the run's earlier evaluations and the average's."""
    objectives, evals = run_objectives(run_dir)
    if objectives is None:
        raise SystemExit(f"{run_dir}/ppo/samples: the samples carry no score or KL to read the objective from")
    last, sft = max(objectives), evals["0"]["eval/gold_score"]
    out = {}
    for n, w in read["windows"].items():
        golds = {int(s): (e["eval/gold_score"], e["eval/gold_stderr"], e["eval/kl"]) for s, e in evals.items()}
        golds[last] = (w["gold"], w["gold_stderr"], w["kl"])
        step = EXPORT_RULES[rule](objectives | {last: w["per_prompt_objective"]})
        peak = max((s for s in golds if s > 0), key=lambda s: golds[s][0])
        out[n] = {"gold": golds[step][0], "stderr": golds[step][1], "kl": golds[step][2], "sft": sft,
                  "closed": gap_closed(sft, golds[step][0]), "peak": golds[peak][0], "peak_stderr": golds[peak][1],
                  "exported_step": step, "peak_step": peak}
    return out


def policy_of(read: dict, n: int, step: int) -> tuple[str, list[int]]:
    """The policy window n's run holds at evaluation `step`, by label, and the checkpoint steps it averages: the
    average at the last step, else that step's own checkpoint."""
    steps = read["windows"][n]["steps"]
    return (f"average-{n}", steps) if step == steps[-1] else (f"step-{step}", [step])


def fresh_policies(read: dict) -> dict[str, list[int]]:
    """The policies a fresh reading evaluates: each window's export and its best evaluation's, where they differ."""
    out = {}
    for n, e in read["exported"].items():
        if e["exported_step"] != e["peak_step"]:
            out.update(policy_of(read, int(n), s) for s in (e["exported_step"], e["peak_step"]))
    return out


def read_fresh(run_dir: Path, read: dict, k: int) -> bool:
    """Evaluates under seeds FRESH_SEED … FRESH_SEED + k − 1 each policy of fresh_policies not yet read so, into
    read["fresh"] (label → pooled per-prompt gold, its mean and the mean of the k standard errors); True if any was."""
    seeds, fresh = list(range(FRESH_SEED, FRESH_SEED + k)), read.setdefault("fresh", {})
    todo = {label: steps for label, steps in fresh_policies(read).items() if fresh.get(label, {}).get("seeds") != seeds}
    if not todo:
        return False
    judges, files = RunJudges(run_dir), snapshots(run_dir)
    samples = judges.cfg.evaluation.samples_per_prompt
    for label, steps in todo.items():
        evs = judges.evaluate(write_average(run_dir, steps, files, run_dir / "ppo" / "fresh" / label), seeds)
        pooled = [statistics.fmean(p) for p in zip(*(per_prompt_means([r["gold"] for r in ev.rows], samples)
                                                     for ev in evs), strict=True)]
        fresh[label] = {"seeds": seeds, "steps": steps, "gold": statistics.fmean(pooled),
                        "stderr": statistics.fmean(ev.gold.stderr for ev in evs), "per_prompt_gold": pooled}
    return True


def fresh_verdict(best: dict, exported: dict) -> tuple[Gain, bool]:
    """The export against its run's best evaluation, both read afresh: best − export, prompt by prompt over the
    pooled seeds, and whether it exceeds one evaluation's standard error (the best policy's, over the fresh seeds)."""
    gap = paired_gain(best["per_prompt_gold"], exported["per_prompt_gold"])
    return gap, gap.mean > best["stderr"]


def fresh_table(read: dict[str, dict]) -> str:
    """Each run whose export is not its best evaluation, in-run and afresh, then the count below their best by
    window in either reading."""
    lines = ["| run | window | exported · best evaluation | in-run: best − export (one s.e.) | fresh: best − export "
             "± s.e. (one s.e.) | below its best: in-run · fresh |", "| --- | --- | --- | --- | --- | --- |"]
    counts: dict[int, list[int]] = {}
    for name, r in read.items():
        for n, e in sorted((int(n), e) for n, e in r["exported"].items()):
            inrun = e["gold"] < e["peak"] - e["peak_stderr"]
            count = counts.setdefault(n, [0, 0, 0])
            count[2] += 1
            if e["exported_step"] == e["peak_step"]:
                continue
            (exported, _), (best, _) = (policy_of(r, n, e[k]) for k in ("exported_step", "peak_step"))
            gap, below = fresh_verdict(r["fresh"][best], r["fresh"][exported])
            count[0] += inrun
            count[1] += below
            lines.append(f"| {name} | {n} | {exported} · {best} | {e['peak'] - e['gold']:+.4f} "
                         f"({e['peak_stderr']:.4f}) | {gap.mean:+.4f} ± {gap.stderr:.4f} "
                         f"({r['fresh'][best]['stderr']:.4f}) | "
                         f"{'yes' if inrun else 'no'} · {'yes' if below else 'no'} |")
    lines += ["", "| window | runs below their best: in-run | fresh |", "| --- | --- | --- |"]
    lines += [f"| {n} | {c[0]} of {c[2]} | {c[1]} of {c[2]} |" for n, c in sorted(counts.items())]
    return "\n".join(lines)


def gain(g: dict | None) -> str:
    return f"{g['mean']:+.4f} ± {g['stderr']:.4f}" if g else ""


def table(read: dict[str, dict]) -> str:
    lines = ["| run | best evaluation: step, gold ± s.e. | average of | steps | gold · KL | within a s.e. of the "
             "best | gold − last's | objective − last's |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in read.items():
        floor = r["best_gold"] - r["best_stderr"]
        for n, w in r["windows"].items():
            lines.append(f"| {name} | {r['best_step']}: {r['best_gold']:.3f} ± {r['best_stderr']:.3f} | {n} | "
                         f"{w['steps'][0]}–{w['steps'][-1]} | {w['gold']:.3f} · {w['kl']:.2f} | "
                         f"{'yes' if w['gold'] >= floor else 'no'} | {gain(w.get('gold_gain') if n != 1 else None)} | "
                         f"{gain(w.get('objective_gain') if n != 1 else None)} |")
    return "\n".join(lines)


def family(setting: str) -> str:
    """A sweep setting without its draw: r36-snapshots-seed1 → r36-snapshots."""
    return re.sub(r"-seed\d+$", "", setting)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the sweep's directory (<out>/<task>/sweep.json)")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="sweep keys, SETTING/sSEED/STEPS")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4, 7],
                        help="how many of the last checkpoints each average takes (1: the last policy)")
    parser.add_argument("--held-out", action="store_true",
                        help="also the window chosen leave-one-task-out, and what it gives on each task")
    parser.add_argument("--fresh", type=int, default=0, metavar="K",
                        help="also the export criterion read afresh: each export and best evaluation under K new seeds")
    parser.add_argument("--export-rule", choices=EXPORT_RULES, default="objective",
                        help="the export rule each window's run ends with (other than ppo.export=objective: read off "
                             "the run's samples, or the digest of them bench/keep_results.py keeps)")
    args = parser.parse_args()
    read, per_task = {}, {}
    suffix = "" if args.export_rule == "objective" else f"-{args.export_rule}"
    families = list(dict.fromkeys(family(key.split("/")[0]) for key in args.runs))

    def label(setting: str, n: int) -> str:  # a table's row: the window, and the setting where runs of several are read
        return f"average-{n}{suffix}" if len(families) == 1 else f"{family(setting)} average-{n}{suffix}"

    for task in args.tasks:
        for key in args.runs:
            setting, seed, steps = key.split("/")
            run_dir = args.out / task / f"sweep-{setting}-{seed}-{steps}"
            sweep = args.out / task / "sweep.json"
            if not sweep.exists() or key not in json.loads(sweep.read_text()):  # not run, or not finished
                continue
            cache = run_dir / "ppo" / "tail_average.json"
            cached = json.loads(cache.read_text()) if cache.exists() else {}
            cached["windows"] = {int(n): w for n, w in cached.get("windows", {}).items()}
            if not set(args.windows) <= set(cached["windows"]) or "exported" not in cached:
                cached = read_run(run_dir, sorted(set(args.windows) | set(cached["windows"])))
                cached["exported"] = as_exported(run_dir, cached)
                cache.write_text(json.dumps(cached, indent=1))
            if args.fresh and any("peak_step" not in e for e in cached["exported"].values()):  # read before it
                cached["exported"] = as_exported(run_dir, cached)
                cache.write_text(json.dumps(cached, indent=1))
            exported = cached["exported"] if args.export_rule == "objective" else \
                as_exported(run_dir, cached, args.export_rule)  # from the run's samples or their kept digest
            read[f"{task} {key}"] = view = cached | {  # the windows asked for, of those read
                "windows": {n: cached["windows"][n] for n in args.windows},
                "exported": {n: e for n, e in exported.items() if int(n) in args.windows},
                "fresh": cached.setdefault("fresh", {})}
            if args.fresh and read_fresh(run_dir, view, args.fresh):  # into the cache's "fresh"
                cache.write_text(json.dumps(cached, indent=1))
            for n, entry in view["exported"].items():
                per_task.setdefault(task, {})[f"{label(setting, n)}/{seed}/{steps}"] = entry
    print(table(read))
    labels = [label(f, n) for f in families for n in args.windows]
    steps = int(args.runs[0].split("/")[2])
    print()
    print(sweep_table(per_task, labels, steps))
    if args.held_out:
        print()
        print(held_out_table(per_task, labels, steps))
    if args.fresh:
        print()
        print(fresh_table(read))

if __name__ == "__main__":
    main()
