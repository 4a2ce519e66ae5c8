"""What the fault tests share: the tiny PPO runs they fault, how they start and watch them, and the
bit-for-bit comparison with an uninterrupted run (docs/reliability.md, the fault tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

BIN = Path(sys.executable).parent
# The faults are what is tested, not learning: one PPO epoch of two minibatches a step (the defaults'
# 4 × 4 update calls would make every step of these runs 8 times longer).
SMALL = ["task.n_sft=300", "task.n_comparisons=40", "task.n_ppo=64", "task.n_eval=20", "sft.epochs=1", "rm.epochs=1",
         "ppo.prompts_per_step=16", "ppo.samples_per_prompt=2", "ppo.eval_every=100", "ppo.critic_warmup_steps=0",
         "ppo.ppo_epochs=1", "ppo.minibatches=2", "evaluation.samples_per_prompt=1"]


def ppo_args(models: Path, out: Path, *extra: str) -> list[str]:
    return [str(BIN / "instructrl"), "ppo", "--config", "demo", f"run.out_dir={out}",
            f"ppo.policy_init={models / 'sft'}", f"ppo.reward_model={models / 'rm'}", *SMALL, "ppo.steps=12",
            "ppo.save_every=2", *extra]


def start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """The command as a new process writing to log; env: variables to add or change."""
    # Not WANDB_SERVICE: the in-process fixture's W&B service would be shared, and would keep a killed
    # driver's run open (a fresh shell has no such variable).
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, **(env or {})}
    env |= {"WANDB_MODE": "offline", "INSTRUCTRL_PROGRESS_INTERVAL": "1"}
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115


def records(run: Path) -> list[dict]:
    f = run / "ppo" / "metrics.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []


def last_step(run: Path) -> int:
    return max((r["step"] for r in records(run) if "reward/score" in r), default=0)


def rank_pids(run: Path) -> dict[str, list[int]]:
    try:
        placement = json.loads((run / "ppo" / "placement.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {role: [r["pid"] for r in ranks] for role, ranks in placement.items()}


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout_s: float = 240, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the run ended early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(poll_s)
    proc.kill()
    pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")


def finish(proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> str:
    proc.wait(timeout=timeout_s)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def final_weights(run: Path) -> dict:
    return load_file(str(run / "ppo" / "policy" / "model.safetensors"))


def assert_same_run(run: Path, reference: Path) -> None:
    """Every training metric of every step equal, each step logged once, and the same final weights."""
    ours = [r for r in records(run) if "reward/score" in r]
    theirs = {r["step"]: r for r in records(reference) if "reward/score" in r}
    assert [r["step"] for r in ours] == sorted(theirs) == list(range(1, 13))
    for r in ours:
        for key, value in theirs[r["step"]].items():
            if not key.startswith(("time", "perf/")):
                assert r[key] == value, (r["step"], key)
    a, b = final_weights(run), final_weights(reference)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
