"""Sweeps of the PPO defaults across the task suite, seeds included: for each setting, task and seed
the held-out gold score, the share of the gap between the SFT policy and a perfect 1.0 it closes,
and the KL to the SFT policy (docs/results.md, issue #17).

Every run goes through the CLI from the task's SFT policy and reward model (trained once per task by
bench/compare_algorithms.py's `ensure_base`, under <out>/<task>/base), with the setting's overrides
on top of the demo config and `ppo.seed` set to the seed (the settings by name: bench/sweep_settings.py).
Results accumulate in <out>/<task>/sweep.json; a run already there is not repeated.

    python bench/sweep_defaults.py --tasks suite --settings defaults defaults-beta-0.3 --seeds 0 1
    python bench/sweep_defaults.py --tasks suite --table     # print what is saved
    python bench/sweep_defaults.py --rm --tasks suite --settings rm-defaults rm-epochs-5 --seeds 0 1
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import statistics
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare_algorithms import DEMO, Task, cli, ensure_base, rl_run  # noqa: E402
from bench.run_evaluations import EXPORT_RULES, gap_closed, reexport  # noqa: E402
from bench.sweep_settings import ENSEMBLES, RM_SETTINGS, SETTINGS  # noqa: E402
from bench.tasks import SUITE  # noqa: E402


def accumulate(task: Task, file: str, base: tuple[str, ...], jobs) -> dict:
    """Run each (key, job) of `jobs` whose key <out>/<task>/<file> does not hold yet (after the task's
    SFT policy and reward model exist), saving after each; job() returns (result, one line to print).
    The file is read again before each save, so sweeps of other seeds running beside this one keep
    their results."""
    saved = task.out / file

    def load() -> dict:
        return json.loads(saved.read_text()) if saved.exists() else {}

    results = load()
    ensure_base(task, base)
    for key, job in jobs:
        if key in results:
            continue
        result, line = job()
        results = save_result(task.out, file, key, result)
        print(f"{task.name} {key}: {line}", flush=True)
    return results


def save_result(out: Path, file: str, key: str, result: dict) -> dict:
    """Add key → result to <out>/<file> and return all it holds. Two sweeps finishing at once would each write
    what it read: the file is read, added to and written under one lock."""
    saved = out / file
    with (out / f"{file}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = (json.loads(saved.read_text()) if saved.exists() else {}) | {key: result}
        saved.write_text(json.dumps(results, indent=1))
    return results


def rm_run(task: Task, label: str, seed: int) -> tuple[dict, str]:
    name = f"sweep-{label}-s{seed}"
    wall = cli(["rm", *DEMO, f"run.out_dir={task.out}", f"run.name={name}", "run.overwrite=true", *task.files(),
                f"rm.init={task.base}/sft", f"run.seed={seed}", f"rm.seed={seed}", *RM_SETTINGS[label]],
               task.out / f"{name}.log")
    m = json.loads((task.out / name / "rm" / "result.json").read_text())
    result = {"accuracy": m["eval/accuracy"], "loss": m["eval/loss"], "wall_s": wall,
              "rm_prefers_longer": m.get("eval/length/rm_prefers_longer"),
              "labels_prefer_longer": m.get("eval/length/labels_prefer_longer"),
              "off_prompt_accuracy": m.get("eval/off_prompt_accuracy"),
              "ceiling": task.label_accuracy(), "overrides": RM_SETTINGS[label]}
    return result, (f"held-out accuracy {m['eval/accuracy']:.3f} (ceiling {task.label_accuracy():.3f}), "
                    f"loss {m['eval/loss']:.3f}, off-prompt pairs ranked right "
                    f"{m.get('eval/off_prompt_accuracy', float('nan')):.3f}")


def rm_sweep(task: Task, settings: list[str], seeds: list[int], base: tuple[str, ...] = ()) -> dict:
    return accumulate(task, "sweep_rm.json", base, ((f"{label}/s{seed}", partial(rm_run, task, label, seed))
                                                    for label in settings for seed in seeds))


def rm_table(per_task: dict[str, dict], settings: list[str]) -> str:
    tasks = list(per_task)
    lines = ["| reward-model setting | " + " | ".join(f"{t}: held-out accuracy (seeds)" for t in tasks) + " |",
             "| --- |" + " --- |" * len(tasks),
             "| the labels' own agreement (ceiling) | " + " | ".join(
                 f"{next(iter(per_task[t].values()))['ceiling']:.3f}" if per_task[t] else "–" for t in tasks) + " |"]
    for label in settings:
        cells = []
        for t in tasks:
            runs = [v["accuracy"] for k, v in per_task[t].items() if k.startswith(f"{label}/")]
            cells.append(f"{statistics.fmean(runs):.3f} ({', '.join(f'{a:.3f}' for a in runs)})" if runs else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setting_overrides(task: Task, label: str) -> list[str]:
    oracle = ["ppo.reward_model=null", f"ppo.reward_functions=['{task.gold()}']"] if label.endswith("oracle") else []
    return [o.format(out=task.out) for o in [*SETTINGS[label], *oracle]]  # {out}: the task's directory


def assemble_ensemble(task: Task, label: str) -> None:
    """The reward model and members of `label`'s ensemble (ENSEMBLES) in place; an error naming what to run
    where one was not trained."""
    if label not in ENSEMBLES:
        return
    target, first, others = ENSEMBLES[label]
    for source, dest in [(first, target), *((m, f"{target}/ensemble/{k}") for k, m in enumerate(others, start=1))]:
        if source is None or (task.out / dest).exists():
            continue
        if not (task.out / source / "reward_stats.json").exists():
            raise SystemExit(f"{task.out / source}: missing; train it first (bench/sweep_defaults.py --tasks "
                             f"{task.name} --rm --settings <its setting> --seeds <its seed>)")
        # a reward model's own members and validation model are not this ensemble's
        shutil.copytree(task.out / source, task.out / dest, ignore=shutil.ignore_patterns("ensemble", "validation"))


def ppo_run(task: Task, label: str, seed: int, steps: int) -> tuple[dict, str]:
    slug = f"sweep-{label}-s{seed}-{steps}"
    assemble_ensemble(task, label)
    r = rl_run(task, slug, steps, [*setting_overrides(task, label), f"ppo.seed={seed}"])
    start = r["start"]["eval/gold_score"]
    evals = json.loads((task.out / slug / "ppo" / "result.json").read_text())["evaluations"]
    peak = max(evals.values(), key=lambda e: e["eval/gold_score"])  # the run's best held-out evaluation
    result = {"gold": r["gold"], "stderr": r["stderr"], "kl": r["kl"], "sft": start,
              "closed": gap_closed(start, r["gold"]), "wall_s": r["wall_s"],
              "overrides": setting_overrides(task, label), "peak": peak["eval/gold_score"],
              "peak_stderr": peak["eval/gold_stderr"], "peak_kl": peak.get("eval/kl")}
    return result, (f"gold {r['gold']:.3f} ± {r['stderr']:.3f}, {100 * result['closed']:.0f}% of the gap, "
                    f"KL {r['kl']:.2f}; best evaluation {result['peak']:.3f}")


def sweep(task: Task, settings: list[str], seeds: list[int], steps: int, base: tuple[str, ...] = ()) -> dict:
    jobs = ((f"{label}/s{seed}/{steps}", partial(ppo_run, task, label, seed, steps))
            for label in settings for seed in seeds)
    return accumulate(task, "sweep.json", base, jobs)


def table(per_task: dict[str, dict], settings: list[str], steps: int) -> str:
    """One row per setting: per task the gap closed (mean over seeds, each seed in brackets) and KL; and
    how many of the setting's runs end more than one standard error below their best held-out evaluation."""
    tasks = list(per_task)
    lines = ["| setting | " + " | ".join(f"{t}: gap closed (seeds) · KL" for t in tasks) + " | below their best |",
             "| --- |" + " --- |" * (len(tasks) + 1)]
    for label in settings:
        cells, every = [], []
        for t in tasks:
            runs = runs_of(per_task[t], label, steps)
            every += [r for r in runs if "peak" in r]
            if not runs:
                cells.append("–")
                continue
            closed = [100 * r["closed"] for r in runs]
            each = ", ".join(f"{c:.0f}" for c in closed)
            cells.append(f"{statistics.fmean(closed):.0f}% ({each}) · {statistics.fmean(r['kl'] for r in runs):.2f}")
        below = sum(r["gold"] < r["peak"] - r["peak_stderr"] for r in every)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {below} of {len(every)} |")
    return "\n".join(lines)


