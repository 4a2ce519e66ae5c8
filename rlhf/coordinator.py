"""InstructGPT step 3: the phases of a PPO step, run by the driver (rlhf/schedules.py runs them in
order). It holds no weights and imports no Ray: the roles are worker groups it calls with `map`/`broadcast`.

One step: generate → score (reference, critic, reward and the policy's own log-probs in parallel)
→ shape rewards, GAE, whiten → minibatch updates of policy and critic → sync the generation path
→ log, evaluate, checkpoint. The reward role returns the score's parts (reward model, each reward
function); they are weighed and summed here, with the rest of the reward shaping.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from models.generation import SamplingParams
from rlhf.algo.advantages import estimate_advantages, leave_one_out, uniform_groups
from rlhf.algo.masked import masked_mean
from rlhf.algo.ppo import (
    SpreadScale,
    combine_scores,
    kl_estimate,
    loss_weights,
    score_unfinished,
    shape_rewards,
    truncated_is_weights,
)
from rlhf.algo.rollout import Rollout
from rlhf.batching import Encoded, LMBatch, balanced_order, collate_lm
from rlhf.data import DataConfig
from rlhf.ppo_config import PPOConfig
from rlhf.scoring import RewardWorker, ScoreBatch
from rlhf.timeline import COORDINATOR, Timeline
from rlhf.workers import CriticWorker, PolicyStep, PolicyWorker, ReferenceWorker

LogFn = Callable[[dict[str, float], int], None]
LR_KEYS = "ppo.policy.optim.lr / ppo.critic.optim.lr"


@dataclass
class Roles:
    policy: object
    reference: object
    critic: object | None  # None: a critic-free advantage estimator (ppo.advantage_estimator)
    reward: object
    generator: object | None = None  # ppo.schedule=async: the group that samples; None: the policy samples


class PhaseTimer:
    """One flat wall-clock timer per phase of a step; each phase also a span of the timeline, and what the
    driver spent on it: its group calls (round trips), the rank calls they fan out into, its own CPU time."""

    def __init__(self, timeline: Timeline | None = None):
        self.seconds: dict[str, float] = {}
        self.driver: dict[str, float] = {}
        self.timeline, self.start, self.end = timeline, time.time(), None

    @contextmanager
    def __call__(self, phase: str):
        start, cpu = time.perf_counter(), time.process_time()
        began = time.time()
        calls, tasks = (self.timeline.calls, self.timeline.tasks) if self.timeline is not None else (0, 0)
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
        self.end = time.time()
        self._add(f"time/driver_cpu/{phase}", time.process_time() - cpu)
        if self.timeline is not None:
            self.timeline.add(COORDINATOR, 0, phase, began, self.end)
            self._add(f"driver/calls/{phase}", self.timeline.calls - calls)
            self._add(f"driver/rank_calls/{phase}", self.timeline.tasks - tasks)

    def _add(self, key: str, value: float) -> None:
        self.driver[key] = self.driver.get(key, 0.0) + value

    def busy(self) -> dict[str, float]:
        """Each group's busy fraction over the step so far (timeline/<group>/busy)."""
        if self.timeline is None or self.end is None:
            return {}
        return {f"timeline/{g}/busy": v for g, v in self.timeline.busy(self.start, self.end).items()}


def prompt_batch(n_prompts: int, step: int, size: int, seed: int, repeat: int = 1) -> list[int]:
    """Indices of the prompts of `step` (each `repeat` times in a row): epochs of seeded shuffles, so a
    resumed run sees the same sequence."""
    out, start = [], step * size
    for i in range(start, start + size):
        epoch, pos = divmod(i, n_prompts)
        order = list(range(n_prompts))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        out += [order[pos]] * repeat
    return out


def generate(group, tok, prompts: list[list[int]], cfg: PPOConfig, seed: int):
    """The handle of `group` (the policy, or the generator) sampling responses to the prompts."""
    params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
    width = max(len(p) for p in prompts)
    return group.map(PolicyWorker.generate, prompts, width, params, tok.eos_token_id, tok.pad_token_id, seed)


class InOrder:
    """The handle of a `map` over reordered rows, giving its row results back in the original order."""

    def __init__(self, handle, order: torch.Tensor):
        self.handle, self.order = handle, order

    def get(self):
        out = self.handle.get()
        if isinstance(out, dict):
            return {k: self._restore(v) for k, v in out.items()}
        return self._restore(out)

    def _restore(self, value):
        if not isinstance(value, torch.Tensor):
            return value  # a metric
        restored = torch.empty_like(value)
        restored[self.order] = value
        return restored


