"""The named settings of bench/sweep_defaults.py, every round's: PPO settings (SETTINGS: overrides on top
of the demo config, each round's pinned under its variations so that a label means the same runs after the
defaults moved), reward-model settings (RM_SETTINGS, for --rm) and the ensembles some PPO settings
assemble from reward models already trained (ENSEMBLES). docs/results.md reads each round's runs by
these labels. Pure data: nothing here runs anything.
"""

from __future__ import annotations

# Each setting: overrides on top of the demo config of 2026-11-24 (DEMO_2026_11_24, pinned over
# configs/demo.yaml), so that a setting means the same run whatever the demo config holds now.
# "defaults" is configs/demo.yaml as it is.
FIXED_BETA = ["ppo.kl_target=null", "ppo.kl_horizon=10000"]  # the defaults before the fourth round
# Every run before 2026-12-07 late ended on its last policy as trained (ppo.average_last 4 is the default since): each
# round's pinned defaults below pin it, so that their labels mean the runs they named.
LAST = ["ppo.average_last=1"]
DEMO_2026_11_24 = ["ppo.kl_coef=0.2", "ppo.ppo_epochs=2", "ppo.missing_eos_score=null", "ppo.score_scale=none",
                   "ppo.policy.optim.lr=1.0e-4", "ppo.policy.optim.min_lr_ratio=1.0", "ppo.samples_per_prompt=8",
                   *FIXED_BETA, *LAST]
EOS = ["ppo.missing_eos_score=-1"]  # the EOS rule: on in every sweep run below
TARGET = [*EOS, "ppo.kl_coef=0.2", "ppo.kl_horizon=1000"]
B5E4 = [*EOS, "ppo.kl_coef=0.5", "ppo.ppo_epochs=4"]
COSINE = ["ppo.policy.optim.min_lr_ratio=0.1"]
SPREAD = ["ppo.score_scale=prompt_spread"]
SETTINGS = {
    "demo-2026-11-24": [],
    "kl-target-1": [*TARGET, "ppo.kl_target=1.0", "ppo.ppo_epochs=2"],
    "kl-target-2": [*TARGET, "ppo.kl_target=2.0", "ppo.ppo_epochs=2"],
    "kl1-lr-2e-4": [*TARGET, "ppo.kl_target=1.0", "ppo.ppo_epochs=2", "ppo.policy.optim.lr=2.0e-4"],
    "kl1-epochs-4": [*TARGET, "ppo.kl_target=1.0", "ppo.ppo_epochs=4"],
    "beta-0.3-epochs-4": [*EOS, "ppo.kl_coef=0.3", "ppo.ppo_epochs=4"],
    "beta-0.5-epochs-4": B5E4,
    "beta-1-epochs-4": [*EOS, "ppo.kl_coef=1.0", "ppo.ppo_epochs=4"],
    "beta-0.5-epochs-4-lr-2e-4": [*B5E4, "ppo.policy.optim.lr=2.0e-4"],
    # the second round: cosine decay of the policy's lr, and scores divided by their within-prompt
    # spread before the KL (ppo.score_scale)
    "spread-beta-0.5-epochs-4": [*B5E4, *SPREAD],
    "beta-0.5-epochs-4-cosine": [*B5E4, *COSINE],
    "spread-beta-0.5-epochs-4-cosine": [*B5E4, *SPREAD, *COSINE],
    "spread-beta-0.3-epochs-4-cosine": [*EOS, "ppo.kl_coef=0.3", "ppo.ppo_epochs=4", *SPREAD, *COSINE],
    "spread-beta-0.5-epochs-4-lr-5e-5": [*B5E4, *SPREAD, "ppo.policy.optim.lr=5.0e-5"],
    "spread-beta-0.5-epochs-4-cosine-lr-2e-4": [*B5E4, *SPREAD, *COSINE, "ppo.policy.optim.lr=2.0e-4"],
    "beta-0.5-epochs-4-cosine-lr-2e-4": [*B5E4, *COSINE, "ppo.policy.optim.lr=2.0e-4"],
    "eos-rule": EOS,
    "rloo": ["ppo.advantage_estimator=rloo", "ppo.score_baseline=none"],
}
SETTINGS = {"defaults": [], **{label: [*DEMO_2026_11_24, *overrides] for label, overrides in SETTINGS.items()}}
# The defaults of the second round (2026-11-25 morning: β 0.5 fixed, 16 prompts × 8 samples; the rest
# as PPOConfig has it now), pinned under their variations so that these mean the same runs after the
# defaults moved (the fourth round: β adaptive from 0.4, 32 × 4). "defaults" alone is PPOConfig as it is.
DEFAULTS_2026_11_25 = ["ppo.kl_coef=0.5", "ppo.samples_per_prompt=8", *FIXED_BETA, *LAST]
SETTINGS |= {label: [*DEFAULTS_2026_11_25, *overrides] for label, overrides in {
    "defaults-2026-11-25": [],
    "defaults-lr-3e-4": ["ppo.policy.optim.lr=3.0e-4"],
    "defaults-32x4": ["ppo.samples_per_prompt=4"],
    "defaults-32x4-lr-3e-4": ["ppo.samples_per_prompt=4", "ppo.policy.optim.lr=3.0e-4"],
    "defaults-beta-0.4": ["ppo.kl_coef=0.4"],
    "defaults-beta-0.3": ["ppo.kl_coef=0.3"],
    "defaults-beta-0.2": ["ppo.kl_coef=0.2"],
    "defaults-beta-0.4-32x4": ["ppo.kl_coef=0.4", "ppo.samples_per_prompt=4"],  # the third round's candidate
}.items()}
# The fourth round (2026-12-02): the third round's candidate pinned (β 0.4, 32 prompts × 4 samples),
# and the adaptive KL controller started from it (Ziegler et al. 2019), horizon 1,000 rollouts.
ROUND_4 = ["ppo.kl_coef=0.4", "ppo.samples_per_prompt=4", *FIXED_BETA, *LAST]
ADAPTIVE = ["ppo.kl_horizon=1000"]
SETTINGS |= {label: [*ROUND_4, *overrides] for label, overrides in {
    "r4-beta-0.4": [],
    "r4-beta-0.2": ["ppo.kl_coef=0.2"],
    "r4-target-0.5": [*ADAPTIVE, "ppo.kl_target=0.5"],
    "r4-target-1": [*ADAPTIVE, "ppo.kl_target=1.0"],
    "r4-target-0.5-16x8": [*ADAPTIVE, "ppo.kl_target=0.5", "ppo.samples_per_prompt=8"],
}.items()}

