"""Stage runners behind the CLI: steps 1 and 2 on their worker groups, DPO on its two, and the reward role as PPO
and sft.select=reward start it (what every stage shares is in launcher/run_setup.py).

Stages start from `Inputs` that launcher/preflight.py has read and checked: nothing here reads a
user file, so a failure here is a failure of training, not of the input. Each stage writes into
<run.out_dir>/<run.name>/<stage>.
"""

from __future__ import annotations

import logging
import shutil
import statistics
from functools import partial
from pathlib import Path

from launcher.config import Config
from launcher.preflight import POLICY_COMPARISONS, Inputs, load_split, read_stats
from launcher.recovery import with_restarts
from launcher.run_setup import (
    checkpoint_source,
    fresh_source,
    log_evaluation,
    note_restart,
    prepare_ops,
    record_placement,
    start_groups,
    worker_group,
)
from launcher.tracking import Tracker
from models.errors import InputError
from models.generation import SamplingParams
from rlhf.batching import decode_responses
from rlhf.data import load_comparisons, write_jsonl
from rlhf.epochs import decay_steps
from rlhf.evaluate import Judges, evaluate_policy, sample
from rlhf.functions import FunctionError
from rlhf.reward_model import (
    ENSEMBLE,
    STATS_FILE,
    VALIDATION,
    ensemble_members,
    read_reward_stats,
    train_reward_model,
    validation_model,
)
from rlhf.reward_model import total_steps as rm_total_steps
from rlhf.scoring import RewardWorker
from rlhf.sft import total_steps, train_sft
from rlhf.task import EmbeddedTask
from rlhf.workers import PolicyWorker, ReferenceWorker, RewardModelWorker

log = logging.getLogger("instructrl")


def reward_role(cfg: Config, model: Path | None, functions: bool = True, validation: Path | None = None,
                ensemble: list[tuple[Path, dict]] = ()) -> tuple:
    """The reward role's (worker class, group spec, args, kwargs): the reward model `model` (or none) with
    its ensemble's further members (ensemble_of: every member with its statistics, `model` first; empty:
    none), the task's reward functions, and a validation reward model for held-out evaluations only (or
    none). Without a reward model its ranks only run functions: they ask for no GPU."""
    p = cfg.ppo
    spec = p.reward.group if model else p.reward.group.model_copy(update={"gpus_per_rank": 0.0})
    specs = tuple(f.resolved(Path.cwd()) for f in p.reward_functions) if functions else ()
    source = checkpoint_source(cfg, model) if model else None
    judge = checkpoint_source(cfg, validation) if validation else None
    members = {"members": [checkpoint_source(cfg, m) for m, _ in ensemble[1:]],
               "member_stats": [stats for _, stats in ensemble], "reduce": p.reward_ensemble} if ensemble else {}
    return RewardWorker, spec, (source, p.reward.engine, specs, str(Path.cwd())), {"validation": judge, **members}


def ensemble_of(cfg: Config, reward: Path | None) -> list[tuple[Path, dict]]:
    """PPO's reward ensemble (ppo.reward_ensemble): the reward model and the members trained beside it
    (<rm>/ensemble/<k>, rm.ensemble), each with its held-out statistics, which put their scores on one
    scale; empty where the reward model has no members, or ppo.reward_ensemble=null."""
    members = ensemble_members(reward) if reward is not None and cfg.ppo.reward_ensemble else []
    for m in (reward, *members) if members else ():
        if not (m / STATS_FILE).exists():
            raise InputError(f"{m / STATS_FILE}: not found. The reward ensemble ({len(members) + 1} models: "
                             f"{reward} and {reward / ENSEMBLE}/*) puts each model's scores on one scale by "
                             f"its held-out statistics, which `instructrl rm` writes; retrain that model, "
                             f"remove it from {reward / ENSEMBLE}, or set ppo.reward_ensemble=null")
    return [(m, read_stats(m)) for m in (reward, *members)] if members else []


def validation_of(cfg: Config, reward: Path | None) -> Path | None:
    """PPO's validation reward model (ppo.validation_model): "auto" is the one trained beside the reward
    model (<rm>/validation, rm.validation), where there is one; a path is that model; null, none."""
    v = cfg.ppo.validation_model
    if v is None or (v == "auto" and reward is None):
        return None
    return validation_model(reward) if v == "auto" else Path(v)


