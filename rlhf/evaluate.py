"""Policy evaluation on held-out prompts, for any task: the policy group samples; the gold function,
the reward role and the reference say how good, how rewarded and how far from the start it is.

Metrics (each present when its source is): eval/gold_score and eval/gold_stderr (the gold function,
standard error over prompts), eval/score (the PPO score as trained: weighted reward model and
functions) with eval/rm_score and eval/fn/<name>, eval/validation_score (the same with a validation
reward model in the reward model's place, where the reward role holds one), eval/kl (Σ log π/π_ref
over sampled tokens per sequence: an unbiased estimate of KL(π‖π_ref) at the sampling temperature),
eval/response_length,
eval/unfinished (the share of responses cut off at the length limit, without EOS). Each sample's row
holds its gold, score, validation_score and KL where measured.
Must not import ray: every group is any worker group with map/broadcast.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from models.generation import Generation, SamplingParams
from rlhf.algo.ppo import combine_scores, score_unfinished
from rlhf.algo.selection import per_prompt_means, stderr
from rlhf.batching import encode_prompt
from rlhf.data import Prompt, fields_of
from rlhf.functions import FunctionSpec, TaskFunction
from rlhf.scoring import RewardWorker, ScoreBatch
from rlhf.workers import PolicyWorker, ReferenceWorker


class EvalConfig(BaseModel):
    """Held-out evaluation of the policy (SFT stage, and every ppo.eval_every steps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(16, ge=1)  # response length of held-out evaluations
    temperature: float = Field(1.0, ge=0)  # sampling temperature of held-out evaluations (0: greedy)
    max_prompt_len: int = Field(48, ge=1)  # prompt truncation of held-out evaluations
    samples_per_prompt: int = Field(1, ge=1)  # responses sampled per held-out prompt (more: a smaller standard error)
    # The task's own measure of quality, fn(prompts, responses, **fields) -> list[float], as
    # "module:name" or "file.py:name" (or {function, timeout_s}); the embedded task's is
    # "rlhf.task:gold_scores". None: no gold score.
    gold_function: FunctionSpec | None = None


def sample(group, tok, prompts: list[Prompt], params: SamplingParams, max_prompt_len: int, seed: int = 0,
           batch_size: int = 256) -> list[Generation]:
    """Generations of the policy group for prompts, batch by batch (in order)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [encode_prompt(tok, p.model_text, max_prompt_len) for p in prompts[i:i + batch_size]]
        width = max(len(x) for x in ids)
        out.append(group.map(PolicyWorker.generate, ids, width, params, tok.eos_token_id, tok.pad_token_id,
                             seed + i).get())
    return out


@dataclass(frozen=True)
class GoldEval:
    mean: float  # mean gold score over prompts (each prompt's samples averaged first)
    stderr: float  # standard error of that mean over prompts: the yardstick for "beyond noise"


def summarize_gold(scores: list[float], samples: int = 1) -> GoldEval:
    """Mean and standard error over prompts of `samples` consecutive scores per prompt."""
    per_prompt = per_prompt_means(scores, samples)
    return GoldEval(statistics.fmean(per_prompt), stderr(per_prompt))


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # eval/... (see the module docstring)
    gold: GoldEval | None
    rows: list[dict]  # per sample: prompt, response, and gold / score where measured


@dataclass
class Judges:
    """Who scores the samples; each is optional. weights/rm_stats/clip combine the reward role's parts
    exactly as PPO does (rlhf.algo.ppo.combine_scores)."""

    gold: TaskFunction | None = None
    reward: object | None = None  # the PPO reward group
    reference: object | None = None  # the reference group
    weights: dict[str, float] | None = None
    rm_stats: dict[str, float] | None = None
    clip: float | None = None
    missing_eos_score: float | None = None  # the score of a response cut off at the length limit (PPO's)
    # The reward role holds a validation reward model (RewardWorker.validation_scores): each sample's score
    # again with it in the reward model's place (normalised by these stats where rm_stats is given).
    validation: bool = False
    validation_stats: dict[str, float] | None = None


def evaluate_policy(policy, tok, prompts: list[Prompt], cfg: EvalConfig, judges: Judges, seed: int = 0,
                    batch_size: int = 256) -> Evaluation:
    """Sample cfg.samples_per_prompt responses per prompt and measure them with every judge given."""
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    metrics: dict[str, float] = {}
    texts, lengths, done, kls, scores, validation, parts = [], [], [], [], [], [], {}
    for i, gen in enumerate(sample(policy, tok, repeated, params, cfg.max_prompt_len, seed, batch_size)):
        batch = ScoreBatch.of(tok, gen, repeated[i * batch_size:(i + 1) * batch_size])
        texts += batch.responses
        lengths += gen.response_mask.sum(-1).tolist()
        ended = batch.rollout.finished(tok.eos_token_id)
        done += ended.tolist()
        if judges.reference is not None:
            # Greedy samples have log-probs under the untempered logits; score the reference the same way.
            ref = judges.reference.map(ReferenceWorker.logprobs, batch.rollout, cfg.temperature or 1.0).get()
            kls += ((gen.logprobs - ref) * gen.response_mask).sum(-1).tolist()
        if judges.reward is not None:
            components = judges.reward.map(RewardWorker.scores, batch).get()
            combined = combine_scores(components, judges.weights, judges.rm_stats, judges.clip)
            scores += score_unfinished(combined, ended, judges.missing_eos_score).tolist()
            for k, v in components.items():
                parts.setdefault(k, []).append(v)
            if judges.validation:
                judged = components | {"rm": judges.reward.map(RewardWorker.validation_scores, batch).get()}
                stats = judges.validation_stats if judges.rm_stats is not None else None
                combined = combine_scores(judged, judges.weights, stats, judges.clip)
                validation += score_unfinished(combined, ended, judges.missing_eos_score).tolist()
    metrics["eval/response_length"] = statistics.fmean(lengths)
    metrics["eval/unfinished"] = 1.0 - statistics.fmean(done)
    rows = [{"prompt": p.judged, "response": t} for p, t in zip(repeated, texts, strict=True)]
    gold = None
    if judges.gold is not None:
        values = judges.gold([p.judged for p in repeated], texts, fields_of(repeated))
        gold = summarize_gold(values, cfg.samples_per_prompt)
        metrics |= {"eval/gold_score": gold.mean, "eval/gold_stderr": gold.stderr}
        for row, v in zip(rows, values, strict=True):
            row["gold"] = v
    if kls:
        metrics["eval/kl"] = statistics.fmean(kls)
    if scores:
        metrics["eval/score"] = statistics.fmean(scores)
        for k, v in parts.items():
            metrics["eval/rm_score" if k == "rm" else f"eval/fn/{k}"] = statistics.fmean(torch.cat(v).tolist())
        for row, v in zip(rows, scores, strict=True):
            row["score"] = v
    if validation:
        metrics["eval/validation_score"] = statistics.fmean(validation)
        for row, v in zip(rows, validation, strict=True):
            row["validation_score"] = v
    if kls:
        for row, v in zip(rows, kls, strict=True):
            row["kl"] = v
    return Evaluation(metrics, gold, rows)