# The fifth round (#27): SFT and the reward model stop on held-out measures (the new defaults), the
# suite has nine tasks, and a setting is judged on the tasks it was not chosen on (--held-out). The
# candidates keep more of a gain than a 0.5-nat target does: a higher target, fixed small β. "grpo"
# is the critic-free estimator under them; "oracle" replaces the reward model by the task's gold
# function (the gap it leaves is the optimiser's, the rest the reward model's).
ROUND_5 = ["ppo.kl_coef=0.4", "ppo.kl_target=0.5", "ppo.kl_horizon=1000", "ppo.samples_per_prompt=4",
           "ppo.export=last",  # each run exported its last policy (ppo.export came later: r11)
           "ppo.reward_ensemble=null",  # against the reward model alone, where a base has members (r14)
           *LAST]
SETTINGS |= {label: [*ROUND_5, *overrides] for label, overrides in {
    "r5-target-2": ["ppo.kl_target=2.0"],
    "r5-target-1": ["ppo.kl_target=1.0"],
    "r5-beta-0.1": [*FIXED_BETA, "ppo.kl_coef=0.1"],
    "r5-beta-0.05": [*FIXED_BETA, "ppo.kl_coef=0.05"],
}.items()}
# The sixth round (2026-12-05): under β 0.1 the first policy updates at the full learning rate send
# the policy 2.5–3.5 nats away within a few steps (sorting, copying, politeness; the oracle too), and
# the gold falls or stands still before it recovers; sorting gained most late in the run, where the
# cosine schedule had brought the rate down. A warm-up of the rate over its first 240 optimizer steps
# only delayed the jump (sorting, seed 0: 0.499, 0.562, 0.616 at steps 25–75; stopped there). The
# candidate: half the policy's peak learning rate.
SETTINGS["r7-warmup"] = [*SETTINGS["r5-beta-0.1"], "ppo.policy.optim.warmup_steps=240"]
SETTINGS["r7-lr-1e-4"] = [*SETTINGS["r5-beta-0.1"], "ppo.policy.optim.lr=1.0e-4"]
# #30: the asynchronous schedule (a generator group one update behind) under the default β 0.1, against
# the synchronous runs of r5-beta-0.1 at the same number of samples.
SETTINGS["r9-async"] = [*SETTINGS["r5-beta-0.1"], "ppo.schedule=async"]
# #30: the colocated schedule (every role on one bundle, one role's state there at a time): the same
# updates as r5-beta-0.1's synchronous runs, the roles taking turns.
SETTINGS["r10-colocated"] = [*SETTINGS["r5-beta-0.1"], "ppo.schedule=colocated"]
# #27: the same runs as r5-beta-0.1, exporting by the held-out objective (ppo.export=objective, the
# default since): an earlier evaluation's policy where its score − β·KL beats the last's beyond noise.
SETTINGS["r11-export"] = [*SETTINGS["r5-beta-0.1"], "ppo.export=objective"]
# #27: r11-export against an ensemble of two reward models (the base's <rm> and <rm>/ensemble/1: the same
# rankings from the next seeds), each on its held-out scale, their minimum the score (Coste et al. 2023).
SETTINGS["r14-ensemble"] = [*SETTINGS["r11-export"], "ppo.reward_ensemble=min"]
# The same two members, their mean instead of their minimum.
SETTINGS["r15-ensemble-mean"] = [*SETTINGS["r11-export"], "ppo.reward_ensemble=mean"]
# #27: r11-export against a reward model trained with off-prompt pairs (rm.off_prompt_weight=1, RRM): the reward
# model of the --rm setting "rm-off-prompt", seed 0 (the base reward model's seeds, the base SFT policy).
SETTINGS["r16-off-prompt"] = [*SETTINGS["r11-export"], "ppo.reward_model={out}/sweep-rm-off-prompt-s0/rm"]
# The mean of two such reward models (seeds 0 and 1 of "rm-off-prompt"; the second as <rm>/ensemble/1, where
# rm.ensemble=2 would train it): r15-ensemble-mean with members that check the prompt.
SETTINGS["r17-off-prompt-mean"] = [*SETTINGS["r16-off-prompt"], "ppo.reward_ensemble=mean"]
# r11-export against the second reward model alone (<task>/rm-seed1: the same rankings from the next seeds, as
# rm.validation and rm.ensemble=2 train it): how much of a task's result is its reward model's seed.
SETTINGS["r18-rm-seed1"] = [*SETTINGS["r11-export"], "ppo.reward_model={out}/rm-seed1/rm"]
# r15-ensemble-mean's two members with the second replaced by the off-prompt reward model of seed 0: members
# with different blind spots (the base model barely checks politeness's request; the off-prompt one does).
SETTINGS["r19-base-off-prompt-mean"] = [*SETTINGS["r11-export"], "ppo.reward_model={out}/ensemble-base-off-prompt/rm",
                                        "ppo.reward_ensemble=mean"]