def selection_judges(cfg: Config, inputs: Inputs, reward_group) -> Judges:
    """sft.select=reward scores an SFT epoch's samples as PPO will score them: the reward model that
    exists before SFT (normalised as PPO normalises it) and the reward functions, by their weights."""
    p = cfg.ppo
    weights = {k: w for k, w in p.score_weights.items() if k != "rm" or inputs.models["select_reward"]}
    return Judges(reward=reward_group, weights=weights, rm_stats=inputs.select_stats, clip=p.score_clip,
                  missing_eos_score=p.missing_eos_score)


def demonstrations_gold(inputs: Inputs) -> float | None:
    """The gold score of the held-out demonstrations themselves: what SFT imitates, beside what its policy
    samples. None when the demonstrations lack fields the gold function reads."""
    _, evals = inputs.sft
    fields = {k: [r.fields.get(k) for r in evals] for k in dict.fromkeys(k for r in evals for k in r.fields)}
    try:
        inputs.gold.check_fields(list(fields), "the held-out demonstrations")
    except FunctionError:
        log.info("SFT: the demonstrations carry no fields for the gold function; their own gold is not measured")
        return None
    return statistics.fmean(inputs.gold([r.as_prompt().judged for r in evals], [r.response for r in evals], fields))


def run_sft(cfg: Config, inputs: Inputs) -> dict:
    """Step 1 on the policy group; returns held-out metrics (NLL; gold score, length on eval prompts) and
    how training ended (epochs run, the epoch kept, why it stopped)."""
    train, evals = inputs.sft
    tok, s = inputs.tok, cfg.sft
    out_dir = cfg.run.stage_dir("sft")
    tracker = Tracker(out_dir, cfg.run.tag("sft"), cfg.wandb, cfg.model_dump(mode="json"), "sft",
                      group=cfg.run.name)
    steps = total_steps(len(train), s)
    log.info("SFT: %d train / %d eval demonstrations, at most %d epochs (%d steps) on %d rank(s); stops after %s "
             "epoch(s) without a better held-out %s", len(train), len(evals), s.epochs, steps, s.group.ranks,
             s.patience or "∞", "loss" if s.select == "loss" else "reward of sampled responses")
    start = checkpoint_source(cfg, inputs.models["sft_init"]) if inputs.models["sft_init"] else fresh_source(cfg, tok)
    schedule = decay_steps(len(train), s)
    specs = {"policy-sft": (PolicyWorker, s.group, (start, s.engine, s.optim, schedule, s.batch_size), {})}
    if s.select == "reward":
        specs["reward-sft"] = reward_role(cfg, inputs.models["select_reward"])
    prepare_ops(s.engine)

    def attempt(restarts: int) -> dict:  # SFT keeps no training state: a restart begins the stage again
        with start_groups(cfg, specs) as groups:
            group = groups["policy-sft"]
            record_placement(out_dir, {role.removesuffix("-sft"): g for role, g in groups.items()})
            select = None
            if s.select == "reward":
                judges = selection_judges(cfg, inputs, groups["reward-sft"])

                def select(step: int) -> dict[str, float]:
                    ev = evaluate_policy(group, tok, inputs.select_prompts, cfg.evaluation, judges, cfg.run.seed)
                    return {"select/score": ev.metrics["eval/score"]}

            metrics = train_sft(group, tok, train, evals, s, out_dir, tracker.log, cfg.run.max_bad_steps, select)
            log.info("SFT: %s", metrics["stop_reason"])
            tracker.event("stopped", metrics["steps"], reason=metrics["stop_reason"], epochs=metrics["epochs"],
                          kept_epoch=metrics["kept_epoch"])
            if cfg.uses_embedded_task and cfg.task.rm_candidates == "policy":
                label_policy_samples(cfg, group, tok)
            if inputs.eval_prompts:
                ev = evaluate_policy(group, tok, inputs.eval_prompts, cfg.evaluation, Judges(gold=inputs.gold),
                                     cfg.run.seed)
                log_evaluation(tracker, ev, metrics["steps"], out_dir)
                metrics |= ev.metrics
            if inputs.gold is not None:
                metrics["demonstrations_gold"] = demonstrations_gold(inputs)
                if "eval/gold_score" in metrics and metrics["demonstrations_gold"] is not None:
                    log.info("SFT: sampled gold %.3f ± %.3f; the held-out demonstrations' own gold %.3f",
                             metrics["eval/gold_score"], metrics["eval/gold_stderr"], metrics["demonstrations_gold"])
            return metrics

    try:
        metrics = with_restarts("SFT", attempt, cfg.run.max_restarts, partial(note_restart, tracker))
    finally:
        tracker.finish()
    return {**metrics, "model": str(out_dir), "metrics_file": str(tracker.metrics_path)}