def token_balanced(rollout: Rollout, dp: int) -> torch.Tensor | None:
    """The row order that gives each of `dp` ranks about the same number of tokens; None for one rank."""
    return None if dp == 1 else torch.tensor(balanced_order(rollout.attention_mask.sum(-1).tolist(), dp))


def map_by_tokens(group, fn, batch: Rollout | ScoreBatch, *args):
    """group.map over the rows reordered so that every data-parallel rank's share holds about the same
    number of tokens (balanced_order), results back in the original row order. Packed forwards cost
    what their tokens cost, so an even split by rows alone can leave one rank with most of the work."""
    order = token_balanced(batch if isinstance(batch, Rollout) else batch.rollout, group.spec.dp_size)
    if order is None:
        return group.map(fn, batch, *args)
    return InOrder(group.map(fn, batch.select(order), *args), order)


def score(roles: Roles, batch: ScoreBatch, cfg: PPOConfig, step: int) -> tuple[Rollout, dict[str, torch.Tensor]]:
    """Old and reference log-probs, values (with a critic) and the score's parts of one rollout, from
    the groups at once (under ppo.schedule=colocated, one after another in this order: each call first
    takes the devices from the last group).

    old_logprobs are recomputed by the training path although sampling recorded them: the ratio in
    the PPO loss must start at exactly 1 under the weights that will be trained, and comparing the two
    (check/logprob_gap_max) catches any train/inference mismatch the moment it appears. They come from
    the distribution that sampled (temperature, top-k, top-p); the reference's from its temperature
    distribution alone, which has full support, so the KL of the sampling policy stays finite. Between
    recompute steps (ppo.recompute_logprobs_every) the sampler's log-probs serve: one forward fewer."""
    r = batch.rollout
    recompute = step % cfg.recompute_logprobs_every == 0
    handles = (map_by_tokens(roles.policy, PolicyWorker.logprobs, r, cfg.temperature, cfg.top_k, cfg.top_p)
               if recompute else None,
               map_by_tokens(roles.reference, ReferenceWorker.logprobs, r, cfg.temperature) if cfg.kl_coef > 0
               else None,
               map_by_tokens(roles.reward, RewardWorker.scores, batch),
               map_by_tokens(roles.critic, CriticWorker.values, r) if roles.critic is not None else None)
    r.old_logprobs, r.ref_logprobs, components, r.values = (h.get() if h else None for h in handles)
    return r, components


def shape(r: Rollout, components: dict[str, torch.Tensor], cfg: PPOConfig, kl_coef: float,
          stats: dict | None, eos_id: int | None = None, spread: SpreadScale | None = None) -> dict[str, float]:
    """Fill scores, rewards, advantages and returns in place; return the rollout's metrics. Responses
    that did not end with `eos_id` score cfg.missing_eos_score (no eos_id: none is checked). With
    cfg.score_scale "prompt_spread", `spread` takes this batch's scores and divides the baselined ones. Without
    recomputed old log-probs (see `score`) the sampler's serve, and there is no gap to check; without a
    KL penalty (β = 0) the reference was not run, and the KL is measured at evaluations only."""
    mask = r.response_mask
    recomputed = r.old_logprobs is not None
    if not recomputed:
        r.old_logprobs = r.gen_logprobs.clone()
    has_kl = r.ref_logprobs is not None
    kl = kl_estimate(cfg.kl_estimator, r.old_logprobs, r.ref_logprobs) * mask if has_kl else torch.zeros_like(
        r.old_logprobs)  # (B, R)
    r.scores = combine_scores(components, cfg.score_weights, stats if cfg.normalize_scores else None,
                              cfg.score_clip)
    done = r.finished(eos_id) if eos_id is not None else torch.ones_like(r.scores, dtype=torch.bool)
    r.scores = score_unfinished(r.scores, done, cfg.missing_eos_score)
    scores = r.scores
    if cfg.score_baseline == "leave_one_out":
        scores = leave_one_out(scores, cfg.samples_per_prompt)
    scale = {}
    if cfg.score_scale == "prompt_spread":
        assert spread is not None, "score_scale=prompt_spread needs the loop's SpreadScale"
        scale = {"reward/spread": spread.update(r.scores, cfg.samples_per_prompt)}
        scores = scores / scale["reward/spread"]
    r.rewards = shape_rewards(scores, kl, mask, kl_coef if cfg.kl_penalty == "reward" else 0.0)
    # GAE's advantages are whitened over every valid token of the whole rollout batch, not per minibatch.
    r.advantages, r.returns = estimate_advantages(cfg.advantage_estimator, r.rewards, mask, r.values,
                                                  cfg.samples_per_prompt, cfg.gamma, cfg.lam, cfg.grpo_std,
                                                  cfg.whiten_advantages)
    gap = (r.gen_logprobs - r.old_logprobs).abs()[mask] if recomputed else None
    tis = {}
    if (cfg.rollout == "vllm" or cfg.schedule == "async") and cfg.tis_cap is not None:
        r.is_weights = truncated_is_weights(r.old_logprobs, r.gen_logprobs, mask, cfg.tis_cap)
        raw = (r.old_logprobs - r.gen_logprobs).exp()[mask]
        tis = {"rollout/tis_weight_mean": float(r.is_weights[mask].mean()) if mask.any() else 1.0,
               "rollout/tis_truncated_fraction": float((raw > cfg.tis_cap).float().mean()) if mask.any() else 0.0}
    parts = {f"reward/{'rm_score' if k == 'rm' else 'fn/' + k}": float(v.mean()) for k, v in components.items()}
    metrics = {"reward/score": float(r.scores.mean()), **parts, "reward/score_baselined": float(scores.mean()), **scale,
               "reward/total": float(r.rewards.sum(-1).mean()), "kl/coef": kl_coef,
               "response/length": float(mask.sum(-1).float().mean()),
               "response/unfinished": float((~done).float().mean())}
    if has_kl:
        metrics["kl/sequence"] = float(kl.sum(-1).mean())
    if gap is not None:
        metrics["check/logprob_gap_max"] = float(gap.max()) if gap.numel() else 0.0
        metrics["check/logprob_gap_mean"] = float(gap.mean()) if gap.numel() else 0.0
    metrics |= tis
    if r.values is not None:
        metrics["critic/values"] = float(masked_mean(r.values, mask))
    return metrics