def draw_labels(picks: list[str]) -> list[str]:
    """The virtual settings named by `picks`, in order: a pick "NAME=SETTING:SEED" belongs to NAME, a bare
    "SETTING:SEED" to "draws"."""
    return list(dict.fromkeys(pick.rpartition("=")[0] or "draws" for pick in picks))


def draws(runs: dict, picks: list[str], steps: int) -> dict:
    """Virtual settings from runs of several: each pick "SETTING:SEED" (e.g. seeds of the whole run, each PPO
    seed against its own reward model: r11-export:0 r18-rm-seed1:1) as that seed's run of the setting
    "draws", or of NAME for a pick "NAME=SETTING:SEED" (two candidates read on the same draws). A pick
    "SETTING:SEED@N" takes the run of N steps (a candidate of another budget), read as one of `steps`."""
    out = {}
    for pick in picks:
        label, _, pick = pick.rpartition("=")
        setting, seed = pick.rsplit(":", 1)
        seed, _, budget = seed.partition("@")
        key = f"{setting}/s{seed}/{budget or steps}"
        if key in runs:
            out[f"{label or 'draws'}/s{seed}/{steps}"] = runs[key]
    return out


def runs_of(runs: dict, label: str, steps: int) -> list[dict]:
    """The results of a task's runs under setting `label` at budget `steps` (keys SETTING/sSEED/STEPS), every seed."""
    return [v for k, v in runs.items() if k.startswith(f"{label}/") and k.endswith(f"/{steps}")]