def label_policy_samples(cfg: Config, group, tok) -> None:
    """The embedded task's comparison data from the SFT policy itself: K+2 samples per prompt, ranked
    by the simulated labeller (InstructGPT §3.3), written next to the synthetic comparisons."""
    from rlhf.data import Prompt

    task = EmbeddedTask(cfg.task)
    k = cfg.task.k_responses + 2
    params = SamplingParams(max_new_tokens=cfg.evaluation.max_new_tokens, temperature=1.0)
    data = cfg.run.dir / "data"
    for split, name in POLICY_COMPARISONS.items():
        prompts = [c.prompt for c in load_comparisons(data / f"{split}.jsonl")]
        gens = sample(group, tok, [Prompt(p) for p in prompts for _ in range(k)], params,
                      cfg.evaluation.max_prompt_len, seed=cfg.run.seed + len(name))
        texts = [t for g in gens for t in decode_responses(tok, g.responses, g.response_mask)]
        rows = task.label(prompts, [texts[i * k:(i + 1) * k] for i in range(len(prompts))], cfg.run.seed)
        write_jsonl(data / name, rows)
        log.info("labelled %d of %d %s prompts from SFT samples", len(rows), len(prompts), split)


def comparisons(cfg: Config, inputs: Inputs) -> tuple[list, list]:
    """The ranked comparisons (train, eval) of the RM and DPO stages."""
    if inputs.rm is None:  # the embedded task's comparisons, labelled by this run's SFT stage
        sources = {k: cfg.run.dir / "data" / v for k, v in POLICY_COMPARISONS.items()}
        inputs.rm = load_split(load_comparisons, sources, "comparisons_train", "comparisons_eval", cfg)
    return inputs.rm


def run_rm(cfg: Config, inputs: Inputs) -> dict:
    """Step 2 on the reward group, initialised from this run's SFT model unless rm.init says otherwise;
    with rm.ensemble > 1, the ensemble's further members from the next seeds (<rm>/ensemble/<k>), and with
    rm.validation, one more from the seeds after those (<rm>/validation)."""
    train, evals = comparisons(cfg, inputs)
    out_dir = cfg.run.stage_dir("rm")
    log.info("RM: %d train / %d eval rankings from %s, at most %d epochs (%d steps); stops after %s epoch(s) "
             "without a better held-out accuracy", len(train), len(evals), inputs.models["rm_init"], cfg.rm.epochs,
             rm_total_steps(len(train), cfg.rm), cfg.rm.patience or "∞")
    prepare_ops(cfg.rm.engine)
    shutil.rmtree(out_dir / ENSEMBLE, ignore_errors=True)  # an earlier attempt's members: PPO would use them
    metrics = train_rm_once(cfg, inputs, train, evals, out_dir, "rm")
    result = {**metrics, "reward_stats": read_reward_stats(out_dir), "model": str(out_dir)}
    others = {f"ensemble-{k}": (k, out_dir / ENSEMBLE / str(k)) for k in range(1, cfg.rm.ensemble)}
    if cfg.rm.validation:
        others["validation"] = (cfg.rm.ensemble, out_dir / VALIDATION)
    for name, (k, path) in others.items():  # the same rankings, from seeds k further on
        seeds = {"run": cfg.run.model_copy(update={"seed": cfg.run.seed + k}),
                 "rm": cfg.rm.model_copy(update={"seed": cfg.rm.seed + k})}
        other = train_rm_once(cfg.model_copy(update=seeds), inputs, train, evals, path, f"rm-{name}")
        summary = {"eval/accuracy": other["eval/accuracy"], "stop_reason": other["stop_reason"], "model": str(path)}
        if name == "validation":
            result["validation"] = summary
        else:
            result.setdefault("ensemble", []).append(summary)
    return result


