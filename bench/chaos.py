"""A chaos soak (#31 item 2): a seeded schedule of faults over a PPO run on Ray — a random rank of a
random role killed or frozen, the driver sent SIGTERM or killed outright, the newest checkpoint
corrupted, and second faults landing while the recovery from the first is under way — and then the
check that every metric of every step and the final weights equal those of the uninterrupted run.

    python bench/chaos.py --steps 120 --faults 24 --seed 0 --out runs/chaos

trains a tiny SFT policy and reward model (the fault tests' own), runs PPO once without faults and
once under the schedule, and prints the report: faults injected and survived, restarts, driver
restarts, steps recomputed, wall time of both runs. tests/launcher/test_chaos.py runs a short one in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parallel import checkpoint as ck  # noqa: E402

BIN = Path(sys.executable).parent
ROLES = ("policy", "critic", "reward", "reference")
# The faults are what is tested, not learning: one PPO epoch of two minibatches a step (the defaults'
# 4 × 4 update calls would make every step of these runs 8 times longer).
SMALL = ["task.n_sft=300", "task.n_comparisons=40", "task.n_ppo=64", "task.n_eval=20", "sft.epochs=1", "rm.epochs=1",
         "ppo.prompts_per_step=16", "ppo.samples_per_prompt=2", "ppo.eval_every=100", "ppo.critic_warmup_steps=0",
         "ppo.ppo_epochs=1", "ppo.minibatches=2", "evaluation.samples_per_prompt=1"]


def ppo_args(models: Path, out: Path, *extra: str, steps: int = 12) -> list[str]:
    return [str(BIN / "instructrl"), "ppo", "--config", "demo", f"run.out_dir={out}",
            f"ppo.policy_init={models / 'sft'}", f"ppo.reward_model={models / 'rm'}", *SMALL, f"ppo.steps={steps}",
            "ppo.save_every=2", *extra]


def start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """The command as a new process appending to log; env: variables to add or change."""
    # Not WANDB_SERVICE: an in-process W&B service would be shared, and would keep a killed driver's
    # run open (a fresh shell has no such variable).
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, **(env or {})}
    env |= {"WANDB_MODE": "offline", "INSTRUCTRL_PROGRESS_INTERVAL": "1"}
    return subprocess.Popen(args, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115


def records(run: Path) -> list[dict]:
    """The run's metric records so far; read while the run writes, so a last line not yet ended by its
    newline is a record still being written, not a broken one, and waits for the next read."""
    f = run / "ppo" / "metrics.jsonl"
    if not f.exists():
        return []
    lines = f.read_text().split("\n")[:-1]  # the piece after the last newline is unfinished (or empty)
    return [json.loads(x) for x in lines if x.strip()]


def last_step(run: Path) -> int:
    return max((r["step"] for r in records(run) if "reward/score" in r), default=0)


def rank_pids(run: Path) -> dict[str, list[int]]:
    try:
        placement = json.loads((run / "ppo" / "placement.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {role: [r["pid"] for r in ranks] for role, ranks in placement.items()}


def differences(run: Path, reference: Path, steps: int) -> list[str]:
    """What differs from the reference run: a step logged twice or missing, a training metric, a
    tensor of the final policy (empty: the same run, bit for bit)."""
    from safetensors.torch import load_file

    ours = [r for r in records(run) if "reward/score" in r]
    theirs = {r["step"]: r for r in records(reference) if "reward/score" in r}
    if [r["step"] for r in ours] != sorted(theirs) or sorted(theirs) != list(range(1, steps + 1)):
        return [f"steps logged {[r['step'] for r in ours]}, the reference's {sorted(theirs)}"]
    out = [f"step {r['step']}: {key} {r.get(key)} != {value}" for r in ours
           for key, value in theirs[r["step"]].items() if not key.startswith(("time", "perf/")) and r.get(key) != value]
    a, b = (load_file(str(p / "ppo" / "policy" / "model.safetensors")) for p in (run, reference))
    if a.keys() != b.keys():
        return [*out, "the final policies hold different tensors"]
    return out + [f"final policy: {k} differs" for k in a if not (a[k] == b[k]).all()]


@dataclass
class Fault:
    step: int  # injected once the run has logged this step (with its groups of the moment up)
    kind: str  # kill | freeze | corrupt (a rank killed, then the checkpoint the restart loads) | sigterm | driver_kill
    role: str = "policy"  # kill, freeze, corrupt: whose rank
    then: str | None = None  # a second fault while the recovery from this one runs: kill | sigterm
    then_role: str = "critic"  # whose rank the second kill hits


def schedule(steps: int, n: int, seed: int) -> list[Fault]:
    """n faults at distinct steps in [2, steps - 2], kinds and roles drawn with the seed; every kind
    and every role appear once before any repeats (when n allows), a third of them with a second
    fault during the recovery."""
    rng = random.Random(seed)
    kinds = ["kill", "freeze", "corrupt", "sigterm", "driver_kill"]
    at = sorted(rng.sample(range(2, steps - 1), min(n, steps - 3)))
    draw_kinds = [*rng.sample(kinds, len(kinds)), *(rng.choice(kinds) for _ in range(len(at)))]
    draw_roles = [*rng.sample(ROLES, len(ROLES)), *(rng.choice(ROLES) for _ in range(len(at)))]
    return [Fault(s, draw_kinds[i], draw_roles[i], rng.choice(["kill", "sigterm"]) if i % 3 == 2 else None,
                  rng.choice(ROLES)) for i, s in enumerate(at)]


@dataclass
class Report:
    faults: list[dict] = field(default_factory=list)  # each fault as injected, with what happened
    restarts: int = 0  # groups restarted by a running driver (after lost or frozen ranks)
    driver_restarts: int = 0  # the driver started again with run.resume=true (after SIGTERM or a kill)
    steps_recomputed: int = 0  # steps run again after a restart or resume (each logged once still)
    wall_s: float = 0.0
    differences: list[str] = field(default_factory=list)

    @property
    def survived(self) -> int:
        return len(self.faults) if not self.differences else 0


class Soak:
    """Drives one run through a fault schedule: starts the driver, injects, and starts it again with
    run.resume=true after it exits on a fault."""

    def __init__(self, args: list[str], run: Path, log: Path, env: dict | None = None, timeout_s: float = 600):
        self.args, self.run, self.log, self.env, self.timeout_s = args, run, log, env, timeout_s
        self.report, self.proc, self.pids, self.frozen = Report(), None, {}, []

    def launch(self, resume: bool) -> None:
        self.proc = start([*self.args, *(["run.resume=true"] if resume else [])], self.log, self.env)
        if resume:
            self.report.driver_restarts += 1

    def wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not condition():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the driver exited ({self.proc.returncode}) while waiting for {what}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"timed out waiting for {what}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def groups_up(self) -> bool:
        """This attempt's groups are placed (their ranks differ from those faulted before)."""
        pids = rank_pids(self.run)
        return bool(pids) and pids != self.pids and all(alive(p) for ps in pids.values() for p in ps)

    def rank(self, role: str, rng: random.Random) -> int:
        self.pids = rank_pids(self.run)
        return rng.choice(self.pids[role])

    def exit_and_resume(self, expected: tuple[int, ...]) -> None:
        rc = self.proc.wait(timeout=self.timeout_s)
        if rc not in expected:
            raise RuntimeError(f"the driver exited {rc}, not {expected}:\n{self.log.read_text()[-3000:]}")
        # the ranks of the driver that went can outlive it for a while: "up" means other ranks than these
        self.pids = rank_pids(self.run)
        self.launch(resume=True)

    def inject(self, fault: Fault, rng: random.Random) -> dict:
        self.wait(lambda: last_step(self.run) >= fault.step and self.groups_up(), f"step {fault.step}")
        done = {**asdict(fault), "at_step": last_step(self.run)}
        if fault.kind in ("kill", "freeze", "corrupt"):
            pid = self.rank(fault.role, rng)
            restarts = self.count("restart")
            os.kill(pid, signal.SIGSTOP if fault.kind == "freeze" else signal.SIGKILL)
            self.frozen += [pid] if fault.kind == "freeze" else []
            self.wait(lambda: self.count("restart") > restarts, "the restart")
            if fault.kind == "corrupt":  # no save commits once the restart is under way: the one it will load
                done["corrupted"] = corrupt_newest(self.run)
            if fault.then == "kill":  # the new groups are being placed and loaded: kill one of their ranks
                self.wait(self.groups_up, "the new groups")
                os.kill(self.rank(fault.then_role, rng), signal.SIGKILL)
                self.wait(lambda: self.count("restart") > restarts + 1, "the second restart")
            elif fault.then == "sigterm":
                self.proc.send_signal(signal.SIGTERM)
                self.exit_and_resume((75,))
        else:
            self.proc.send_signal(signal.SIGTERM if fault.kind == "sigterm" else signal.SIGKILL)
            self.exit_and_resume((75,) if fault.kind == "sigterm" else (-signal.SIGKILL,))
            if fault.then is not None:  # the resumed driver is loading: fault it again
                self.wait(self.groups_up, "the resumed groups")
                if fault.then == "kill":
                    os.kill(self.rank(fault.then_role, rng), signal.SIGKILL)
                else:
                    self.proc.send_signal(signal.SIGTERM)
                    self.exit_and_resume((75,))
        return done

    def count(self, event: str) -> int:
        return sum(r.get("event") == event for r in records(self.run))

    def go(self, faults: list[Fault], seed: int) -> Report:
        rng, t0 = random.Random(seed), time.monotonic()
        self.launch(resume=False)
        try:
            for fault in faults:
                self.report.faults.append(self.inject(fault, rng))
            while (rc := self.proc.wait(timeout=self.timeout_s)) == 75:  # a SIGTERM that landed late
                self.launch(resume=True)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            for pid in self.frozen:  # a frozen rank the restart did not end
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        if rc != 0:
            raise RuntimeError(f"the driver exited {rc}:\n{self.log.read_text()[-3000:]}")
        self.report.wall_s = time.monotonic() - t0
        self.report.restarts = self.count("restart")
        self.report.steps_recomputed = recomputed(records(self.run))
        return self.report


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def corrupt_newest(run: Path) -> str | None:
    """Flip a byte in the middle of the newest checkpoint's policy weights; the path, or None."""
    newest = ck.latest(run / "ppo")
    if newest is None:
        return None
    victim = next(p for p in sorted((newest / "policy").iterdir()) if p.suffix == ".safetensors")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return str(victim)


