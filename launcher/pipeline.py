"""Step 3 (PPO) with its four worker groups, and the whole pipeline SFT → RM → PPO (`make demo`)."""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from launcher.config import Config, save_config
from launcher.stages import (
    build_tokenizer,
    checkpoint_source,
    evaluate_gold,
    prepare_data,
    record_placement,
    run_rm,
    run_sft,
)
from launcher.tracking import Tracker
from launcher.worker_group import LocalGroup, build_groups, shutdown_groups
from rlhf.coordinator import Roles, train_ppo
from rlhf.data import load_prompts
from rlhf.evaluate import GoldEval
from rlhf.reward_model import read_reward_stats
from rlhf.workers import CriticWorker, PolicyWorker, ReferenceWorker, RewardWorker

log = logging.getLogger("instructrl")
ROLES = ("policy", "reference", "critic", "reward")


def role_specs(cfg: Config, policy: Path, reward: Path, critic: Path, n_updates: int) -> dict:
    """(worker class, group spec, constructor args) of each role."""
    p = cfg.ppo
    src = partial(checkpoint_source, cfg)
    micro = max(1, p.prompts_per_step // p.minibatches)
    return {
        "policy": (PolicyWorker, p.policy.group, (src(policy), p.policy.engine, p.policy.optim, n_updates, micro), {}),
        "reference": (ReferenceWorker, p.reference.group, (src(policy), p.reference.engine), {}),
        "critic": (CriticWorker, p.critic.group, (src(critic), p.critic.engine, p.critic.optim, n_updates, micro), {}),
        "reward": (RewardWorker, p.reward.group, (src(reward), p.reward.engine), {}),
    }


@contextmanager
def start_roles(cfg: Config, specs: dict):
    if cfg.run.backend == "local":
        groups = {role: LocalGroup(cls, *args) for role, (cls, _, args, _) in specs.items()}
        try:
            yield Roles(**groups)
        finally:
            for g in groups.values():
                g.shutdown()
        return
    from launcher.cluster import init_ray

    init_ray(cfg.run.ray_address)
    groups = build_groups(specs, name_prefix=f"{cfg.run.name}-")
    try:
        yield Roles(**groups)
    finally:
        shutdown_groups(groups)


def checkpoint_paths(root: Path) -> dict[str, Path]:
    return {"policy": root / "policy", "critic": root / "critic", "state": root / "coordinator.json"}


def run_ppo(cfg: Config, data: dict[str, Path] | None = None, tok=None) -> dict:
    """Step 3 on four groups. Returns the held-out gold scores of the SFT and PPO policies (embedded
    task), the final KL, and where the models and logs are."""
    data = data or prepare_data(cfg)
    save_config(cfg, cfg.run.dir)
    tok = tok or build_tokenizer(cfg, data)
    p, run_dir = cfg.ppo, cfg.run.dir
    policy_dir = Path(p.policy_init) if p.policy_init else run_dir / "sft"
    reward_dir = Path(p.reward_init) if p.reward_init else run_dir / "rm"
    critic_dir = Path(p.critic_init) if p.critic_init else reward_dir
    for what, path in (("policy", policy_dir), ("reward", reward_dir), ("critic", critic_dir)):
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no {what} model (run the earlier stages or set ppo.{what}_init)")
    prompts = load_prompts(data["ppo_train"])
    eval_prompts = load_prompts(data["ppo_eval"]) if "ppo_eval" in data else []
    has_gold = cfg.uses_embedded_task
    out_dir = run_dir / "ppo"
    tracker = Tracker(out_dir, f"{cfg.run.name}-ppo", cfg.wandb, cfg.model_dump(mode="json"), "ppo",
                      group=cfg.run.name)
    stats = read_reward_stats(reward_dir) if p.normalize_scores else None
    n_updates = p.steps * p.ppo_epochs * p.minibatches
    gold: dict[int, GoldEval] = {}
    log.info("PPO: %d steps × %d prompts; policy %s, reward %s, critic %s", p.steps, p.prompts_per_step,
             policy_dir, reward_dir, critic_dir)
    with start_roles(cfg, role_specs(cfg, policy_dir, reward_dir, critic_dir, n_updates)) as roles:
        record_placement(out_dir, {r: getattr(roles, r) for r in ("policy", "reference", "critic", "reward")})

        def evaluate(step: int) -> None:
            if has_gold and eval_prompts:
                gold[step] = evaluate_gold(cfg, roles.policy, tok, eval_prompts, tracker, step)

        def checkpoint(step: int, state: dict) -> None:
            paths = checkpoint_paths(out_dir / f"checkpoint-{step}")
            roles.policy.broadcast(PolicyWorker.save_state, str(paths["policy"]), state).get()
            roles.critic.broadcast(CriticWorker.save_state, str(paths["critic"]), state).get()
            paths["state"].write_text(json.dumps(state))

        start = None
        if p.resume:
            paths = checkpoint_paths(Path(p.resume))
            start = json.loads(paths["state"].read_text())
            roles.policy.broadcast(PolicyWorker.load_state, str(paths["policy"])).get()
            roles.critic.broadcast(CriticWorker.load_state, str(paths["critic"])).get()
            roles.policy.broadcast(PolicyWorker.sync_generation).get()
            log.info("PPO: resumed from %s at step %d", p.resume, start["step"])
        metrics = train_ppo(roles, tok, prompts, p, tracker.log, stats, evaluate, checkpoint, start)
        roles.policy.broadcast(PolicyWorker.export, str(out_dir / "policy")).get()
        tok.save_pretrained(out_dir / "policy")
        info = {role: getattr(roles, role).info for role in ROLES}
    tracker.finish()
    return {"gold": gold, "final_kl": metrics.get("kl/sequence"), "final_metrics": metrics,
            "policy_model": str(out_dir / "policy"), "metrics_file": str(tracker.metrics_path),
            "wandb_dir": str(out_dir / "wandb"), "ranks": info}


def run_pipeline(cfg: Config) -> dict:
    """SFT → reward model → PPO in one run directory; ends with a summary."""
    data = prepare_data(cfg)
    tok = build_tokenizer(cfg, data)
    sft = run_sft(cfg, data, tok)
    rm = run_rm(cfg, data, tok)
    ppo = run_ppo(cfg, data, tok)
    gold = ppo["gold"]
    first, last = gold.get(0), gold[max(gold)] if gold else None
    summary = {
        "sft_gold_score": first.mean if first else None, "sft_gold_stderr": first.stderr if first else None,
        "ppo_gold_score": last.mean if last else None, "ppo_gold_stderr": last.stderr if last else None,
        "final_kl": ppo["final_kl"], "sft_eval_loss": sft["eval/loss"], "rm_eval_accuracy": rm["eval/accuracy"],
        "models": {"sft": sft["model"], "reward": rm["model"], "policy": ppo["policy_model"]},
        "metrics": [sft["metrics_file"], rm["metrics_file"], ppo["metrics_file"]],
        "wandb": f"wandb sync {cfg.run.dir}/*/wandb/offline-run-*",
    }
    (cfg.run.dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    return summary


def print_summary(s: dict) -> None:
    print("\n== instructrl pipeline summary ==")
    if s["sft_gold_score"] is not None:
        gain = s["ppo_gold_score"] - s["sft_gold_score"]
        noise = math.hypot(s["sft_gold_stderr"], s["ppo_gold_stderr"])
        print(f"held-out gold score   SFT policy: {s['sft_gold_score']:.3f} ± {s['sft_gold_stderr']:.3f}   "
              f"PPO policy: {s['ppo_gold_score']:.3f} ± {s['ppo_gold_stderr']:.3f}   "
              f"gain {gain:+.3f} ({gain / noise if noise else float('inf'):.1f} standard errors)")
    print(f"final KL(PPO ‖ SFT) per sequence: {s['final_kl']:.3f}")
    print(f"SFT eval loss: {s['sft_eval_loss']:.3f}   reward model held-out pair accuracy: {s['rm_eval_accuracy']:.3f}")
    for name, path in s["models"].items():
        print(f"{name} model (HF format): {path}")
    print(f"metrics: {', '.join(s['metrics'])}\nW&B (offline): {s['wandb']}")
