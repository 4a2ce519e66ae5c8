"""Steps 2 and 3 iterated (InstructGPT §3: "Steps 2 and 3 can be iterated continuously; more comparison
data is collected on the current best policy, which is used to train a new RM and then a new policy").

`instructrl pipeline` with rm.labeller runs run.rounds rounds, each of them
    sample K responses per prompt (the current policy, and the SFT policy's share, sample.sft_share)
    → label them (a labeller function, or people on the labelling page) → a reward model on every
    comparison so far → PPO continued from the current policy, its KL still taken to the SFT policy.
Round 1 samples the SFT policy. Each part leaves a file or a stage result behind (<run>/labels,
<run>/rm, <run>/ppo; then <run>/round-<n>/...), so a preempted job resumes in the round and the part it
stopped in. Departure: each round's PPO starts a fresh optimizer and learning-rate schedule (the policy's
weights carry over); its critic starts from that round's reward model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from launcher.config import Config
from launcher.plots import plot_overoptimization
from launcher.preflight import Inputs
from launcher.sampling import sample_responses
from models.errors import InputError
from rlhf.data import comparison_from_row, write_jsonl
from rlhf.export_choice import exported_step
from rlhf.labelling import PolicyShare, label_items, load_items

log = logging.getLogger("instructrl")


class AwaitingLabels(Exception):
    """rm.labeller=human: a round's file waits for people to rank it on the labelling page."""