def seed_mean(runs: dict, label: str, steps: int, key: str = "closed") -> float | None:
    values = [v[key] for v in runs_of(runs, label, steps)]
    return statistics.fmean(values) if values else None


def held_out_table(per_task: dict[str, dict], candidates: list[str], steps: int, bar: float = 0.5) -> str:
    """Leave one task out: for each task, the candidate setting with the highest mean gap closed on the
    *other* tasks, and what it gives on this one (mean over seeds): the figure that predicts a new
    user's task. A run 'keeps its gain' when its final gold is within one standard error of its best
    held-out evaluation."""
    lines = ["| task (held out) | setting chosen on the others | gap closed (seeds) | KL | final vs best evaluation |",
             "| --- | --- | --- | --- | --- |"]
    short = []
    def on_others(task: str, label: str) -> float:
        values = [seed_mean(per_task[t], label, steps) for t in per_task if t != task]
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else float("-inf")

    for task in per_task:
        chosen = max(candidates, key=partial(on_others, task))
        runs = runs_of(per_task[task], chosen, steps)
        if not runs:
            lines.append(f"| {task} | {chosen} | – | – | – |")
            short.append(task)
            continue
        closed = [r["closed"] for r in runs]
        kept = all(r["gold"] >= r["peak"] - r["peak_stderr"] for r in runs if "peak" in r)
        drops = ", ".join(f"{r['gold']:.3f} vs {r['peak']:.3f}" for r in runs if "peak" in r)
        if statistics.fmean(closed) < bar:
            short.append(task)
        lines.append(f"| {task} | {chosen} ({100 * on_others(task, chosen):.0f}% on the others) | "
                     f"{100 * statistics.fmean(closed):.0f}% ({', '.join(f'{100 * c:.0f}' for c in closed)}) | "
                     f"{statistics.fmean(r['kl'] for r in runs):.2f} | {drops} ({'kept' if kept else 'lost'}) |")
    verdict = "yes" if not short else f"no: {', '.join(short)} below"
    return "\n".join(lines) + f"\n\nheld out, PPO closes ≥ {100 * bar:.0f}% of the gap on every task: {verdict}"