def recomputed(rows: list[dict]) -> int:
    """Steps run twice: at each resume, the steps logged before it beyond the checkpoint resumed from."""
    total, high = 0, 0
    for r in rows:
        if r.get("event") == "resume":
            total += max(0, high - r["step"])
        elif "reward/score" in r:
            high = max(high, r["step"])
    return total


def train_models(out: Path) -> Path:
    """The tiny SFT policy and reward model the soak's PPO starts from (in-process, local backend)."""
    from launcher.cli import main

    if not (out / "demo" / "rm" / "result.json").exists():
        assert main(["demo", f"run.out_dir={out}", "run.backend=local", *SMALL, "ppo.steps=1"]) == 0
    return out / "demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--faults", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--call-timeout-s", type=float, default=15.0,
                        help="run.call_timeout_s: how long a frozen rank goes unnoticed")
    parser.add_argument("--out", type=Path, default=Path("runs/chaos"))
    args = parser.parse_args()
    out = args.out.resolve()
    models = train_models(out / "base")
    extra = ["run.max_restarts=1000", f"run.call_timeout_s={args.call_timeout_s}"]
    reference = out / "reference" / "demo"
    timing = out / "reference.json"  # the uninterrupted run's wall time, kept for reruns of the soak
    if not (reference / "ppo" / "policy" / "model.safetensors").exists() or not timing.exists():
        t0 = time.monotonic()
        ref = start(ppo_args(models, out / "reference", *extra, steps=args.steps), out / "reference.log")
        if ref.wait() != 0:
            raise SystemExit(f"the reference run failed: {out / 'reference.log'}")
        timing.write_text(json.dumps({"wall_s": time.monotonic() - t0}))
    reference_s = json.loads(timing.read_text())["wall_s"]
    faults = schedule(args.steps, args.faults, args.seed)
    soak_dir = out / f"soak-s{args.seed}"
    soak = Soak(ppo_args(models, soak_dir, *extra, steps=args.steps), soak_dir / "demo",
                out / f"soak-s{args.seed}.log", timeout_s=900)
    report = soak.go(faults, args.seed)
    report.differences = differences(soak_dir / "demo", reference, args.steps)
    kinds = {}
    for f in report.faults:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        kinds["second, during recovery"] = kinds.get("second, during recovery", 0) + (f["then"] is not None)
    print(f"{args.steps} PPO steps, seed {args.seed}: {len(report.faults)} faults injected ({kinds}); "
          f"{report.survived} survived; {report.restarts} group restarts, {report.driver_restarts} driver restarts; "
          f"{report.steps_recomputed} steps recomputed; soak {report.wall_s:.0f} s against "
          f"{reference_s:.0f} s uninterrupted")
    print("bit-exact: every metric of every step and the final weights equal" if not report.differences
          else "DIFFERENT:\n" + "\n".join(report.differences[:20]))
    (out / f"soak-s{args.seed}.json").write_text(json.dumps({**asdict(report), "survived": report.survived,
                                                              "reference_s": reference_s}, indent=1))


if __name__ == "__main__":
    main()
