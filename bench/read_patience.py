"""Record a finished PPO run as the run ppo.patience would have made: stopped where the rule stops it.

A run with ppo.patience and a bound of N steps is, up to the step where it stops, the run of N steps without
it: the same seeds, the same learning-rate schedule over N, the same evaluations (the suite trains on one
thread, bit for bit). So a finished N-step run is read as the stopping one: its evaluations up to the first
where `plateau` has gone `patience` evaluations without a gain beyond noise, the export chosen among those
as ppo.export=objective chooses (`last_unless_beaten`). The gold chooses nothing. The entry is saved under
the candidate's key with a `read_off` field saying so; its wall time is the run's, scaled by the share of
steps the stop keeps (an estimate, said in `wall_note`).

    python bench/read_patience.py runs/r33/notes --run r32-rm-min10-seed4/s4/300 --as r34-patience-2-seed4/s4/300 \\
        --patience 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run_evaluations import gap_closed, run_objectives  # noqa: E402
from bench.sweep_defaults import save_result  # noqa: E402
from rlhf.algo.selection import last_unless_beaten, patience_ends  # noqa: E402


def stop_step(objectives: dict[int, list[float]], patience: int) -> int:
    """The evaluation after which ppo.patience ends the run (its last evaluation where it never does)."""
    steps = sorted(objectives)
    for step in steps[:-1]:
        if patience_ends({s: o for s, o in objectives.items() if s <= step}, patience):
            return step
    return steps[-1]


def read_off(run_dir: Path, run: dict, patience: int) -> dict:
    """`run` (its sweep.json entry) as the stopping run: its gold, KL and best evaluation up to the stop."""
    objectives, evals = run_objectives(run_dir)
    if objectives is None:
        raise SystemExit(f"{run_dir}: its evaluations have no score or KL to stop on")
    stop = stop_step(objectives, patience)
    exported, _ = last_unless_beaten({s: o for s, o in objectives.items() if s <= stop})
    chosen = evals[str(exported)]
    kept = [evals[str(s)] for s in sorted(objectives) if 0 < s <= stop]
    peak = max(kept, key=lambda e: e["eval/gold_score"])
    last = max(objectives)
    return run | {"gold": chosen["eval/gold_score"], "stderr": chosen["eval/gold_stderr"], "kl": chosen["eval/kl"],
                  "closed": gap_closed(run["sft"], chosen["eval/gold_score"]), "exported_step": exported,
                  "stopped_at": stop, "peak": peak["eval/gold_score"], "peak_stderr": peak["eval/gold_stderr"],
                  "peak_kl": peak.get("eval/kl"), "wall_s": run["wall_s"] * stop / last,
                  "wall_note": f"the {last}-step run's wall time × {stop}/{last}",
                  "read_off": f"{run_dir.name}, " + (f"stopped by ppo.patience={patience} after step {stop}" if
                                                      stop < last else f"not stopped by ppo.patience={patience}")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task_dir", type=Path, help="<out>/<task>, holding sweep.json")
    ap.add_argument("--run", required=True, help="the finished run's key in sweep.json (<setting>/s<seed>/<steps>)")
    ap.add_argument("--as", dest="key", required=True, help="the candidate's key to record it under")
    ap.add_argument("--patience", type=int, required=True)
    args = ap.parse_args()
    runs = json.loads((args.task_dir / "sweep.json").read_text())
    if args.run not in runs:
        raise SystemExit(f"{args.task_dir / 'sweep.json'}: no run {args.run}")
    entry = read_off(args.task_dir / f"sweep-{args.run.replace('/', '-')}", runs[args.run], args.patience)
    save_result(args.task_dir, "sweep.json", args.key, entry)
    print(f"{args.task_dir.name} {args.key}: {entry['read_off']}, exported step {entry['exported_step']}, "
          f"{100 * entry['closed']:.1f}% of the gap")


if __name__ == "__main__":
    main()