def update(roles: Roles, r: Rollout, cfg: PPOConfig, ptx: PretrainingMix | None, step: int,
           prompt_ids: list[int], kl_coef: float, trainers: tuple[str, ...] = ("critic", "policy")
           ) -> tuple[dict[str, float], str | None]:
    """ppo_epochs × minibatches updates of the roles in `trainers`; policy and critic train on each
    minibatch at the same time (trained one after the other, on the same minibatches, they end the same).
    Every update is sent before any answer is awaited: a group runs its calls in the order sent, so
    the updates are the same, and neither group waits for the other's minibatch (nor for the driver)
    between two of its own.
    During the first critic_warmup_steps the policy stays fixed while the critic fits the returns:
    a critic initialised from the reward model predicts scores, not values, and its early advantages
    are noise that would push the policy at random. Returns the metrics and, if a worker skipped an
    update for a non-finite loss or gradient, which one and the prompts of its minibatch."""
    hp = PolicyStep(cfg.clip_eps, cfg.entropy_coef, cfg.ptx_coef, cfg.temperature, cfg.clip_eps_high, cfg.top_k,
                    cfg.top_p, kl_coef if cfg.kl_penalty == "loss" else 0.0, cfg.kl_estimator, cfg.target_kl)
    trains_policy = "policy" in trainers and (roles.critic is None or step >= cfg.critic_warmup_steps)
    trains_critic = "critic" in trainers and roles.critic is not None
    dp = roles.policy.spec.dp_size
    # Fewer minibatches when rows were filtered out: every data-parallel rank needs a row.
    n_minibatches = min(cfg.minibatches, r.sequences.shape[0] // dp)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    sent = []  # (epoch, minibatch, its rows, the groups' handles), in the order sent
    for epoch in range(cfg.ppo_epochs):
        for j, index in enumerate(torch.randperm(r.sequences.shape[0], generator=gen).chunk(n_minibatches)):
            mb = r.select(index)
            mb.loss_weights = loss_weights(mb.response_mask, cfg.loss_agg, cfg.max_new_tokens)
            handles = []
            if trains_critic:
                handles.append(map_by_tokens(roles.critic, CriticWorker.value_step, mb, cfg.value_clip))
            if trains_policy:
                # The pretraining batch is a function of its position: a resumed run draws the same ones.
                position = (step * cfg.ppo_epochs + epoch) * cfg.minibatches + j
                order = token_balanced(mb, dp)  # each rank's share of the minibatch: about the same tokens
                if order is not None:
                    mb = mb.select(order)
                batch = {"rollout": mb, "ptx": ptx.batch(position, dp) if ptx else None, "first": not sent}
                handles.append(roles.policy.map(PolicyWorker.ppo_step, batch, hp))
            sent.append((epoch, j, index, handles))
    metrics: dict[str, list[float]] = {}
    problem = None
    for epoch, j, index, handles in sent:
        for h in handles:
            out = h.get()
            for k, v in out.items():
                metrics.setdefault(k, []).append(v)
            skipped = [k for k in out if k.endswith("/skipped") and out[k] > 0]
            if skipped and problem is None:
                ids = sorted({prompt_ids[i] for i in index.tolist()})
                problem = f"non-finite {skipped[0].split('/')[0]} loss or gradient in epoch {epoch + 1}, " \
                          f"minibatch {j + 1} (prompts {ids})"
    return {k: sum(v) / len(v) for k, v in metrics.items()}, problem


def filter_groups(r: Rollout, cfg: PPOConfig, prompt_ids: list[int], dp: int
                  ) -> tuple[Rollout | None, list[int], dict[str, float]]:
    """The rollout without the prompts whose samples all scored the same (ppo.filter_groups), the
    prompt ids of the rows kept, and the share kept; None when fewer rows than data-parallel ranks remain."""
    if not cfg.filter_groups:
        return r, prompt_ids, {}
    keep = (~uniform_groups(r.scores, cfg.samples_per_prompt)).nonzero().flatten()
    metrics = {"filter/kept_fraction": len(keep) / len(prompt_ids)}
    if len(keep) < dp:
        return None, [], metrics
    return r.select(keep), [prompt_ids[i] for i in keep.tolist()], metrics


def check_stats(cfg: PPOConfig, stats: dict | None) -> None:
    """normalize_scores without the reward model's statistics would train on raw scores in silence."""
    if cfg.normalize_scores and "rm" in cfg.score_weights and stats is None:
        raise ValueError("ppo.normalize_scores=true, but no reward statistics were given (reward_stats.json "
                         "of the reward model): give them, or set ppo.normalize_scores=false")


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, SIGUSR1); `step` is the step saved first, or None."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