def round_config(cfg: Config, r: int) -> Config:
    """Round r's config: its stages under round-<r>/ (after the first), its share of the PPO steps."""
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"round": r}),
                                  "ppo": cfg.ppo.model_copy(update={"steps": cfg.ppo.steps // cfg.run.rounds})})


def sample_round(rc: Config, inputs: Inputs, prompts: list, policy: Path, sft_policy: Path) -> Path:
    """The round's file to label: K responses per prompt from the current policy and the SFT policy's share."""
    path = rc.run.stage_dir("labels") / "to_label.jsonl"
    if path.exists():
        return path
    share = rc.sample.sft_share if policy != sft_policy else 1.0
    policies = [PolicyShare(path=str(policy), share=1 - share)] if share < 1 else []
    policies += [PolicyShare(path=str(sft_policy), share=share)] if share > 0 else []
    sc = rc.model_copy(update={"sample": rc.sample.model_copy(update={"policies": policies})})
    log.info("round %d: sampling %d prompts × %d responses from %s", rc.run.round, len(prompts), rc.sample.k,
             ", ".join(f"{p.path} ({p.share:.0%})" for p in policies))
    items = sample_responses(sc, prompts, inputs.tok, [Path(p.path) for p in policies],
                             rc.sample.seed + rc.run.round, id_prefix=f"r{rc.run.round}-")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, [item.as_record() for item in items])
    return path


def label_round(rc: Config, inputs: Inputs, to_label: Path) -> list[dict]:
    """The round's comparisons: made by the labeller function now, or read from the labelling page's file."""
    out = to_label.with_suffix(".comparisons.jsonl")
    items = load_items(to_label)
    if out.exists():
        records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    elif inputs.labeller is None:
        records = []
    else:
        records, left_out = label_items(inputs.labeller, items)
        write_jsonl(out, records)
        if left_out:
            log.info("round %d: %d of %d prompts left out (fewer than two different responses after ties)",
                     rc.run.round, len(left_out), len(items))
    if not records and inputs.labeller is not None:
        raise InputError(f"rm.labeller ranked none of round {rc.run.round}'s {len(items)} prompts in {to_label}: "
                         f"every prompt's responses tied or repeated one another; see {out}")
    if not records:
        raise AwaitingLabels(f"round {rc.run.round}: {to_label} waits for people to rank it: run `instructrl label "
                             f"{to_label}`, then the same command with run.resume=true")
    labelled = {r["id"] for r in records}
    log.info("round %d: %d comparisons on %d of %d prompts (%s)", rc.run.round, len(records), len(labelled),
             len(items), ", ".join(sorted({r["labeller"]["name"] for r in records})))
    return [{**r, "where": f"{out}:{n}"} for n, r in enumerate(records, 1)]


def round_inputs(rc: Config, inputs: Inputs, rounds_labels: list[list[dict]], policy: Path, sft_policy: Path,
                 last_rm: Path | None) -> Inputs:
    """What round r's reward model and PPO read: every comparison so far (and rm.train_data's), held out as
    rm.eval_data says or else the last 1/20 of each round's own; the policy so far; the SFT reference."""
    train, held_out = (list(inputs.rm[0]), list(inputs.rm[1])) if inputs.rm else ([], [])
    hold = not held_out  # else rm.eval_data (or rm.train_data's split) is every round's held-out set
    for records in rounds_labels:
        comparisons = [comparison_from_row(r["where"], r, rc.data) for r in records]
        n = max(1, len(comparisons) // 20) if hold and len(comparisons) > 1 else 0
        train += comparisons[:len(comparisons) - n]
        held_out += comparisons[len(comparisons) - n:]
    rm_init = last_rm if rc.rm.rounds_init == "continue" and last_rm is not None else inputs.models["rm_init"]
    reward = rc.run.stage_dir("rm")
    critic = Path(rc.ppo.critic_init) if rc.ppo.critic_init else reward
    models = {**inputs.models, "policy": policy, "reference": sft_policy, "rm_init": rm_init, "reward": reward,
              "critic": critic}
    return replace(inputs, rm=(train, held_out), models=models, reward_stats=None,
                   resume=inputs.resume if rc.run.round == 1 else None)


def run_rounds(cfg: Config, inputs: Inputs, stages: tuple[str, ...], run_stage) -> dict:
    """SFT (when this run has demonstrations), then run.rounds rounds; each round's figures in the summary."""
    sft = run_stage(cfg, "sft", inputs) if "sft" in stages else None
    sft_policy = inputs.models["policy"]
    n = len(inputs.label_pool) // cfg.run.rounds
    policy, last_rm, labels, rounds, evaluations, round_of = sft_policy, None, [], [], {}, {}
    for r in range(1, cfg.run.rounds + 1):
        rc = round_config(cfg, r)
        to_label = sample_round(rc, inputs, inputs.label_pool[(r - 1) * n:r * n], policy, sft_policy)
        labels.append(label_round(rc, inputs, to_label))
        rin = round_inputs(rc, inputs, labels, policy, sft_policy, last_rm)
        rm = run_stage(rc, "rm", rin)
        ppo = run_stage(rc, "ppo", rin)
        policy, last_rm = Path(ppo["policy_model"]), Path(rm["model"])
        offset = (r - 1) * rc.ppo.steps
        # a later round's step 0 is the policy the round before exported, whose evaluation that round holds
        kept = {offset + s: m for s, m in ppo["evaluations"].items() if s or r == 1}
        evaluations |= kept
        round_of |= dict.fromkeys(kept, r)
        rounds.append(round_summary(r, ppo, rm, sum(len(x) for x in labels), len(rin.rm[0])))
    plot = None
    if any("eval/gold_score" in m for m in evaluations.values()):
        plot = str(plot_overoptimization(evaluations, cfg.run.dir / "overoptimization.png", round_of))
    step = exported_step(ppo)
    last = {**ppo, "evaluations": evaluations, "plot": plot, "exported_step": None if step is None else offset + step}
    return {"sft": sft, "rm": rm, "ppo": last, "rounds": rounds}


def round_summary(r: int, ppo: dict, rm: dict, comparisons: int, trained_on: int) -> dict:
    evals = ppo["evaluations"]
    first, last = (evals[min(evals)], evals[exported_step(ppo)]) if evals else ({}, {})
    return {"round": r, "comparisons_so_far": comparisons, "rm_trained_on": trained_on,
            "rm_eval_accuracy": rm.get("eval/accuracy"), "rm_stop": rm.get("stop_reason"),
            "start_gold": first.get("eval/gold_score"), "gold": last.get("eval/gold_score"),
            "gold_stderr": last.get("eval/gold_stderr"), "kl": last.get("eval/kl"),
            "policy": ppo["policy_model"]}