def reward_models(task: Task, runs: list[dict]) -> list[Path]:
    """The reward model each run trained against (its last ppo.reward_model override, read under `task.out`,
    so that a kept copy of the results reads its own), the base's where a run names none; each once."""
    found = []
    for run in runs:
        spec = next((o.split("=", 1)[1] for o in reversed(run.get("overrides", []))
                     if o.startswith("ppo.reward_model=")), "auto")
        parts = Path(spec).parts
        if spec == "auto":
            path = task.base / "rm"
        elif task.out.name in parts:  # <that sweep's out>/<task>/<run>/rm
            path = task.out.joinpath(*parts[len(parts) - parts[::-1].index(task.out.name):])
        else:
            path = Path(spec)
        if path not in found:
            found.append(path)
    return found


def best_of_reward_model(task: Task, rm: Path, n: int) -> dict:
    """best-of-n under reward model `rm`, computed once (<task>/best_of.json for the base's reward model,
    best_of-<run>.json for a run's)."""
    from bench.compare_algorithms import best_of_n

    saved = task.out / ("best_of.json" if rm == task.base / "rm" else f"best_of-{rm.parent.name}.json")
    if not saved.exists():
        if not (rm / "reward_stats.json").exists():
            raise SystemExit(f"{saved}: missing, and {rm} holds no reward model to compute it with (read the run "
                             f"directory, not a kept copy of its results)")
        saved.write_text(json.dumps(best_of_n(task, n, repeats=4, rm=rm)))
    return json.loads(saved.read_text())


