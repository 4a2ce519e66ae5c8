"""Step 3 (PPO) with its four worker groups, and the whole pipeline SFT → RM → PPO (`make demo`).

Every evaluation measures the policy on the held-out prompts with what the run has: the gold
function, the reward role (the score PPO optimises and its parts), the reference (KL). With a gold
function the proxy and gold scores are also drawn against √KL after each evaluation (Gao et al.
2022): the curves that show when the policy starts to exploit its reward.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from launcher.config import Config
from launcher.plots import plot_overoptimization
from launcher.preflight import Inputs, read_stats
from launcher.recovery import with_restarts
from launcher.rounds import run_rounds
from launcher.run_setup import (
    checkpoint_source,
    log_evaluation,
    note_restart,
    prepare_ops,
    record_placement,
    start_groups,
)
from launcher.signals import STOP
from launcher.stages import ensemble_of, reward_role, run_dpo, run_rm, run_sft, validation_of
from launcher.storage import failed_save, storage_cause
from launcher.summary import print_summary, summarize
from launcher.tracking import Tracker
from models.errors import InputError
from models.generation import Generation
from parallel import checkpoint as checkpoints
from rlhf.coordinator import LR_KEYS, Roles
from rlhf.evaluate import Judges, evaluate_policy
from rlhf.export_choice import ExportChoice, PolicyAverage
from rlhf.guards import BadSteps
from rlhf.schedules import train_ppo
from rlhf.timeline import Timeline
from rlhf.workers import CriticWorker, PolicyWorker, ReferenceWorker

log = logging.getLogger("instructrl")
ROLES = ("policy", "reference", "critic", "reward", "generator")
PENDING = "pending.pt"  # schedule=async: the next step's sample, drawn before the save


def role_specs(cfg: Config, models: dict[str, Path | None], n_updates: int, validation: Path | None = None,
               ensemble: list[tuple[Path, dict]] = ()) -> dict:
    """(worker class, group spec, constructor args, kwargs) of each role this run needs. Without a
    reward model the reward ranks only run the reward functions: they ask for no GPU. A critic-free
    advantage estimator starts no critic."""
    p = cfg.ppo
    src = partial(checkpoint_source, cfg)
    micro = max(1, p.prompts_per_step // p.minibatches)
    specs = {
        "policy": (PolicyWorker, p.policy.group, (src(models["policy"]), p.policy.engine, p.policy.optim, n_updates,
                                                  micro), {"rollout": p.rollout, "seed": p.seed}),
        "reference": (ReferenceWorker, p.reference.group, (src(models["reference"]), p.reference.engine), {}),
        "critic": (CriticWorker, p.critic.group, (src(models["critic"]), p.critic.engine, p.critic.optim, n_updates,
                                                  micro), {}),
        "reward": reward_role(cfg, models["reward"], validation=validation, ensemble=ensemble),
    }
    if not p.uses_critic:
        del specs["critic"]
    if p.schedule == "colocated":  # every role on the policy's bundles (checked in PPOConfig), one at a time
        specs = colocated(specs)
    if p.schedule == "async":  # a copy of the policy that samples (no optimizer), its weights pushed after updates
        specs["generator"] = (PolicyWorker, p.generator.group, (src(models["policy"]), p.generator.engine),
                              {"seed": p.seed})
    return specs


def colocated(specs: dict) -> dict:
    """The roles' specs with every role on the policy's bundles, each rank with the bundle's CPUs as its
    threads (the roles there take turns)."""
    threads = max(1, round(sum(spec.cpus_per_rank for _, spec, *_ in specs.values())))
    return {role: (cls, spec.model_copy(update={"colocate_with": None if role == "policy" else "policy",
                                                "threads": spec.threads or threads}), *rest)
            for role, (cls, spec, *rest) in specs.items()}


@contextmanager
def start_roles(cfg: Config, specs: dict):
    with start_groups(cfg, specs) as groups:
        yield Roles(**{"critic": None, **groups})


def resume_point(cfg: Config, inputs: Inputs, out_dir: Path) -> Path | None:
    """The checkpoint an attempt starts from: the newest whole one this stage wrote (after a restart,
    or with run.resume), else ppo.resume, else none."""
    own = checkpoints.latest(out_dir)
    if own is not None:
        return own
    return Path(cfg.ppo.resume) if inputs.resume else None


def load_newest(roles: Roles, cfg: Config, inputs: Inputs, out_dir: Path) -> tuple[Path | None, dict | None]:
    """Load the checkpoint resume_point names into the started groups, and verify it again once its
    ranks have read it: chosen before the groups start, it would be read tens of seconds after it was
    verified (the chaos soak corrupted one in between, and the run went on from the damaged weights).
    A checkpoint that changed while it was loaded is skipped for the one before."""
    tried = set()
    while (path := resume_point(cfg, inputs, out_dir)) is not None:
        state = load_checkpoint(roles, path)
        problem = checkpoints.verify(path)
        if problem is None:
            return path, state
        if path in tried:
            raise InputError(f"{path}: {problem}; resume from another checkpoint")
        tried.add(path)
        log.warning("PPO: checkpoint %s changed while it was loaded (%s): loading the one before", path, problem)
    return None, None


def trained_roles(roles: Roles) -> list[tuple[str, type]]:
    """The roles a checkpoint holds: the policy, and the critic when there is one."""
    return [("policy", PolicyWorker)] + ([("critic", CriticWorker)] if roles.critic is not None else [])


def load_checkpoint(roles: Roles, path: Path) -> dict:
    """Load policy and critic from a verified checkpoint; every rank must report the manifest's step
    (a role's files from another step would otherwise train on silently). The state holds the sample an
    asynchronous run drew for the next step, where it saved one."""
    state = json.loads((path / checkpoints.STATE).read_text())
    if (path / PENDING).exists():
        state["pending"] = Generation(**torch.load(path / PENDING, weights_only=True))
    for role, worker in trained_roles(roles):
        reported = getattr(roles, role).broadcast(worker.load_state, str(path / role)).get()
        wrong = [c.get("step") for c in reported if c.get("step") != state["step"]]
        if wrong:
            raise InputError(f"{path / role}: its ranks are at step {wrong[0]}, the checkpoint at step "
                             f"{state['step']}: a mixed checkpoint; resume from another one")
    roles.policy.broadcast(PolicyWorker.sync_generation).get()
    return state


def run_ppo(cfg: Config, inputs: Inputs) -> dict:
    """Step 3 on four groups. Returns every evaluation's metrics by step, the final training metrics,
    and where the models, logs and plots are. A lost worker restarts the groups from the newest
    checkpoint (launcher/recovery.py); a preemption signal saves at the end of the step."""
    p, tok, models = cfg.ppo, inputs.tok, inputs.models
    stats = inputs.reward_stats
    if stats is None and models["reward"] is not None and p.normalize_scores:  # trained by this run's step 2
        stats = read_stats(models["reward"])
    out_dir = cfg.run.stage_dir("ppo")
    resuming = inputs.resume is not None or (cfg.run.resume and (out_dir / "metrics.jsonl").exists())
    tracker = Tracker(out_dir, cfg.run.tag("ppo"), cfg.wandb, cfg.model_dump(mode="json"), "ppo",
                      group=cfg.run.name, resume=resuming)
    n_updates = p.lr_steps * p.ppo_epochs * p.minibatches  # the optimizer steps the cosine spans
    evaluations: dict[int, dict] = tracker.history("eval/")  # a resumed run keeps its earlier evaluations
    log.info("PPO: %d steps × %d rollouts; policy %s, reward %s (+ %d function(s)), critic %s; KL β %s", p.steps,
             p.prompts_per_step, models["policy"], models["reward"], len(p.reward_functions), models["critic"],
             f"from {p.kl_coef:g} toward {p.kl_target:g} nats per response (horizon {p.kl_horizon} rollouts)"
             if p.kl_target is not None else f"{p.kl_coef:g} fixed" if p.kl_schedule_start is None else
             f"{p.kl_schedule_start:g} falling to {p.kl_coef:g} over {p.kl_decay_steps} steps")
    bad_steps = BadSteps(cfg.run.max_bad_steps, "PPO", LR_KEYS)
    validation = validation_of(cfg, models["reward"])
    if validation is not None:
        log.info("PPO: held-out evaluations are judged again by the validation reward model %s (ppo.export)",
                 validation)
    choice = ExportChoice(out_dir, p.export, p.kl_coef, cfg.evaluation.samples_per_prompt, p.steps, resuming,
                          judge="validation_score" if validation is not None else "score", patience=p.patience,
                          first_stop=p.first_stop)
    average = PolicyAverage(out_dir, p.averaged_steps, resuming)
    if average.steps:
        log.info("PPO: the last step's policy is the mean of the policy's weights at steps %s (ppo.average_last)",
                 ", ".join(map(str, average.steps)))
    if p.patience is not None or p.lr_steps < p.steps:
        log.info("PPO: the learning rates' cosine spans %d of at most %d steps (ppo.decay_steps); %s", p.lr_steps,
                 p.steps, "every step runs" if p.patience is None else f"from step {p.first_stop}, stops once "
                 f"{p.patience} held-out evaluation(s) in a row do not raise the objective beyond one standard error")
    ensemble = ensemble_of(cfg, models["reward"])
    if ensemble:
        log.info("PPO: the reward is the %s of %d reward models on their held-out scales (ppo.reward_ensemble): %s",
                 p.reward_ensemble, len(ensemble), ", ".join(str(m) for m, _ in ensemble))
    specs = role_specs(cfg, models, n_updates, validation, ensemble)  # the roles this run starts (no critic, a
    # generator: by config); the reward role with its ensemble and validation reward model where there are
    prepare_ops(*(getattr(p, role).engine for role in specs))

    def attempt(restarts: int) -> tuple[dict, dict, dict]:
        with start_roles(cfg, specs) as roles:
            started = [r for r in ROLES if getattr(roles, r) is not None]
            record_placement(out_dir, {r: getattr(roles, r) for r in started})
            judges = Judges(gold=inputs.gold, reward=roles.reward, reference=roles.reference,
                            weights=p.score_weights, rm_stats=stats if p.normalize_scores else None, clip=p.score_clip,
                            missing_eos_score=p.missing_eos_score, validation=validation is not None,
                            validation_stats=read_stats(validation) if validation and p.normalize_scores else None)

            def evaluate(step: int) -> str | None:
                """Evaluate the policy of `step`; the reason to stop the run here, if ppo.patience gives one."""
                average.seen(step, roles.policy)
                if not inputs.eval_prompts:
                    return None
                ev = evaluate_policy(roles.policy, tok, inputs.eval_prompts, cfg.evaluation, judges, cfg.run.seed)
                if "eval/kl" in ev.metrics:
                    ev.metrics["eval/sqrt_kl"] = math.sqrt(max(ev.metrics["eval/kl"], 0.0))
                log_evaluation(tracker, ev, step, out_dir)
                evaluations[step] = ev.metrics
                choice.seen(step, ev, roles.policy, tok)
                if inputs.gold is not None and len(evaluations) > 1:
                    plot = plot_overoptimization(evaluations, out_dir / "overoptimization.png")
                    tracker.image("eval/overoptimization", plot, step)
                return choice.stop_reason if choice.stopped_at == step else None

            def checkpoint(step: int, state: dict) -> None:
                staging = checkpoints.staging_dir(out_dir, step)
                shutil.rmtree(staging, ignore_errors=True)
                pending = state.pop("pending", None)
                try:
                    if pending is not None:
                        staging.mkdir(parents=True)
                        torch.save(dataclasses.asdict(pending), staging / PENDING)
                    for role, worker in trained_roles(roles):
                        getattr(roles, role).broadcast(worker.save_state, str(staging / role), state).get()
                    path = checkpoints.commit(out_dir, step, state)
                except Exception as e:
                    cause = storage_cause(e)
                    if cause is None:
                        raise
                    tracker.event("save_failed", step, path=str(staging), cause=str(cause)[:200])
                    keep_going = cfg.run.on_save_error == "continue"
                    log.warning("PPO: %s", failed_save(out_dir, staging, step, cause, keep_going))
                    return
                checkpoints.prune(out_dir, cfg.run.save_total_limit)
                log.info("PPO: saved %s", path)

            start_dir, start = load_newest(roles, cfg, inputs, out_dir)
            choice.resume(start["step"] if start else 0, sorted(evaluations))
            if start_dir is not None:
                log.info("PPO: resumed from %s at step %d", start_dir, start["step"])
                tracker.event("resume", start["step"], checkpoint=str(start_dir), restarts=restarts)
            timeline = Timeline()
            for role in started:
                group = getattr(roles, role)
                group.label, group.timeline = role, timeline
            STOP.deferred = True
            try:
                metrics = train_ppo(roles, tok, inputs.prompts, p, tracker.log, stats, evaluate, checkpoint, start,
                                    bad_steps, STOP, timeline, cfg.data)
            finally:
                STOP.deferred = False
                timeline.write(out_dir / "timeline.json")
            last_step = choice.stopped_at or p.steps
            if choice.stop_reason is not None:
                log.info("PPO: %s", choice.stop_reason)
                tracker.event("stopped", last_step, reason=choice.stop_reason)
            if last_step == p.steps:
                average.apply(roles.policy)
            roles.policy.broadcast(PolicyWorker.export, str(out_dir / "policy")).get()
            tok.save_pretrained(out_dir / "policy")
            export = average.described(choice.finish(out_dir / "policy", last_step) | {
                "steps_run": last_step, "stop_reason": choice.stop_reason or f"ran all {p.steps} steps"})
            log.info("PPO: exported %s", export["export_reason"])
            tracker.event("exported", export["exported_step"], reason=export["export_reason"])
            return metrics, {role: getattr(roles, role).info for role in started}, export

    try:
        metrics, info, export = with_restarts("PPO", attempt, cfg.run.max_restarts, partial(note_restart, tracker))
    finally:
        tracker.finish()
    plot = out_dir / "overoptimization.png"
    return {"evaluations": evaluations, "final_kl": metrics.get("kl/sequence"), "final_metrics": metrics,
            **export,
            "policy_model": str(out_dir / "policy"), "metrics_file": str(tracker.metrics_path),
            "plot": str(plot) if plot.exists() else None, "wandb_dir": str(out_dir / "wandb"), "ranks": info}


def run_stage(cfg: Config, stage: str, inputs: Inputs) -> dict:
    """One stage; its result is kept as <stage>/result.json, so that with run.resume=true a stage an
    earlier attempt finished is not run again."""
    done = cfg.run.stage_dir(stage) / "result.json"
    if cfg.run.resume and done.exists():
        log.info("%s: finished by an earlier attempt (%s); not run again", stage, done)
        result = json.loads(done.read_text())
        if "evaluations" in result:
            result["evaluations"] = {int(k): v for k, v in result["evaluations"].items()}
        return result
    result = {"sft": run_sft, "rm": run_rm, "ppo": run_ppo, "dpo": run_dpo}[stage](cfg, inputs)
    done.write_text(json.dumps(result, indent=1))
    return result


def run_pipeline(cfg: Config, inputs: Inputs, stages: tuple[str, ...]) -> dict:
    """SFT → reward model → PPO, or SFT → DPO (run.algorithm), in one run directory (the steps this
    config has); with rm.labeller, SFT then run.rounds rounds of sample → label → RM → PPO
    (launcher/rounds.py). Ends with a summary."""
    rounds = None
    if cfg.rm.labeller is not None:
        out = run_rounds(cfg, inputs, stages, run_stage)
        sft, rm, last, rounds = out["sft"], out["rm"], out["ppo"], out["rounds"]
    else:
        sft = run_stage(cfg, "sft", inputs) if "sft" in stages else None
        rm = run_stage(cfg, "rm", inputs) if "rm" in stages else None
        last = run_stage(cfg, stages[-1], inputs)
    summary = summarize(cfg, last, sft, rm, stages[-1]) | ({"rounds": rounds} if rounds else {})
    (cfg.run.dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    return summary
