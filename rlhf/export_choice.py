"""Which PPO policy the stage exports (ppo.export): the last one, or, with "objective", an earlier
evaluation's policy when its held-out objective (score − β·KL, rlhf/algo/selection.py) beats the last's
by more than a standard error; and whether the run stops early (ppo.patience), on the same objective.
The score is the validation reward model's where the run has one (ppo.validation_model): the reward
model PPO optimises over-rates what PPO found in it, one trained beside it that PPO never saw does not
share that error.

The evaluation with the best objective so far is kept on disk as <ppo>/best-objective (the policy as an
HF checkpoint, with its tokenizer and per-prompt objective), so a restarted or resumed run keeps it.
The gold score is never read: a user's run has none.
Must not import ray: `policy` is any worker group with broadcast.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from rlhf.algo.selection import objective_of, paired_gain, patience_ends
from rlhf.evaluate import Evaluation
from rlhf.workers import PolicyWorker

BEST = "best-objective"
RECORD = "objective.json"
AVERAGE = "average"


def read_rows(path: Path) -> list[dict]:
    """An evaluation's sample rows as log_evaluation wrote them (<ppo>/samples/step-<n>.jsonl)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def exported_step(result: dict) -> int | None:
    """The step of the evaluation whose policy a PPO or DPO stage result exported: the one ppo.export
    chose, else the last evaluated."""
    evals = result["evaluations"]
    return result["exported_step"] if result.get("exported_step") in evals else max(evals, default=None)


