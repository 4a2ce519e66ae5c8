"""Keep a sweep's measured results in the repository: the JSON that bench/sweep_defaults.py's tables read
(<task>/sweep.json, sweep_rm.json, best_of*.json, task/labels.json, every stage's result.json, the bases'
included, and bench/tail_average.py's readings), copied from a run directory (runs/ is not tracked, and a fresh
checkout has none) to bench/results/<name>. Weights, samples, data and logs stay behind; of each PPO run's held-out
samples a digest is kept, each evaluation's per-prompt objective and gold (<run>/ppo/evaluations.json), which is
what the readers of an export rule need (sweep_defaults --export-rule, below_best, read_patience, tail_average).
The tables then read the kept copy as they read the runs:

    python bench/keep_results.py runs/r33
    python bench/sweep_defaults.py --out bench/results/r33 --tasks sorting --table --settings r32-rm-min10-seed4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_evaluations import DIGEST, per_prompt_evaluations  # noqa: E402

KEPT = ROOT / "bench" / "results"
# a task directory's own files; task/labels.json: the labels' agreement with the gold, the report's ceiling
TOP_LEVEL = ("sweep.json", "sweep_rm.json", "best_of.json", "results.json", "task/labels.json")
STAGES = ("sft", "rm", "dpo", "ppo")


def kept_files(task_dir: Path) -> list[Path]:
    """The files of one task's directory worth keeping, relative to it: its own results and each run's
    stage results (<run>/<stage>/result.json), never what lies under a stage (an ensemble's members)."""
    own = [Path(name) for name in TOP_LEVEL if (task_dir / name).is_file()] + \
        sorted(p.relative_to(task_dir) for p in task_dir.glob("best_of-*.json"))  # best-of-n under a run's RM
    stages = sorted(p.relative_to(task_dir) for stage in STAGES for p in task_dir.glob(f"*/{stage}/result.json")
                    if not p.parent.parent.is_symlink())
    averages = sorted(p.relative_to(task_dir) for p in task_dir.glob("*/ppo/tail_average.json")  # bench/tail_average
                      if not p.parent.parent.is_symlink())
    return own + stages + averages


def sampled_runs(task_dir: Path) -> list[Path]:
    """The PPO runs of one task's directory whose held-out samples are there to digest."""
    return sorted(p.parent.parent for p in task_dir.glob("*/ppo/samples")
                  if not p.parent.parent.is_symlink() and (p.parent / "result.json").is_file())


def keep(source: Path, dest: Path) -> list[Path]:
    """Copy every task directory's kept files from `source` (a sweep's --out) to `dest`; returns what was
    copied. A file kept earlier is replaced: the run directory is the record, the copy follows it."""
    tasks = sorted(d for d in source.iterdir() if d.is_dir() and kept_files(d))
    if not tasks:
        raise SystemExit(f"{source}: no task directory with a sweep's results (<task>/sweep.json, "
                         f"<task>/<run>/<stage>/result.json)")
    copied = []
    for task_dir in tasks:
        for rel in kept_files(task_dir):
            target = dest / task_dir.name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(task_dir / rel, target)
            copied.append(target)
        for run in sampled_runs(task_dir):
            per_prompt = per_prompt_evaluations(run)
            if per_prompt is not None:  # samples with no score or KL: nothing an export rule reads
                target = dest / task_dir.name / run.name / "ppo" / DIGEST
                target.write_text(json.dumps({str(s): e for s, e in sorted(per_prompt.items())}))
                copied.append(target)
    return copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a sweep's --out (e.g. runs/r33)")
    parser.add_argument("--name", help="bench/results/<name> (default: the source's own name)")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        raise SystemExit(f"{args.source}: no such directory")
    dest = KEPT / (args.name or args.source.resolve().name)
    copied = keep(args.source, dest)
    size = sum(p.stat().st_size for p in copied)
    print(f"kept {len(copied)} files ({size / 1e6:.1f} MB) under {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
