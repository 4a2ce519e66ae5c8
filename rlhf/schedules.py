"""The PPO loop's schedules: the order in which the driver runs the phases of a step
(rlhf/coordinator.py holds the phases themselves). `sync` runs generate → score → train → sync, each
waiting for the last; `async` lets a generator group sample the next step while the policy trains;
`colocated` puts every role on the same devices and keeps one role's state on them at a time.
Each is a short loop over the same phase functions (`Steps`). Must not import ray.
"""

from __future__ import annotations

from collections.abc import Callable

from models.generation import Generation
from rlhf.algo.ppo import KLController, SpreadScale
from rlhf.algo.rollout import Rollout
from rlhf.batching import encode_prompt
from rlhf.colocation import SharedDevices
from rlhf.coordinator import (
    LR_KEYS,
    LogFn,
    PhaseTimer,
    Preempted,
    PretrainingMix,
    Roles,
    check_stats,
    filter_groups,
    generate,
    nonfinite_rollout,
    prompt_batch,
    score,
    shape,
    update,
)
from rlhf.data import DataConfig, Prompt
from rlhf.guards import BadSteps
from rlhf.ppo_config import PPOConfig
from rlhf.progress import progress
from rlhf.scoring import ScoreBatch
from rlhf.timeline import Timeline
from rlhf.workers import PolicyWorker


def train_ppo(roles: Roles, tok, prompts: list[Prompt], cfg: PPOConfig, log: LogFn, stats: dict | None,
              evaluate: Callable[[int], str | None], checkpoint: Callable[[int, dict], None], start: dict | None = None,
              bad_steps: BadSteps | None = None, stop_requested: Callable[[], bool] = lambda: False,
              timeline: Timeline | None = None, data: DataConfig | None = None) -> dict[str, float]:
    """The loop, in the schedule cfg.schedule names. `evaluate(step)` and `checkpoint(step, state)` are the
    stage's hooks; `start` resumes. The loop ends after the step whose evaluation returns a reason to stop
    (ppo.patience), else after cfg.steps. An update with non-finite values is skipped (`bad_steps` stops the run
    after several in a row); when `stop_requested()` turns true (a preemption signal), the loop saves at
    the end of the step and raises Preempted. `data` names the fields of a demonstrations file mixed in
    (ppo.ptx_data)."""
    steps = Steps(roles, tok, prompts, cfg, log, stats, evaluate, checkpoint, start, bad_steps, stop_requested,
                  timeline, data)
    return {"sync": sync_schedule, "async": async_schedule, "colocated": colocated_schedule}[cfg.schedule](steps)


def sync_schedule(s: Steps, devices: SharedDevices | None = None) -> dict[str, float]:
    """generate → score → train → sync, each phase waiting for the last. With `devices` (schedule=colocated)
    the critic trains before the policy rather than beside it, and each step logs what the devices held."""
    for step in s.steps():
        timer = PhaseTimer(s.timeline)
        with timer("generate"):
            index, sampled = s.sample(s.roles.policy, step)
            gen = sampled.get()
        rollout, metrics, problem = s.experience(index, gen, step, timer)
        problem = s.train(rollout, index, step, timer, metrics, problem, in_turn=devices is not None)
        with timer("sync"):
            s.roles.policy.broadcast(PolicyWorker.sync_generation).get()
        if s.end(step, timer, metrics | (devices.metrics() if devices else {}), rollout, problem):
            break
    return s.metrics