# r11-export against a reward model of the whole run's seed 1 that may not stop before epoch 5 (rm-min-epochs-5,
# seed 1): rm-seed1 but for rm.min_epochs.
SETTINGS["r20-rm-min-epochs-5-seed1"] = [*SETTINGS["r11-export"], "ppo.reward_model={out}/sweep-rm-min-epochs-5-s1/rm"]
# The whole run's seed 2: r11-export against the reward model of seed 2 under the defaults (rm-defaults, seed 2).
SETTINGS["r21-rm-seed2"] = [*SETTINGS["r11-export"], "ppo.reward_model={out}/sweep-rm-defaults-s2/rm"]
# The whole run's seed 3, the same way (rm-defaults, seed 3).
SETTINGS["r22-rm-seed3"] = [*SETTINGS["r11-export"], "ppo.reward_model={out}/sweep-rm-defaults-s3/rm"]
# Seeds 4 and 5 of the whole run, the one-standard-error rule's confirmation (docs/results.md), the same way.
SETTINGS["r23-rm-seed4"] = [*SETTINGS["r11-export"], "ppo.reward_model={out}/sweep-rm-defaults-s4/rm"]
SETTINGS["r24-rm-seed5"] = [*SETTINGS["r11-export"], "ppo.reward_model={out}/sweep-rm-defaults-s5/rm"]
# The pilot of ppo.target_kl (docs/results.md): draws 4 and 5 of the whole run with an update's approx-KL bounded.
SETTINGS["r25-target-kl-seed4"] = [*SETTINGS["r23-rm-seed4"], "ppo.target_kl=0.1"]
SETTINGS["r26-target-kl-seed5"] = [*SETTINGS["r24-rm-seed5"], "ppo.target_kl=0.1"]
# Where sorting's early fall comes from (docs/results.md): draw 5 of the whole run without the critic (GRPO against
# the same reward model); the oracle of that draw is r5-beta-0.1-oracle, PPO seed 5.
SETTINGS["r27-grpo-seed5"] = [*SETTINGS["r24-rm-seed5"], "ppo.advantage_estimator=grpo", "ppo.score_baseline=none"]
# Does a stronger KL penalty keep sorting from its reward model's errors in the first steps? (docs/results.md):
# draws 4 and 5 of the whole run at a fixed β of 0.3, a diagnostic only.
SETTINGS["r28-beta-0.3-seed4"] = [*SETTINGS["r23-rm-seed4"], "ppo.kl_coef=0.3"]
SETTINGS["r28-beta-0.3-seed5"] = [*SETTINGS["r24-rm-seed5"], "ppo.kl_coef=0.3"]
# The pilot of a scheduled β (docs/results.md): 0.3 at the first step, falling to the default 0.1 by step 50, on
# draws 4 and 5 of the whole run. Its runs were made as ppo.kl_coef_start=0.3, the same β at every step as
# ppo.kl_start_factor=3 (the option's name since: a multiple of kl_coef, which cannot make β rise).
KL_START = ["ppo.kl_start_factor=3", "ppo.kl_decay_steps=50"]
SETTINGS["r29-kl-start-seed4"] = [*SETTINGS["r23-rm-seed4"], *KL_START]
SETTINGS["r29-kl-start-seed5"] = [*SETTINGS["r24-rm-seed5"], *KL_START]
# A diagnostic for the next round (docs/results.md): the same start, falling over the whole run (150 steps).
SETTINGS["r30-kl-decay-150-seed4"] = [*SETTINGS["r23-rm-seed4"], "ppo.kl_start_factor=3", "ppo.kl_decay_steps=150"]
SETTINGS["r30-kl-decay-150-seed5"] = [*SETTINGS["r24-rm-seed5"], "ppo.kl_start_factor=3", "ppo.kl_decay_steps=150"]
# The pilot of the KL penalty in the policy loss (docs/results.md, "The KL penalty in the loss"): draws 4 and 5 of
# the whole run with β·k2 (½ log-ratio², whose gradient is the KL's) in the policy loss in place of −β·k1 in the
# per-token rewards; β stays 0.1.
KL_LOSS = ["ppo.kl_penalty=loss", "ppo.kl_estimator=k2"]
SETTINGS["r31-kl-loss-seed4"] = [*SETTINGS["r23-rm-seed4"], *KL_LOSS]
SETTINGS["r31-kl-loss-seed5"] = [*SETTINGS["r24-rm-seed5"], *KL_LOSS]
# The reward model that never stops before its learning rate has decayed (docs/results.md, "A reward model that
# finishes its schedule"): draws 4 and 5 of the whole run against reward models trained with rm.min_epochs=10
# (rm.decay_epochs), setting rm-min-epochs-10 of --rm.
# Draws 0-3 the same way, for the six-draw reading under it.
for k in range(6):
    SETTINGS[f"r32-rm-min10-seed{k}"] = [*SETTINGS["r11-export"],
                                         f"ppo.reward_model={{out}}/sweep-rm-min-epochs-10-s{k}/rm"]
