"""Record a finished PPO run under a candidate setting whose reward model is the run's own.

A reward-model setting that changes when training stops (rm.min_epochs) leaves many reward models as they were:
the same kept epoch of the same deterministic training, bit for bit. PPO against such a model is the run already
made, so the sweep records that run under the candidate's key instead of running it again, and says why in a
`same_as` field. Refused unless the weights are identical (sha256 of model.safetensors), or, with --floor, unless
the reward model the run used already trained that many epochs (a floor below its epochs never acted on it).

    python bench/same_reward_model.py runs/r12/style --run r23-rm-seed4/s4/150 --as r32-rm-min10-seed4/s4/150 \\
        --used sweep-rm-defaults-s4/rm --candidate sweep-rm-min-epochs-10-s4/rm
    python bench/same_reward_model.py runs/r12/sorting --run r23-rm-seed4/s4/150 --as r32-rm-min10-seed4/s4/150 \\
        --used sweep-rm-defaults-s4/rm --floor 10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sweep_defaults import save_result  # noqa: E402


def digest(rm: Path) -> str:
    return hashlib.sha256((rm / "model.safetensors").read_bytes()).hexdigest()


def why_the_same(task_dir: Path, used: str, candidate: str | None, floor: int | None) -> str:
    """Why PPO against the candidate's reward model is the run against `used`; SystemExit where it is not."""
    if candidate is not None:
        a, b = digest(task_dir / used), digest(task_dir / candidate)
        if a != b:
            raise SystemExit(f"{task_dir / candidate}: differs from {task_dir / used} (sha256 {b[:16]} against "
                             f"{a[:16]}); run PPO against it")
        return f"the reward model {candidate} is bit-identical to {used} (model.safetensors sha256 {a[:16]})"
    epochs = json.loads((task_dir / used / "result.json").read_text())["epochs"]
    if epochs < floor:
        raise SystemExit(f"{task_dir / used}: trained {epochs} epochs, under the floor of {floor}: train the "
                         "candidate's reward model")
    return f"{used} trained {epochs} epochs, so a floor of {floor} epochs leaves it as it is"


def record(task_dir: Path, run: str, key: str, used: str, candidate: str | None = None,
           floor: int | None = None) -> str:
    """Save sweep.json's `run` under `key` with why (SystemExit where the reward models differ); the run's
    directory is linked under the candidate's name too, for the readings that open it (--export-rule)."""
    runs = json.loads((task_dir / "sweep.json").read_text())
    if run not in runs:
        raise SystemExit(f"{task_dir / 'sweep.json'}: no run {run}")
    reason = why_the_same(task_dir, used, candidate, floor)
    entry = runs[run] | {"same_as": f"{run}: {reason}"}
    entry["overrides"] = [o for o in entry["overrides"] if not o.startswith("ppo.reward_model=")]
    entry["overrides"].append(f"ppo.reward_model={task_dir.resolve() / (candidate or used)}")
    save_result(task_dir, "sweep.json", key, entry)
    link, target = (task_dir / f"sweep-{k.replace('/', '-')}" for k in (key, run))
    if not link.exists():
        link.symlink_to(target.name)
    return reason


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task_dir", type=Path, help="<out>/<task>, holding sweep.json")
    ap.add_argument("--run", required=True, help="the finished run's key in sweep.json (<setting>/s<seed>/<steps>)")
    ap.add_argument("--as", dest="key", required=True, help="the candidate's key to record it under")
    ap.add_argument("--used", required=True, help="the reward model the run trained against (under task_dir)")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--candidate", help="the candidate setting's reward model (under task_dir)")
    which.add_argument("--floor", type=int, help="the candidate's floor of epochs, where it trained no model")
    args = ap.parse_args()
    reason = record(args.task_dir, args.run, args.key, args.used, args.candidate, args.floor)
    print(f"{args.task_dir.name} {args.key}: the run {args.run} ({reason})")


if __name__ == "__main__":
    main()