def async_schedule(s: Steps) -> dict[str, float]:
    """The generator samples step t + 1 while the policy trains on step t: generate (wait for what the last
    step's training did not cover; send the next sample) → score → train → sync (the policy's weights to
    the generator, queued behind the sample it is drawing, so that sample is of the weights before this
    update). A resumed run takes the next step's sample from its checkpoint, drawn before the save."""
    roles = s.roles
    pushed = push_weights(roles)  # the generator starts from the policy's weights (a resumed policy's too)
    pending = (s.prompts_of(s.first), Ready(s.pending)) if s.pending is not None else None
    for step in s.steps():
        timer = PhaseTimer(s.timeline)
        with timer("generate"):
            stale = pending is not None  # sent during the last step, before its update (or restored)
            index, sampled = pending or s.sample(roles.generator, step)
            gen = sampled.get()
            pushed.get()
            pending = s.sample(roles.generator, step + 1) if step + 1 < s.cfg.steps else None
        rollout, metrics, problem = s.experience(index, gen, step, timer)
        metrics["rollout/staleness"] = float(stale)  # policy updates between the sampler's weights and the learner's
        problem = s.train(rollout, index, step, timer, metrics, problem)
        with timer("sync"):
            roles.policy.broadcast(PolicyWorker.sync_generation).get()  # the policy's own sampler: evaluations
            pushed = push_weights(roles)
        if s.end(step, timer, metrics, rollout, problem, pending=pending[1].get if pending else None):
            break  # the next step's sample, drawn already, is not used
    pushed.get()
    return s.metrics


def colocated_schedule(s: Steps) -> dict[str, float]:
    """Every role on the same devices, one role's state on them at a time and the others' in host memory:
    each call to a role first brings it onto the devices and sends the last one away (`SharedDevices`).
    sync's loop, the critic trained before the policy rather than beside it, so each trainer moves once a
    step: generate (the policy) → score (policy, reference, reward, critic) → train (critic, policy) → sync."""
    devices = SharedDevices(s.roles)
    try:
        metrics = sync_schedule(s, devices)
        devices.keep("policy")  # what the stage reads after the loop: its export
    finally:
        devices.detach()
    return metrics


def push_weights(roles: Roles):
    """The handle of the generator taking the policy's current weights."""
    return roles.generator.broadcast(PolicyWorker.load_weights, roles.policy.broadcast(PolicyWorker.weights).get())


class Ready:
    """A handle whose value is already here (a sample restored from a checkpoint)."""

    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