# PPO that stops on its held-out objective (docs/results.md, "PPO that stops when its objective does"): draws 4 and
# 5 against the same reward models, with ppo.patience 2; run with --steps 300 (the bound; the cosine spans it).
for k in (4, 5):
    SETTINGS[f"r34-patience-2-seed{k}"] = [*SETTINGS[f"r32-rm-min10-seed{k}"], "ppo.patience=2"]
# The cosine over 150 steps, then the floor's steps while the objective rises (ppo.decay_steps, docs/results.md
# "The cosine's end as the floor of PPO's stop"): run with --steps 300, the bound.
for k in (4, 5):
    SETTINGS[f"r35-decay-150-seed{k}"] = [*SETTINGS[f"r34-patience-2-seed{k}"], "ppo.decay_steps=150"]
# The default runs again with the policy's checkpoint of every evaluation kept (every 25 steps, none pruned), so that
# averages of the policy's last weights can be read offline (docs/results.md, "Averaging the policy's last weights";
# bench/tail_average.py). Saving more often changes no update.
for k in range(6):
    SETTINGS[f"r36-snapshots-seed{k}"] = [*SETTINGS[f"r32-rm-min10-seed{k}"], "ppo.save_every=25",
                                          "run.save_total_limit=0"]
# The default with ppo.average_last=4, run in the loop (docs/results.md, "Averaging the policy's last weights"): its
# last evaluation must be the one bench/tail_average.py reads off the r36 run of the same draw for the same window.
for k in (4, 5):
    SETTINGS[f"r37-average-4-seed{k}"] = [*SETTINGS[f"r32-rm-min10-seed{k}"], "ppo.average_last=4"]