def report(tasks: dict[str, Task], per_task: dict[str, dict], chosen: str, steps: int, n: int = 8) -> str:
    """#27's one table: per task the SFT policy's gold beside its demonstrations' own, best-of-n from the
    SFT policy, PPO under `chosen` (mean over seeds), GRPO and PPO on the gold itself (the oracle) under
    the same setting, PPO's KL, the reward model's held-out accuracy beside the labels' ceiling, and
    PPO's wall time. Best-of-n and the accuracy are those of the reward models the PPO runs trained against
    (the mean over them: a draw's own, else the base's)."""

    def cell(runs: dict, label: str, key: str = "gold", fmt: str = "{:.3f}") -> str:
        value = seed_mean(runs, label, steps, key)
        return "–" if value is None else fmt.format(value)

    lines = [f"| task | SFT gold (demonstrations') | best-of-{n} | PPO ({chosen}) gold · gap closed | GRPO | oracle "
             "(gold as reward) | PPO KL | RM accuracy (labels' ceiling) | PPO wall (s) |", "| --- |" + " --- |" * 8]
    for name, task in tasks.items():
        runs = per_task[name]
        chosen_runs = runs_of(runs, chosen, steps)
        rms = reward_models(task, chosen_runs) or [task.base / "rm"]  # no runs under `chosen`: the base's
        best_of = statistics.fmean(best_of_reward_model(task, rm, n)["gold"] for rm in rms)
        accuracy = statistics.fmean(json.loads((rm / "result.json").read_text())["eval/accuracy"] for rm in rms)
        sft = json.loads((task.base / "sft" / "result.json").read_text())
        demos = sft.get("demonstrations_gold")
        start = seed_mean(runs, chosen, steps, "sft") or sft.get("eval/gold_score")
        closed = seed_mean(runs, chosen, steps)
        ppo = f"{cell(runs, chosen)} · {100 * closed:.0f}%" if closed is not None else "–"
        base = "r5" if chosen == "defaults" else chosen
        grpo, oracle = cell(runs, f"{base}-grpo"), cell(runs, f"{base}-oracle")
        lines.append(f"| {name} | {start:.3f} ({demos:.3f}) | {best_of:.3f} | {ppo} | {grpo} | {oracle} | "
                     f"{cell(runs, chosen, 'kl', '{:.2f}')} | {accuracy:.3f} "
                     f"({task.label_accuracy():.3f}) | {cell(runs, chosen, 'wall_s', '{:.0f}')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["suite"], choices=["suite", "embedded", *SUITE],
                        help="'suite': every task of bench/tasks; 'embedded': the demo's own task")
    parser.add_argument("--settings", nargs="+", default=["defaults"], choices=[*SETTINGS, *RM_SETTINGS])
    parser.add_argument("--rm", action="store_true", help="sweep reward-model settings (RM_SETTINGS) instead")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="seeds to run (default 0); with --table, the seeds to read (default all)")
    parser.add_argument("--steps", type=int, default=150,
                        help="PPO steps of each run (150: the budget the suite was read at; the default is 300)")
    parser.add_argument("--out", default="runs/bench-algorithms")
    parser.add_argument("--base", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of the SFT and reward-model stages, when <out>/<task>/base is trained")
    parser.add_argument("--table", action="store_true", help="print the saved results; run nothing")
    parser.add_argument("--held-out", nargs="+", metavar="SETTING",
                        help="with --table: the leave-one-task-out table over these candidate settings")
    parser.add_argument("--draws", nargs="+", metavar="SETTING:SEED",
                        help="with --table: also a row 'draws' of these runs, one per seed (seeds of the whole run); "
                             "NAME=SETTING:SEED puts a run in a row NAME instead; SETTING:SEED@N, its run of N steps")
    parser.add_argument("--export-rule", choices=EXPORT_RULES,
                        help="with --table: each run's gold as if it had exported by this rule (read off its samples, "
                             "or the digest of them bench/keep_results.py keeps)")
    parser.add_argument("--report", metavar="SETTING",
                        help="with --table: #27's table under SETTING, with best-of-8, GRPO and the oracle")
    args = parser.parse_args()
    wrong = [s for s in args.settings if (s in RM_SETTINGS) != args.rm]
    if wrong and not args.table:
        parser.error(f"{wrong}: {'PPO settings need no --rm' if args.rm else 'reward-model settings need --rm'}")
    names = list(dict.fromkeys(t for name in args.tasks for t in (SUITE if name == "suite" else [name])))
    per_task = {}
    for name in names:
        task = Task(name, (ROOT / args.out / name).resolve())
        task.out.mkdir(parents=True, exist_ok=True)
        saved = task.out / ("sweep_rm.json" if args.rm else "sweep.json")
        if args.table:
            runs = json.loads(saved.read_text()) if saved.exists() else {}
            if args.export_rule:
                runs = {k: reexport(task.out / "sweep-{}-{}-{}".format(*k.split("/")), v, args.export_rule)
                        if "peak" in v else v for k, v in runs.items()}
            per_task[name] = {k: v for k, v in runs.items() if args.seeds is None or
                              k.split("/")[1] in {f"s{seed}" for seed in args.seeds}}
            per_task[name] |= draws(runs, args.draws or [], args.steps)
        else:
            seeds = args.seeds or [0]
            per_task[name] = rm_sweep(task, args.settings, seeds, tuple(args.base)) if args.rm else \
                sweep(task, args.settings, seeds, args.steps, tuple(args.base))
    shown = [*args.settings, *draw_labels(args.draws or [])]
    print(rm_table(per_task, args.settings) if args.rm else table(per_task, shown, args.steps))
    if args.held_out:
        print("\n" + held_out_table(per_task, args.held_out, args.steps))
    if args.report:
        tasks = {name: Task(name, (ROOT / args.out / name).resolve()) for name in names}
        print("\n" + report(tasks, per_task, args.report, args.steps))


if __name__ == "__main__":
    main()