class Steps:
    """What every schedule shares: the run's state (prompt order, KL controller, score spread, bad-step
    count) and the phases of one step as functions. A schedule is the order it calls them in."""

    def __init__(self, roles: Roles, tok, prompts: list[Prompt], cfg: PPOConfig, log: LogFn, stats: dict | None,
                 evaluate: Callable[[int], str | None], checkpoint: Callable[[int, dict], None], start: dict | None,
                 bad_steps: BadSteps | None, stop_requested: Callable[[], bool], timeline: Timeline | None,
                 data: DataConfig | None = None):
        check_stats(cfg, stats)
        self.roles, self.tok, self.prompts, self.cfg, self.log, self.stats = roles, tok, prompts, cfg, log, stats
        self.evaluate, self.checkpoint, self.stop_requested = evaluate, checkpoint, stop_requested
        self.timeline = timeline
        self.ids = [encode_prompt(tok, p.model_text, cfg.max_prompt_len) for p in prompts]
        self.kl_ctl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon, cfg.kl_schedule_start,
                                    cfg.kl_decay_steps)
        self.spread = SpreadScale()
        self.bad_steps = bad_steps or BadSteps(3, "PPO", LR_KEYS)
        self.first, self.pending = 0, None
        if start:
            self.first = start["step"]
            self.kl_ctl.load_state_dict(start["kl"])
            if "spread" in start:  # checkpoints from before score_scale have none
                self.spread.load_state_dict(start["spread"])
            self.pending = start.get("pending")  # schedule=async: the next step's sample, drawn before the save
        self.ptx = PretrainingMix(tok, cfg, data) if cfg.ptx_coef else None
        self.metrics: dict[str, float] = {}

    def steps(self):
        """The steps left, with a progress bar; evaluates the starting policy first on a fresh run."""
        if self.first == 0:
            self.evaluate(0)
        self.bar = progress(desc="ppo", unit="step", initial=self.first, total=self.cfg.steps)
        for step in range(self.first, self.cfg.steps):
            yield step
            self.bar.update(1)  # not reached by the step a schedule breaks off after: `end` counts that one
        self.bar.close()

    def prompts_of(self, step: int) -> list[int]:
        cfg = self.cfg
        return prompt_batch(len(self.prompts), step, cfg.prompts_per_step // cfg.samples_per_prompt, cfg.seed,
                            cfg.samples_per_prompt)

    def sample(self, group, step: int) -> tuple[list[int], object]:
        """The prompts of `step`, and the handle of `group` sampling their responses."""
        index = self.prompts_of(step)
        return index, generate(group, self.tok, [self.ids[i] for i in index], self.cfg, self.cfg.seed + step)

    def experience(self, index: list[int], gen: Generation, step: int, timer: PhaseTimer
                   ) -> tuple[Rollout, dict[str, float], str | None]:
        """Score the samples (every group at once), then shape rewards and advantages on the driver."""
        with timer("score"):
            batch = ScoreBatch.of(self.tok, gen, [self.prompts[i] for i in index],
                                  with_text=bool(self.cfg.reward_functions))
            rollout, components = score(self.roles, batch, self.cfg, step)
        metrics = shape(rollout, components, self.cfg, self.kl_ctl.at(step), self.stats, self.tok.eos_token_id,
                        self.spread)
        return rollout, metrics, nonfinite_rollout(rollout, index)

    def train(self, rollout: Rollout, index: list[int], step: int, timer: PhaseTimer, metrics: dict[str, float],
              problem: str | None, in_turn: bool = False) -> str | None:
        """The step's updates, unless its rollout is not finite; the problem that skipped them, if any.
        in_turn: all the critic's updates, then all the policy's (the same updates, not interleaved)."""
        with timer("train"):
            if problem is None:
                kept, kept_ids, filtered = filter_groups(rollout, self.cfg, index, self.roles.policy.spec.dp_size)
                metrics |= filtered
                for trainers in (() if kept is None else [("critic",), ("policy",)] if in_turn else
                                 [("critic", "policy")]):
                    train_metrics, trouble = update(self.roles, kept, self.cfg, self.ptx, step, kept_ids,
                                                    self.kl_ctl.at(step), trainers)
                    metrics |= train_metrics
                    problem = problem or trouble
        self.bad_steps.record(step + 1, problem)
        metrics["check/skipped_step"] = float(problem is not None)
        return problem

    def end(self, step: int, timer: PhaseTimer, metrics: dict[str, float], rollout: Rollout, problem: str | None,
            pending: Callable[[], Generation] | None = None) -> bool:
        """Move the KL controller, log the step, evaluate and save when due (a save of an asynchronous run
        holds `pending()`, the next step's sample); true when the evaluation ends the run (ppo.patience);
        raise Preempted when asked to stop before that."""
        cfg = self.cfg
        if problem is None:
            self.kl_ctl.update(metrics.get("kl/sequence", 0.0), cfg.prompts_per_step)
        total = sum(timer.seconds.values())
        n_tokens = float(rollout.response_mask.sum())
        metrics |= {f"time/{k}": v for k, v in timer.seconds.items()} | timer.busy() | timer.driver
        metrics |= {"perf/samples_per_s": cfg.prompts_per_step / total, "perf/tokens_per_s": n_tokens / total}
        self.log(metrics, step + 1)
        self.bar.set_postfix(score=f"{metrics['reward/score']:.3f}", kl=f"{metrics.get('kl/sequence', 0.0):.3f}",
                             refresh=False)
        self.metrics = metrics
        finished = None
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            finished = self.evaluate(step + 1)
        if finished:
            self.bar.update(1)
            self.bar.close()
        stopping = self.stop_requested() and step + 1 < cfg.steps and not finished
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or stopping:
            state = {"step": step + 1, "kl": self.kl_ctl.state_dict(), "spread": self.spread.state_dict()}
            self.checkpoint(step + 1, state | ({"pending": pending()} if pending is not None else {}))
        if stopping:
            raise Preempted(f"stopped on request after step {step + 1}, which is saved", step + 1)
        return bool(finished)