class ExportChoice:
    """Follows a PPO run's evaluations (seen), says when ppo.patience ends the run (stops) and decides its
    export at the end (finish)."""

    def __init__(self, out_dir: Path, mode: str, beta: float, samples: int, last_step: int, resuming: bool,
                 judge: str = "score", patience: int | None = None, first_stop: int = 0):
        self.out_dir, self.dir, self.mode, self.judge = out_dir, out_dir / BEST, mode, judge
        self.beta, self.samples, self.last_step, self.patience = beta, samples, last_step, patience
        self.first_stop = first_stop  # no stop after an earlier evaluation (ppo.decay_steps: the cosine's end)
        self.by = " by the validation reward model" if judge == "validation_score" else ""
        self.objectives: dict[int, list[float]] = {}  # each evaluation's per-prompt objective, by step
        self.stopped_at, self.stop_reason = None, None  # the step where ppo.patience ended the run, and why
        if not resuming:
            shutil.rmtree(self.dir, ignore_errors=True)

    def resume(self, step: int, evaluated: list[int]) -> None:
        """An attempt starts at `step`: the objectives of the evaluations up to it (`evaluated`, read again
        from their sample files where this process has not seen them) count; later ones are redone."""
        self.objectives = {s: o for s, o in self.objectives.items() if s <= step}
        for s in evaluated:
            if s <= step and s not in self.objectives:
                objective = objective_of(read_rows(self.out_dir / "samples" / f"step-{s}.jsonl"), self.beta,
                                         self.samples, self.judge)
                if objective is not None:
                    self.objectives[s] = objective
        self.stopped_at, self.stop_reason = None, None

    def stops(self, step: int) -> bool:
        """After the evaluation of `step`: true when ppo.patience ends the run here (stop_reason says why)."""
        if self.patience is None or not self.first_stop <= step < self.last_step or step not in self.objectives:
            return False
        where = patience_ends(self.objectives, self.patience)
        if where is None:
            return False
        self.stopped_at = step
        self.stop_reason = (f"stopped after step {step} of at most {self.last_step}: {where.since} evaluation(s) in "
                            f"a row without a held-out objective{self.by} higher than step {where.mark}'s by more "
                            f"than one standard error (ppo.patience {self.patience})")
        return True

    def best(self) -> dict | None:
        """{step, per_prompt} of the kept evaluation, if any."""
        record = self.dir / RECORD
        return json.loads(record.read_text()) if record.exists() else None

    def seen(self, step: int, ev: Evaluation, policy, tok) -> None:
        """After each evaluation: record its objective, and whether ppo.patience ends the run here (stopped_at);
        keep this policy if its objective is the best of the run's so far, unless it is the run's last (the
        start never: it is not PPO's)."""
        objective = objective_of(ev.rows, self.beta, self.samples, self.judge)
        if objective is None:
            return
        self.objectives[step] = objective
        if self.stops(step) or self.mode != "objective" or step in (0, self.last_step):  # the last is exported anyway
            return
        best = self.best()
        if best is not None and statistics.fmean(best["per_prompt"]) >= statistics.fmean(objective):
            return
        staging = self.dir.with_name(BEST + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        policy.broadcast(PolicyWorker.export, str(staging)).get()
        tok.save_pretrained(staging)
        (staging / RECORD).write_text(json.dumps({"step": step, "per_prompt": objective}))
        shutil.rmtree(self.dir, ignore_errors=True)
        staging.rename(self.dir)

    def finish(self, exported: Path, last_step: int | None = None) -> dict:
        """After the last policy, of `last_step` (the bound unless the run stopped early), was exported to
        `exported`: put the kept one there instead where it is better beyond noise. Returns the stage
        result's export fields."""
        best, last_step = self.best(), self.last_step if last_step is None else last_step
        if best is not None and best["step"] >= last_step:  # kept by an attempt that went further: not this run's
            best = None
        if self.mode != "objective":
            return {"exported_step": last_step, "export_reason": "the last policy (ppo.export=last)"}
        last = objective_of(read_rows(self.out_dir / "samples" / f"step-{last_step}.jsonl"), self.beta,
                            self.samples, self.judge)
        if last is None:
            return {"exported_step": last_step, "export_reason": "the last policy: no held-out evaluation "
                    "with a score and a KL (a reward and a reference) to compare"}
        gain = paired_gain(best["per_prompt"], last) if best is not None else None
        if gain is None or gain.mean <= 0:
            return {"exported_step": last_step,
                    "export_reason": f"the last policy: no earlier evaluation has a higher held-out objective{self.by}"}
        fields = {"export_gain": gain.mean, "export_gain_stderr": gain.stderr, "export_judge": self.judge}
        if not gain.beyond_noise:
            return {"exported_step": last_step, **fields,
                    "export_reason": f"the last policy: step {best['step']}'s held-out objective{self.by} is higher by "
                                     f"{gain.mean:.4f} ± {gain.stderr:.4f}, within one standard error"}
        shutil.rmtree(exported, ignore_errors=True)
        shutil.copytree(self.dir, exported, ignore=shutil.ignore_patterns(RECORD))
        return {"exported_step": best["step"], **fields,
                "export_reason": f"step {best['step']}'s policy: its held-out objective (score − β·KL){self.by} is "
                                 f"higher than the last's by {gain.mean:.4f} ± {gain.stderr:.4f}"}


class PolicyAverage:
    """ppo.average_last on a run's policy group: before the evaluation of each averaged step it keeps the policy's
    weights (<ppo>/average/step-<n>, each rank its part), and before the last one's it puts their mean in the
    policy's place, so that the last step's evaluation, checkpoint and export are the average's."""

    def __init__(self, out_dir: Path, steps: list[int], resuming: bool):
        self.dir, self.steps = out_dir / AVERAGE, steps if len(steps) > 1 else []
        if not resuming:
            shutil.rmtree(self.dir, ignore_errors=True)

    def seen(self, step: int, policy) -> None:
        """Before the evaluation of `step`."""
        if step in self.steps:
            policy.broadcast(PolicyWorker.snapshot, str(self.dir / f"step-{step}")).get()
            if step == self.steps[-1]:
                self.apply(policy)

    def apply(self, policy) -> None:
        """The mean of the kept weights in the policy's place; again before the export, since a run resumed from
        its last checkpoint may hold the weights as trained there (ZeRO restores its own fp32 copy)."""
        if self.steps:
            policy.broadcast(PolicyWorker.average_snapshots, [str(self.dir / f"step-{s}") for s in self.steps]).get()

    def described(self, export: dict) -> dict:
        """The stage result's export fields with the steps whose mean the exported policy is (none where it is an
        evaluation's policy as trained), and its reason saying so."""
        if not self.steps or export["exported_step"] != self.steps[-1]:
            return export | {"averaged_steps": []}
        return export | {"averaged_steps": self.steps,
                         "export_reason": f"{export['export_reason']}; that policy is the mean of the policy's weights "
                                          f"at steps {', '.join(map(str, self.steps))} (ppo.average_last)"}