def train_rm_once(cfg: Config, inputs: Inputs, train: list, evals: list, out_dir: Path, name: str) -> dict:
    """One reward model into out_dir (its own metrics file and W&B run `name`); restarts begin it again."""
    tok, init = inputs.tok, inputs.models["rm_init"]
    tracker = Tracker(out_dir, cfg.run.tag(name), cfg.wandb, cfg.model_dump(mode="json"), "reward_model",
                      group=cfg.run.name)

    def attempt(restarts: int) -> dict:  # RM training keeps no state: a restart begins the stage again
        with worker_group(cfg, "reward-train", RewardModelWorker, cfg.rm.group, checkpoint_source(cfg, init),
                          cfg.rm.engine, cfg.rm.optim, decay_steps(len(train), cfg.rm), cfg.rm.batch_size) as group:
            record_placement(out_dir, {"reward": group})
            metrics = train_reward_model(group, tok, train, evals, cfg.rm, out_dir, tracker.log,
                                         cfg.run.max_bad_steps)
            log.info("%s: %s", "RM" if name == "rm" else f"RM ({name.removeprefix('rm-')})", metrics["stop_reason"])
            tracker.event("stopped", metrics["steps"], reason=metrics["stop_reason"], epochs=metrics["epochs"],
                          kept_epoch=metrics["kept_epoch"])
            return metrics

    try:
        metrics = with_restarts("RM", attempt, cfg.run.max_restarts, partial(note_restart, tracker))
    finally:
        tracker.finish()
    return {**metrics, "metrics_file": str(tracker.metrics_path)}


def run_dpo(cfg: Config, inputs: Inputs) -> dict:
    """DPO (or IPO) on the policy group against a frozen reference group of the same layout; the
    policy is evaluated on the held-out prompts before and after, as PPO's is."""
    from rlhf.dpo import total_steps as dpo_total_steps
    from rlhf.dpo import train_dpo

    train, evals = comparisons(cfg, inputs)
    d, tok, init = cfg.dpo, inputs.tok, inputs.models["dpo_init"]
    out_dir = cfg.run.stage_dir("dpo")
    tracker = Tracker(out_dir, cfg.run.tag("dpo"), cfg.wandb, cfg.model_dump(mode="json"), "dpo",
                      group=cfg.run.name)
    steps = dpo_total_steps(len(train), d)
    log.info("DPO (%s, β=%g): %d train / %d eval rankings from %s, %d steps", d.loss, d.beta, len(train), len(evals),
             init, steps)
    source = checkpoint_source(cfg, init)
    reference_engine = d.engine.model_copy(update={"offload_optimizer": False})  # frozen: no optimizer
    specs = {"policy": (PolicyWorker, d.group, (source, d.engine, d.optim, steps, d.batch_size), {}),
             "reference": (ReferenceWorker, d.group, (source, reference_engine), {})}
    prepare_ops(d.engine)

    def attempt(restarts: int) -> tuple[dict, dict]:  # DPO keeps no training state: a restart begins again
        evaluations: dict[int, dict] = {}
        with start_groups(cfg, specs) as groups:
            record_placement(out_dir, groups)
            judges = Judges(gold=inputs.gold, reference=groups["reference"])

            def evaluate(step: int) -> None:
                if inputs.eval_prompts:
                    ev = evaluate_policy(groups["policy"], tok, inputs.eval_prompts, cfg.evaluation, judges,
                                         cfg.run.seed)
                    log_evaluation(tracker, ev, step, out_dir)
                    evaluations[step] = ev.metrics

            evaluate(0)
            metrics = train_dpo(groups["policy"], groups["reference"], tok, train, evals, d, tracker.log,
                                cfg.run.max_bad_steps)
            evaluate(steps)
            groups["policy"].broadcast(PolicyWorker.export, str(out_dir / "policy")).get()
            tok.save_pretrained(out_dir / "policy")
            return metrics, evaluations

    try:
        metrics, evaluations = with_restarts("DPO", attempt, cfg.run.max_restarts, partial(note_restart, tracker))
    finally:
        tracker.finish()
    return {**metrics, "evaluations": evaluations, "final_kl": None, "final_metrics": metrics,
            "policy_model": str(out_dir / "policy"), "metrics_file": str(tracker.metrics_path), "plot": None}