def nonfinite_rollout(r: Rollout, prompt_ids: list[int]) -> str | None:
    """Which of the rollout's scores, rewards or advantages are NaN or infinite, and for which prompts."""
    for name in ("scores", "rewards", "advantages"):
        t = getattr(r, name)
        bad = ~torch.isfinite(t)
        if bad.any():
            rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero().flatten().tolist()
            return f"non-finite {name} for prompts {sorted({prompt_ids[i] for i in rows})}"
    return None


class PretrainingMix:
    """The policy's mixed-in LM loss (the γ term). Plain text is InstructGPT's pretraining mix: chunks of
    ptx_max_len tokens, every token a target (eq. 2). Demonstrations (a .jsonl or .json file, read as
    sft.train_data is) are learned as SFT learns them, the responses the targets: the SFT loss as a regulariser
    that keeps the policy on responses like the demonstrations while it climbs the reward model (Liu et al.
    2024, "Provably mitigating overoptimization in RLHF: your SFT loss is implicitly an adversarial
    regularizer"). Batch i is drawn with its own seeded generator: no iterator state, so a resumed run
    continues the mix exactly where the interrupted one was."""

    def __init__(self, tok, cfg: PPOConfig, data: DataConfig | None = None):
        from rlhf.data import DEFAULT_KEYS, load_sft, load_text
        from rlhf.files import is_record_file
        from rlhf.sft import encode_all

        n, self.pad_id = cfg.ptx_max_len, tok.pad_token_id
        if is_record_file(cfg.ptx_data):
            demonstrations = load_sft(cfg.ptx_data, data or DEFAULT_KEYS)
            self.rows: torch.Tensor | list[Encoded] = encode_all(tok, demonstrations, n)[0]
        else:
            ids = tok(load_text(cfg.ptx_data), add_special_tokens=False)["input_ids"]
            self.rows = torch.tensor([ids[i:i + n] for i in range(0, len(ids) - n + 1, n)])  # (N, ptx_max_len)
            if not len(self.rows):
                raise ValueError(f"{cfg.ptx_data}: fewer than ptx_max_len={n} tokens")
        self.size, self.seed = cfg.ptx_batch_size, cfg.seed

    def batch(self, i: int, ranks: int = 1) -> LMBatch:
        """Batch i, ptx_batch_size rows rounded up to a multiple of `ranks`: every data-parallel rank
        gets the same number of rows (none an empty shard), so their mean losses average exactly (for text, whose
        rows are all ptx_max_len tokens; demonstrations' rows weigh their tokens by their rank's count)."""
        n = -(-self.size // ranks) * ranks
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        picked = torch.randint(len(self.rows), (n,), generator=gen)
        if isinstance(self.rows, list):
            return collate_lm([self.rows[j] for j in picked.tolist()], self.pad_id)
        rows = self.rows[picked]
        mask = torch.ones_like(rows, dtype=torch.bool)
        return LMBatch(rows, mask, mask)
