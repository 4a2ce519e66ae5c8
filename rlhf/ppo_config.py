"""Configuration of InstructGPT step 3 (PPO): the loop's hyperparameters and the four roles' layouts.

Defaults follow InstructGPT (Ouyang et al. 2022, §3.5 and appendix C.4) where they apply to a small
model: β = 0.02 per-token KL (k1, as in the paper), γ = 1, λ = 0.95, clip 0.2, score normalised
with the reward model's held-out statistics.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from parallel.engine import EngineConfig, OptimConfig
from parallel.mesh import GroupSpec
from rlhf.functions import FunctionSpec


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
    steps: int = Field(40, ge=1)  # PPO iterations (generate → score → update → sync)
    prompts_per_step: int = Field(64, ge=1)  # rollouts per step (prompts × samples_per_prompt)
    samples_per_prompt: int = Field(1, ge=1)  # responses sampled per prompt (> 1 for the leave-one-out baseline)
    # "leave_one_out": subtract from each score the mean score of the other samples of its prompt.
    # A departure from InstructGPT (which relies on the critic alone): a learned reward's level varies
    # far more across prompts than across responses to one prompt, and the critic learns that
    # prompt-level baseline slowly; removing it leaves the within-prompt preference the RM was trained on.
    score_baseline: Literal["none", "leave_one_out"] = "none"
    max_prompt_len: int = Field(48, ge=1)  # prompts are left-truncated to this many tokens
    max_new_tokens: int = Field(16, ge=1)  # response length limit
    temperature: float = Field(1.0, gt=0)  # sampling temperature of rollouts
    top_k: int = Field(0, ge=0)  # 0: off
    top_p: float = Field(1.0, gt=0, le=1)  # 1.0: off (nucleus sampling otherwise)
    ppo_epochs: int = Field(1, ge=1)  # passes over each rollout batch
    critic_warmup_steps: int = Field(0, ge=0)  # first steps update the critic only (its values start as rewards)
    minibatches: int = Field(4, ge=1)  # minibatches per PPO epoch (policy and critic)
    clip_eps: float = Field(0.2, gt=0)  # PPO ratio clip ε (Schulman et al. 2017)
    value_clip: float | None = 0.2  # clip of the value update around the old values; null: unclipped
    gamma: float = Field(1.0, ge=0, le=1)  # GAE discount γ
    lam: float = Field(0.95, ge=0, le=1)  # GAE λ
    kl_coef: float = Field(0.02, ge=0)  # β of the per-token KL penalty (the start value if kl_target is set)
    kl_target: float | None = None  # set → adaptive controller (Ziegler et al. 2019)
    kl_horizon: int = Field(10000, ge=1)  # horizon of the adaptive controller, in rollouts
    kl_estimator: Literal["k1", "k3"] = "k1"  # k1 = log-ratio, k3 = Schulman's low-variance unbiased estimator
    entropy_coef: float = Field(0.0, ge=0)  # entropy bonus in the policy loss
    normalize_scores: bool = True  # normalise the reward model's score with its saved mean/std (reward_stats.json)
    score_clip: float | None = 5.0  # clip the normalised reward-model score to ±this; null: no clip
    whiten_advantages: bool = True  # whiten advantages over the valid tokens of the whole rollout batch
    ptx_coef: float = Field(0.0, ge=0)  # InstructGPT's γ for PPO-ptx
    ptx_data: str | None = None  # plain text for the pretraining mix
    ptx_batch_size: int = Field(16, ge=1)  # pretraining sequences per policy minibatch
    ptx_max_len: int = Field(64, ge=2)  # tokens per pretraining sequence
    eval_every: int = Field(10, ge=1)  # steps between held-out evaluations
    save_every: int = Field(10, ge=0)  # steps between checkpoints (what a restart may redo); 0: none
    resume: str | None = None  # a checkpoint directory (<run>/ppo/checkpoint-<step>) to continue from
    seed: int = 0  # sampling and shuffling seed
    policy: RoleConfig = RoleConfig(optim=OptimConfig(lr=1e-5, warmup_steps=0, min_lr_ratio=1.0))
    critic: RoleConfig = RoleConfig(optim=OptimConfig(lr=5e-5, warmup_steps=0, min_lr_ratio=1.0))
    reward: RoleConfig = RoleConfig()
    reference: RoleConfig = RoleConfig()

    @property
    def score_weights(self) -> dict[str, float]:
        """Weight of each score component by name: "rm" for the reward model, then each function's name."""
        weights = {"rm": self.reward_model_weight} if self.reward_model is not None else {}
        return weights | {f.name: f.weight for f in self.reward_functions}

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
            raise ValueError("ptx_coef > 0 needs ptx_data (a plain-text file for the pretraining mix)")
        if self.prompts_per_step % self.samples_per_prompt:
            raise ValueError(f"prompts_per_step={self.prompts_per_step} is not a multiple of "
                             f"samples_per_prompt={self.samples_per_prompt}")
        if self.score_baseline == "leave_one_out" and self.samples_per_prompt < 2:
            raise ValueError("score_baseline=leave_one_out needs samples_per_prompt >= 2")
        if self.minibatches > self.prompts_per_step:
            raise ValueError(f"minibatches={self.minibatches} > prompts_per_step={self.prompts_per_step}")
        for role in ("policy", "critic"):
            if getattr(self, role).optim.grad_accum != 1:
                raise ValueError(f"{role}.optim.grad_accum must be 1: each PPO minibatch is one update")
        return self
