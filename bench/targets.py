"""Issue #16's targets in one run: each benchmark once, in turn (never two at a time), and one table
of ratios against the goals.

    python bench/targets.py [--trl-python /tmp/trlvenv/bin/python] [--steps 10] [--threads 2]

Rows (both sides on this machine, the same threads, the reference configuration of
bench/ppo_reference.py):
- PPO with the same work as TRL's PPOTrainer (`ppo_throughput.py --recompute-every 1000`: the
  sampler's log-probs serve as the old ones, as TRL takes them from generation) against
  `trl_ppo.py`: goal ≥ 1.5×;
- critic-free (`--estimator grpo --recompute-every 1000`, 8 prompts × 4 samples, packing on)
  against TRL's PPOTrainer (goal ≥ 3×) and TRL's GRPOTrainer (`trl_grpo.py`, goal ≥ 1.5×);
- the PPO train phase's MFU against the measured fp32 matmul peak (goal ≥ 80%);
- generation against transformers `generate` on the same weights (`generation.py`, goal ≥ 1.5×),
  with every response running to the limit and with early EOS;
- ZeRO-3 bytes (parameters + optimizer state) per rank at DP=2 over DP=1 (`zero_memory.py`, goal ≤ 0.55).
The TRL rows need TRL 1.12 in its own venv (see bench/trl_ppo.py); without --trl-python they are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(python: str, script: str, *args: str, threads: int) -> dict:
    """Run one benchmark; return its RESULT line's JSON (and echo its output)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(HERE.parent)}
    env.pop("WANDB_SERVICE", None)
    cmd = [python, str(HERE / script), *args, "--threads", str(threads)]
    print(f"$ {' '.join(cmd)}", flush=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE.parent)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"{script} failed (exit {out.returncode})")
    for line in out.stdout.splitlines():
        if not line.startswith("RESULT "):
            print(f"  {line}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trl-python", default=None, help="python of a venv with TRL 1.12")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    py, steps, t = sys.executable, str(args.steps), args.threads
    ppo = run(py, "ppo_throughput.py", "--steps", steps, "--recompute-every", "1000", threads=t)
    grpo = run(py, "ppo_throughput.py", "--steps", steps, "--recompute-every", "1000", "--estimator", "grpo",
               threads=t)
    trl_ppo = trl_grpo = None
    if args.trl_python:
        trl_ppo = run(args.trl_python, "trl_ppo.py", "--steps", steps, threads=t)
        trl_grpo = run(args.trl_python, "trl_grpo.py", "--steps", steps, threads=t)
    gen = run(py, "generation.py", threads=t)
    mem = run(py, "zero_memory.py", threads=t)

    rows = []
    if trl_ppo:
        rows += [("PPO, same work as TRL PPOTrainer (samples/s)", ppo["samples_per_s"], trl_ppo["samples_per_s"],
                  1.5, "≥"),
                 ("critic-free GRPO vs TRL PPOTrainer (samples/s)", grpo["samples_per_s"], trl_ppo["samples_per_s"],
                  3.0, "≥"),
                 ("critic-free GRPO vs TRL GRPOTrainer (samples/s)", grpo["samples_per_s"], trl_grpo["samples_per_s"],
                  1.5, "≥")]
    rows += [("PPO train-phase MFU (of the fp32 matmul peak)", ppo["mfu"]["train"], 1.0, 0.8, "≥"),
             ("generation vs transformers generate, full-length responses", gen["ratio"]["full"], 1.0, 1.5, "≥"),
             ("generation vs transformers generate, early EOS", gen["ratio"]["early-eos"], 1.0, 1.5, "≥"),
             ("ZeRO-3 bytes/rank DP=2 ÷ DP=1 (default persistence threshold)", mem["ratio"]["zero3"], 1.0, 0.55, "≤"),
             ("ZeRO-3 bytes/rank DP=2 ÷ DP=1 (persistence threshold 0)", mem["ratio"]["zero3_threshold0"], 1.0, 0.55,
              "≤")]
    print("\n| target | ours | reference | ratio | goal | met |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, ours, ref, goal, sign in rows:
        ratio = ours / ref
        met = ratio >= goal if sign == "≥" else ratio <= goal
        ref_text = "–" if ref == 1.0 else f"{ref:.2f}"
        print(f"| {name} | {ours:.3f} | {ref_text} | {ratio:.2f} | {sign} {goal} | {'yes' if met else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
