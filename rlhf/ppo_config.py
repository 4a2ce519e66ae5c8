"""Configuration of InstructGPT step 3 (PPO): the loop's hyperparameters and the four roles' layouts.

The defaults were chosen on the task suite (bench/tasks: nine small tasks of different kinds, plus
the embedded one), the KL penalty leave-one-task-out (docs/results.md has the sweeps and what they
leave short): 300 steps × 128 rollouts (32 prompts × 4 samples, leave-one-out baseline), a per-token
KL penalty (k1) with a fixed β = 0.1, 4 PPO epochs × 4 minibatches,
policy lr 2e-4 with cosine decay to 2e-5, critic lr 3e-4 after 4 warm-up steps, cut-off responses
scored −1. The rest follows InstructGPT (Ouyang et al. 2022, §3.5 and appendix C.4): γ = 1,
λ = 0.95, clip 0.2, score normalised with the reward model's held-out statistics. InstructGPT's
own β = 0.02 and lr ~1e-5 are for 1.3B–175B models and far more rollouts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from parallel.engine import EngineConfig, OptimConfig
from parallel.mesh import GroupSpec
from rlhf.algo.averaging import evaluation_steps
from rlhf.functions import FunctionSpec

# The trained roles' optimisers by default (chosen on the task suite): constant after no warm-up for
# the critic; cosine decay to a tenth for the policy, whose last steps at a constant rate undo gains
POLICY_OPTIM = OptimConfig(lr=2e-4, warmup_steps=0, min_lr_ratio=0.1)
CRITIC_OPTIM = OptimConfig(lr=3e-4, warmup_steps=0, min_lr_ratio=1.0)


class RoleConfig(BaseModel):
    """One role's group size, placement and engine; optim for the trained roles only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: GroupSpec = GroupSpec()
    engine: EngineConfig = EngineConfig()
    optim: OptimConfig = OptimConfig(lr=1e-5, warmup_steps=0, min_lr_ratio=1.0)


class PPOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: str | None = None  # None: the embedded task's PPO prompts
    eval_prompts: str | None = None  # held-out prompts of every evaluation; None: the last 1/20 of prompts (≤ 500)
    policy_init: str | None = None  # policy and reference checkpoint; None: this run's sft/, else model.pretrained
    # The learned reward: "auto" is this run's rm/ (trained by `instructrl rm`, or by the pipeline's
    # step 2); a path is that HF checkpoint; null means none (the score is the reward functions'
    # alone, and no reward-model group is started).
    reward_model: str | None = "auto"
    reward_model_weight: float = 1.0  # weight of the (normalised) reward-model score in the PPO score
    # Programmatic rewards: [{function: "module:name" or "file.py:name", weight, timeout_s}, ...],
    # called batched as fn(prompts, responses, **fields) in the reward group's ranks. The PPO
    # score is reward_model_weight × RM score + Σ weight × function score.
    reward_functions: list[FunctionSpec] = []
    critic_init: str | None = None  # None: the reward model (the InstructGPT choice), else the policy's start
    steps: int = Field(300, ge=1)  # PPO iterations (generate → score → update → sync); with patience, the most
    # Stop once this many held-out evaluations in a row (every eval_every steps) have not raised the objective
    # (the score − kl_coef × KL per response, judged as `export` judges it) by more than one standard error over
    # prompts, measured from the last evaluation that did (rlhf/algo/selection.py, `plateau`; the first mark
    # is the first evaluation after the start). The learning rate decays over `decay_steps` (else `steps`), and
    # no stop comes before it. It never reads the gold. null: every step runs.
    patience: int | None = Field(None, ge=1)
    # The learning rates' cosine spans this many steps (at most `steps`) and then stays at its floor
    # (optim.min_lr_ratio), and ppo.patience does not stop a run before it: the steps beyond are the floor's,
    # run while the held-out objective still rises. null: the cosine spans `steps` and patience may stop anywhere.
    decay_steps: int | None = Field(None, ge=1)
    prompts_per_step: int = Field(128, ge=1)  # rollouts per step (prompts × samples_per_prompt)
    samples_per_prompt: int = Field(4, ge=1)  # responses sampled per prompt (> 1 for the leave-one-out baseline)
    # "leave_one_out": subtract from each score the mean score of the other samples of its prompt.
    # A departure from InstructGPT (which relies on the critic alone): a learned reward's level varies
    # far more across prompts than across responses to one prompt, and the critic learns that
    # prompt-level baseline slowly; removing it leaves the within-prompt preference the RM was trained on.
    score_baseline: Literal["none", "leave_one_out"] = "leave_one_out"
    # "prompt_spread": divide the (baselined) scores by the running root-mean within-prompt variance of
    # the scores before the KL penalty is added, so that β is in units of one such standard deviation on
    # every task (a sharp reward model and a soft one then meet the same β; docs/ppo.md). "none": as given.
    score_scale: Literal["none", "prompt_spread"] = "none"
    # How advantages are estimated (docs/algorithms.md): "gae" with the critic (PPO), or without a
    # critic from the samples themselves: "grpo" (group mean and std of each prompt's samples),
    # "rloo" (leave-one-out mean), "reinforce_pp" (returns-to-go whitened over the batch). Without
    # GAE no critic group is started; critic_init, critic.*, value_clip and critic_warmup_steps do nothing.
    advantage_estimator: Literal["gae", "grpo", "rloo", "reinforce_pp"] = "gae"
    grpo_std: bool = True  # GRPO divides by the group's std; false: Dr. GRPO (Liu et al. 2025)
    # How the per-token losses of a minibatch are summed (exact over data-parallel ranks): token_mean
    # (every token alike), seq_mean_token_mean (every response alike), seq_mean_token_sum_norm
    # (Σ tokens / (responses × max_new_tokens), Dr. GRPO)
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    # Where the KL to the reference goes: "reward" (−β·KL per token in the reward, InstructGPT) or
    # "loss" (+β·KL estimate in the policy loss, GRPO)
    kl_penalty: Literal["reward", "loss"] = "reward"
    # Samples of a prompt that all score the same carry no group-relative signal: drop them from the
    # update (DAPO's dynamic-sampling filter, without resampling)
    filter_groups: bool = False
    max_prompt_len: int = Field(48, ge=1)  # prompts are left-truncated to this many tokens
    max_new_tokens: int = Field(16, ge=1)  # response length limit
    temperature: float = Field(1.0, gt=0)  # sampling temperature of rollouts
    top_k: int = Field(0, ge=0)  # 0: off
    top_p: float = Field(1.0, gt=0, le=1)  # 1.0: off (nucleus sampling otherwise)
    # Old log-probs recomputed by the training path every this many steps (1: every step); the steps
    # between reuse the sampler's, which are of the same weights and distribution but come from the
    # KV-cache path. check/logprob_gap_max compares both on the recompute steps: keep 1 if it exceeds ~1e-4.
    recompute_logprobs_every: int = Field(1, ge=1)
    # Who samples: "builtin" (the policy's own KV-cache generation) or "vllm" (a vLLM engine in each policy
    # rank, its weights replaced in memory after every update; `pip install -e '.[vllm]'`, on CPU `make vllm`).
    # vLLM's log-probs differ from the trainer's; each token's surrogate is then weighted by
    # min(π_old/π_vllm, tis_cap) (truncated importance sampling; null: no correction).
    rollout: Literal["builtin", "vllm"] = "builtin"
    tis_cap: float | None = Field(2.0, gt=0)
    # "sync": generate → score → train → sync, each phase waiting for the last. "async": a generator group
    # (`generator`, a copy of the policy for sampling) draws step t + 1's samples while the policy trains on
    # step t's, with the weights of before that update: one update stale, each token's surrogate weighted
    # by min(π_old/π_sampler, tis_cap) as for vLLM. The new weights go to the generator after every update.
    # "colocated": every role on the policy's bundles (devices); before each phase the roles it does not
    # use move their weights, gradients and optimizer state to host memory, so a device holds one role's
    # state at a time (sync's order, the roles scored and trained one after another; the same numbers).
    schedule: Literal["sync", "async", "colocated"] = "sync"
    ppo_epochs: int = Field(4, ge=1)  # passes over each rollout batch
    critic_warmup_steps: int = Field(4, ge=0)  # first steps update the critic only (its values start as rewards)
    minibatches: int = Field(4, ge=1)  # minibatches per PPO epoch (policy and critic)
    clip_eps: float = Field(0.2, gt=0)  # PPO ratio clip ε (Schulman et al. 2017)
    clip_eps_high: float | None = Field(None, gt=0)  # upper clip 1 + this (DAPO's clip-higher: 0.28); null: clip_eps
    # A bound on one update of the policy: once a minibatch's approximate KL to the rollout's policy (the
    # mean over the data-parallel ranks of E[r − 1 − log r], measured before its step) passes it, that
    # minibatch and the rest of the step's update are skipped (Spinning Up PPO, Stable-Baselines3, which stop
    # at 1.5 × their target_kl). The critic trains on. null: every epoch runs.
    target_kl: float | None = Field(None, gt=0)
    value_clip: float | None = 0.2  # clip of the value update around the old values; null: unclipped
    gamma: float = Field(1.0, ge=0, le=1)  # GAE discount γ
    lam: float = Field(0.95, ge=0, le=1)  # GAE λ
    # β of the per-token KL penalty (the start value if kl_target is set). A fixed 0.1 won on the
    # nine-task suite judged leave-one-task-out (docs/results.md, fifth round): the adaptive β of the
    # fourth round (from 0.4 toward 0.5 nats) pulled policies back from their best evaluations once
    # SFT had converged (politeness: gold 0.948 at step 25, 0.806 at 150 as β rose to 6.7).
    kl_coef: float = Field(0.1, ge=0)
    # Adaptive β (Ziegler et al. 2019 §2.2) toward this KL per response on the training batch; null: β
    # fixed at kl_coef. It lowers β where the policy stays close (a reward with small margins) and
    # raises it where the policy runs, also after the policy has found its best.
    kl_target: float | None = Field(None, gt=0)
    # β of the first step as a multiple of kl_coef: β falls linearly from kl_start_factor × kl_coef to
    # kl_coef over kl_decay_steps steps and stays there, so it never rises. A fixed β only: under kl_target
    # the controller starts at kl_coef and this is not used. The reward model is most trusted near the
    # policy it was trained on; a stronger penalty while the policy leaves it keeps the first steps from
    # its errors (docs/ppo.md). 1: β is kl_coef from the first step.
    kl_start_factor: float = Field(1.0, ge=1)
    kl_decay_steps: int = Field(50, ge=1)  # steps over which β falls from kl_start_factor × kl_coef to kl_coef
    # Horizon of the controller, in rollouts: each step moves β by at most 0.2 × the step's rollouts /
    # horizon (2.6% at 128), enough to go from 0.4 to 0.04 within 100 steps (Ziegler's 10,000 suits
    # far larger runs: over 19,200 rollouts it moves β by at most a factor 1.5)
    kl_horizon: int = Field(1000, ge=1)
    # k1 = log-ratio, k2 = ½ log-ratio² (the KL's gradient as a loss), k3 = Schulman's low-variance unbiased one
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    entropy_coef: float = Field(0.0, ge=0)  # entropy bonus in the policy loss
    normalize_scores: bool = True  # normalise the reward model's score with its saved mean/std (reward_stats.json)
    score_clip: float | None = 5.0  # clip the normalised reward-model score to ±this; null: no clip
    # The score of a response that reached max_new_tokens without EOS, in place of the reward model's
    # and the functions' (on the normalised scale, e.g. -1 as Stiennon et al. 2020; null: scored like
    # any other). The reward model is read at the EOS and never saw a cut-off response (docs/ppo.md).
    missing_eos_score: float | None = -1.0
    whiten_advantages: bool = True  # whiten advantages over the valid tokens of the whole rollout batch
    ptx_coef: float = Field(0.0, ge=0)  # InstructGPT's γ for PPO-ptx
    ptx_data: str | None = None  # plain text for the pretraining mix; a .jsonl/.json file: demonstrations (SFT loss)
    ptx_batch_size: int = Field(16, ge=1)  # pretraining sequences per policy minibatch (× of the DP ranks, rounded up)
    ptx_max_len: int = Field(64, ge=2)  # tokens per pretraining sequence
    eval_every: int = Field(25, ge=1)  # steps between held-out evaluations
    # The policy the stage exports. "objective": the last, unless an earlier held-out evaluation's
    # objective, the reward score − kl_coef × KL per response (what PPO maximises), beats the last's by
    # more than one standard error over prompts; that evaluation's policy, kept as it ran, is exported
    # instead (rlhf/export_choice.py). It never reads the gold. "last": the last policy.
    export: Literal["last", "objective"] = "objective"
    # The policy of the last step is the uniform average of the policy's weights at the run's last `average_last`
    # held-out evaluations (every eval_every steps, and the last step, whose own weights are one of them) that lie in
    # the run's last `average_span` of its steps: stochastic weight averaging (Izmailov et al. 2018) over the plateau
    # a run ends on, where the policy wobbles from one evaluation to the next, and not over a climb that is still
    # going on. Each policy rank keeps its own part of the weights of those evaluations
    # (<ppo>/average/step-<n>/rank-<r>.safetensors); the average is evaluated as the last step's evaluation, saved in
    # the last checkpoint and exported (ppo.export still weighs it against the earlier evaluations). It never reads
    # the gold. One evaluation in the span, or ppo.patience (which may end a run at any evaluation): the last policy
    # as trained. 4 evaluations in the last quarter by default: the suite's 300-step runs evaluated every 25 steps
    # average steps 225-300, the setting chosen there, held out task by task (docs/results.md).
    average_last: int = Field(4, ge=1)
    # The share of the run's steps, at its end, whose evaluations ppo.average_last may average (the span's first step
    # included): 0.25, its last quarter; 1, the whole run.
    average_span: float = Field(0.25, gt=0, le=1)
    # How the reward model's ensemble members (<rm>/ensemble/<k>, rm.ensemble > 1), where the reward model has
    # them, make one score: each on its own held-out scale, then "min" (the worst case, Coste et al. 2023) or
    # "mean"; null: the reward model alone. Without members the reward model's score is used as it is.
    reward_ensemble: Literal["min", "mean"] | None = "min"
    # Who judges the objective's score for `export`: a reward model PPO never trained against. "auto": the one
    # trained beside the reward model (<rm>/validation, rm.validation=true) where it exists, else the reward
    # model itself; a path: that reward model (its reward_stats.json normalises it); null: the reward model.
    validation_model: str | None = "auto"
    save_every: int = Field(10, ge=0)  # steps between checkpoints (what a restart may redo); 0: none
    resume: str | None = None  # a checkpoint directory (<run>/ppo/checkpoint-<step>) to continue from
    seed: int = 0  # sampling and shuffling seed
    policy: RoleConfig = RoleConfig(optim=POLICY_OPTIM)
    critic: RoleConfig = RoleConfig(optim=CRITIC_OPTIM)
    reward: RoleConfig = RoleConfig()
    reference: RoleConfig = RoleConfig()
    generator: RoleConfig = RoleConfig()  # schedule=async: the group that samples (its tp_size: the policy's)

    @property
    def score_weights(self) -> dict[str, float]:
        """Weight of each score component by name: "rm" for the reward model, then each function's name."""
        weights = {"rm": self.reward_model_weight} if self.reward_model is not None else {}
        return weights | {f.name: f.weight for f in self.reward_functions}

    def _check_colocated(self) -> None:
        if self.rollout != "builtin":
            raise ValueError("schedule=colocated moves the trainers' state on and off the devices; a vLLM engine "
                             "keeps its own copy there: it needs rollout: builtin")
        roles = ("policy", "reference", "reward") + (("critic",) if self.uses_critic else ())
        for role in roles:
            spec, engine = getattr(self, role).group, getattr(self, role).engine
            if spec.ranks != self.policy.group.ranks:
                raise ValueError(f"schedule=colocated: {role}.group.ranks={spec.ranks}, the policy's "
                                 f"{self.policy.group.ranks}: every role shares the policy's bundles rank by rank")
            if spec.colocate_with not in (None, "policy"):
                raise ValueError(f"schedule=colocated puts every role on the policy's bundles: "
                                 f"{role}.group.colocate_with={spec.colocate_with!r} must be null or policy")
            if engine.zero_stage == 3:
                raise ValueError(f"schedule=colocated: {role}.engine.zero_stage=3 is not supported (DeepSpeed moves "
                                 f"ZeRO-3 state off the device only with its CUDA FusedAdam); use stage 0-2")
            if engine.offload_optimizer:
                raise ValueError(f"schedule=colocated moves {role}'s optimizer state itself: set "
                                 f"{role}.engine.offload_optimizer: false")

    @property
    def uses_critic(self) -> bool:
        return self.advantage_estimator == "gae"

    @property
    def lr_steps(self) -> int:
        """The steps the learning rates' warm-up and cosine span: `decay_steps`, at most `steps`."""
        return min(self.decay_steps or self.steps, self.steps)

    @property
    def averaged_steps(self) -> list[int]:
        """The evaluation steps whose policies make the last step's: the last ppo.average_last of them that lie in the
        run's last ppo.average_span of its steps; none where that is one step, or under ppo.patience."""
        first = self.steps * (1 - self.average_span) - 1e-9  # the span's first step may be evaluated: 225 of 300
        steps = [s for s in evaluation_steps(self.steps, self.eval_every)[-self.average_last:] if s >= first]
        return steps if len(steps) > 1 and self.patience is None else []

    @property
    def first_stop(self) -> int:
        """The first step after which ppo.patience may end a run: the cosine's end where decay_steps is set."""
        return self.lr_steps if self.decay_steps is not None else 0

    @property
    def kl_schedule_start(self) -> float | None:
        """β of the first step where β is scheduled (kl_start_factor > 1 under a fixed β); None otherwise."""
        return self.kl_coef * self.kl_start_factor if self.kl_target is None and self.kl_start_factor > 1 else None

    @model_validator(mode="after")
    def _check(self) -> PPOConfig:
        if self.reward_model is None and not self.reward_functions:
            raise ValueError("reward_model: PPO needs a reward: a reward model (reward_model: auto or a path) "
                             "or reward_functions, or both")
        names = [f.name for f in self.reward_functions]
        if "rm" in names:
            raise ValueError("reward_functions: 'rm' names the reward model's score; rename the function")
        if len(set(names)) != len(names):
            raise ValueError(f"reward_functions: two functions named {names}; each is logged by its name, so "
                             f"give them different names")
        if self.ptx_coef and not self.ptx_data:
            raise ValueError("ptx_coef > 0 needs ptx_data (plain text for the pretraining mix, or demonstrations)")
        if self.prompts_per_step % self.samples_per_prompt:
            raise ValueError(f"prompts_per_step={self.prompts_per_step} is not a multiple of "
                             f"samples_per_prompt={self.samples_per_prompt}")
        for key, needs_group in (("score_baseline", self.score_baseline == "leave_one_out"),
                                 ("advantage_estimator", self.advantage_estimator in ("grpo", "rloo")),
                                 ("filter_groups", self.filter_groups),
                                 ("score_scale", self.score_scale == "prompt_spread")):
            if needs_group and self.samples_per_prompt < 2:
                raise ValueError(f"{key}={getattr(self, key)} compares the samples of a prompt: it needs "
                                 f"samples_per_prompt >= 2")
        dp = self.policy.group.dp_size
        if self.prompts_per_step // self.minibatches < dp:
            raise ValueError(f"minibatches={self.minibatches}: prompts_per_step={self.prompts_per_step} gives "
                             f"minibatches of {self.prompts_per_step // self.minibatches} rollouts, fewer than the "
                             f"policy's {dp} data-parallel rank(s); use fewer minibatches")
        if self.rollout == "vllm":
            if self.recompute_logprobs_every != 1:
                raise ValueError("rollout=vllm: the old log-probs must come from the trainer every step (vLLM's "
                                 "differ from them); set recompute_logprobs_every: 1")
            if self.policy.group.tp_size != 1:
                raise ValueError("rollout=vllm runs one whole vLLM engine per policy rank: it needs "
                                 "policy.group.tp_size: 1 (scale with data parallelism)")
        if self.schedule == "async":
            if self.rollout != "builtin":
                raise ValueError("schedule=async samples in its generator group with the built-in sampler: it "
                                 "needs rollout: builtin")
            if self.recompute_logprobs_every != 1:
                raise ValueError("schedule=async: the sampler's weights are an update old, so the old log-probs must "
                                 "come from the trainer every step; set recompute_logprobs_every: 1")
            if self.generator.group.tp_size != self.policy.group.tp_size:
                raise ValueError(f"schedule=async: generator.group.tp_size={self.generator.group.tp_size} must be "
                                 f"the policy's ({self.policy.group.tp_size}): each generator rank takes the "
                                 f"weights of the policy rank of its tensor-parallel rank")
        if self.schedule == "colocated":
            self._check_colocated()
        for role in ("policy", "critic"):
            if getattr(self, role).optim.grad_accum != 1:
                raise ValueError(f"{role}.optim.grad_accum must be 1: each PPO minibatch is one update")
        return self