# The default with the SFT loss of the rankings' best responses mixed into the policy's loss (ppo.ptx_data naming
# the task's comparisons, read as demonstrations: RPO, Liu et al. 2024), at γ = ppo.ptx_coef, every evaluation's
# checkpoint kept as in r36 (docs/results.md, "The SFT loss as a regulariser").
for k in range(6):
    for coef in ("0.1", "0.5"):
        SETTINGS[f"r38-sft-mix-{coef}-seed{k}"] = [*SETTINGS[f"r36-snapshots-seed{k}"], f"ppo.ptx_coef={coef}",
                                                   "ppo.ptx_data={out}/task/comparisons.jsonl"]
# A setting's ensemble, assembled before its PPO runs: the reward model's directory (under the task's), the
# reward model copied there (None: it is there already, trained by --rm) and the further members copied to its
# ensemble/1, 2, ... as rm.ensemble lays them out; each from a base or a --rm run (its command in the error).
ENSEMBLES = {"r17-off-prompt-mean": ("sweep-rm-off-prompt-s0/rm", None, ["sweep-rm-off-prompt-s1/rm"]),
             "r19-base-off-prompt-mean": ("ensemble-base-off-prompt/rm", "base/rm", ["sweep-rm-off-prompt-s0/rm"])}
GRPO = ["ppo.advantage_estimator=grpo", "ppo.score_baseline=none"]
for label in [k for k in SETTINGS if k.startswith("r5-")]:  # GRPO and the oracle under each candidate
    SETTINGS[f"{label}-grpo"] = [*SETTINGS[label], *GRPO]
    SETTINGS[f"{label}-oracle"] = SETTINGS[label]  # + the gold as the only reward (sweep_defaults.setting_overrides)
SETTINGS |= {"r5-grpo": [*ROUND_5, *GRPO], "r5-oracle": ROUND_5}  # under the defaults of the round's start
for k in (4, 5):  # #27's one table under the 300-step default, on the whole-run draws 4 and 5 (run --steps 300)
    SETTINGS[f"r32-rm-min10-seed{k}-grpo"] = [*SETTINGS[f"r32-rm-min10-seed{k}"], *GRPO]
    SETTINGS[f"r32-rm-min10-seed{k}-oracle"] = SETTINGS[f"r32-rm-min10-seed{k}"]  # its reward model then unused


# Reward-model settings (--rm): overrides of the rm section on top of the demo config; each trains a
# reward model from the task's SFT policy and reports its held-out pair accuracy and length bias.
RM_SETTINGS = {
    # the defaults of the day: the runs/r12 reward models of draws 2-5 were trained with rm.min_epochs 5, which
    # rm-min-epochs-5 reproduces; since 2026-12-06 evening the floor is the cosine's end (rm-min-epochs-10)
    "rm-defaults": [],
    "rm-epochs-1": ["rm.epochs=1"],
    "rm-epochs-5": ["rm.epochs=5"],
    "rm-lr-1e-4": ["rm.optim.lr=1.0e-4"],
    "rm-lr-1e-4-epochs-5": ["rm.optim.lr=1.0e-4", "rm.epochs=5"],
    "rm-off-prompt": ["rm.off_prompt_weight=1.0"],  # #27: each best response against another prompt's best
    "rm-min-epochs-5": ["rm.min_epochs=5"],  # #27: no stop before epoch 5 (arithmetic's seed 1 stopped after 3)
    "rm-min-epochs-10": ["rm.min_epochs=10"],  # #27: no stop before the cosine of rm.decay_epochs (10) has ended
}
