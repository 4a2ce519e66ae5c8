"""Break each guarded line of the RL code on purpose, run the tests meant to catch it, and report
whether they went red. Every source file is restored after each mutation (also on Ctrl-C).

    python bench/mutation_check.py [--only N ...]

Prints a Markdown table (docs/algorithms.md) and exits 1 if a mutation survived.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SW = "tests/rlhf/test_ppo_switches.py::"
SH = "tests/rlhf/test_ppo_shaping.py::"
PK = "tests/rlhf/test_packing.py::"
VL = "tests/rlhf/test_vllm_rollout.py::"
ES = "tests/rlhf/test_early_stopping.py::"
AS = "tests/rlhf/test_async_schedule.py::"
CO = "tests/rlhf/test_colocated_schedule.py::"
EX = "tests/rlhf/test_export_choice.py::"
UT = "tests/launcher/test_user_task.py::"

# (what the break does, file, line as it is, line broken, tests that must fail)
MUTATIONS = [
    ("critic values read one position late", "rlhf/workers.py",
     "return values[:, r.prompt_len - 1:-1] * r.response_mask", "return values[:, r.prompt_len:] * r.response_mask",
     [SW + "test_critic_values_are_read_where_they_predict_each_response_token"]),
    ("GAE advantages whitened over padding too", "rlhf/algo/advantages.py",
     "return (masked_whiten(advantages, response_mask) if whiten",
     "return (masked_whiten(advantages, torch.ones_like(response_mask)) if whiten",
     [SH + "test_gae_advantages_are_whitened_over_valid_tokens_only_and_only_when_asked"]),
    ("whiten_advantages ignored", "rlhf/coordinator.py", "cfg.grpo_std,\n" + " " * 50 + "cfg.whiten_advantages)",
     "cfg.grpo_std,\n" + " " * 50 + "True)",
     [SH + "test_gae_advantages_are_whitened_over_valid_tokens_only_and_only_when_asked"]),
    ("value_clip ignored", "rlhf/coordinator.py", "CriticWorker.value_step, mb, cfg.value_clip)",
     "CriticWorker.value_step, mb, None)", [SW + "test_value_clip_clips_the_critics_update"]),
    ("kl_estimator ignored", "rlhf/coordinator.py", "kl = kl_estimate(cfg.kl_estimator,", 'kl = kl_estimate("k1",',
     [SH + "test_kl_estimator_is_the_one_configured"]),
    ("kl_target ignored", "rlhf/schedules.py", "KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon,",
     "KLController(cfg.kl_coef, None, cfg.kl_horizon,", [SW + "test_kl_target_moves_the_coefficient"]),
    ("critic_warmup_steps ignored", "rlhf/coordinator.py",
     "trains_policy = \"policy\" in trainers and (roles.critic is None or step >= cfg.critic_warmup_steps)",
     "trains_policy = \"policy\" in trainers",
     [SW + "test_critic_warmup_keeps_the_policy_fixed"]),
    ("score_baseline ignored", "rlhf/coordinator.py", 'if cfg.score_baseline == "leave_one_out":', "if False:",
     [SH + "test_score_baseline_and_normalisation_reach_the_rewards"]),
    ("entropy_coef ignored", "rlhf/coordinator.py", "PolicyStep(cfg.clip_eps, cfg.entropy_coef,",
     "PolicyStep(cfg.clip_eps, 0.0,", [SW + "test_entropy_bonus_holds_entropy_up"]),
    ("normalize_scores ignored", "rlhf/coordinator.py",
     "r.scores = combine_scores(components, cfg.score_weights, stats if cfg.normalize_scores else None,",
     "r.scores = combine_scores(components, cfg.score_weights, None,",
     [SH + "test_score_baseline_and_normalisation_reach_the_rewards"]),
    ("missing reward statistics skipped silently", "rlhf/coordinator.py",
     'if cfg.normalize_scores and "rm" in cfg.score_weights and stats is None:', "if False:",
     [SH + "test_normalize_scores_without_statistics_fails_loudly"]),
    ("ptx term ignored", "rlhf/workers.py", "if ptx is not None and hp.ptx_coef:", "if False:",
     [SW + "test_pretraining_loss_falls_with_ptx_and_not_without"]),
    ("ptx batch not split evenly over DP ranks", "rlhf/coordinator.py", "n = -(-self.size // ranks) * ranks",
     "n = self.size", [SW + "test_ptx_batches_give_every_data_parallel_rank_the_same_rows"]),
    ("advantage_estimator grpo runs rloo", "rlhf/algo/advantages.py",
     "return grpo_advantages(sequence, response_mask, group, grpo_std), None",
     "return rloo_advantages(sequence, response_mask, group), None",
     [SH + "test_each_estimator_is_the_one_configured"]),
    ("grpo_std ignored", "rlhf/algo/advantages.py", "grpo_advantages(sequence, response_mask, group, grpo_std)",
     "grpo_advantages(sequence, response_mask, group)", [SH + "test_each_estimator_is_the_one_configured"]),
    ("loss_agg ignored", "rlhf/coordinator.py", "loss_weights(mb.response_mask, cfg.loss_agg, cfg.max_new_tokens)",
     'loss_weights(mb.response_mask, "token_mean", cfg.max_new_tokens)',
     [SW + "test_loss_aggregation_reaches_the_policy"]),
    ("each DP rank normalises its own tokens (the old way)", "rlhf/workers.py",
     "weights = r.loss_weights * self.mesh.dp_size\n        kl =",
     "weights = r.loss_weights / r.loss_weights.sum()\n        kl =",
     ["tests/parallel/test_groups.py::test_a_nonfinite_loss_on_one_rank_skips_the_update_on_every_rank[0]"]),
    ("kl_penalty=loss still puts the KL in the reward", "rlhf/coordinator.py",
     'kl_coef if cfg.kl_penalty == "reward" else 0.0)', "kl_coef)", [SH + "test_kl_in_the_reward_or_in_the_loss"]),
    ("the KL loss term dropped by the worker", "rlhf/workers.py",
     "kl = KLTerm(r.ref_logprobs, hp.kl_coef, hp.kl_estimator) if hp.kl_coef else None", "kl = None",
     [SW + "test_kl_as_a_loss_term_holds_the_policy_back"]),
    ("clip_eps_high ignored", "rlhf/coordinator.py", "cfg.temperature, cfg.clip_eps_high, cfg.top_k,",
     "cfg.temperature, None, cfg.top_k,", [SW + "test_clip_higher_clips_fewer_ratios"]),
    ("filter_groups ignored", "rlhf/coordinator.py", "if not cfg.filter_groups:", "if True:",
     [SW + "test_group_filter_trains_only_prompts_whose_samples_differ"]),
    ("old log-probs without top-k/top-p", "rlhf/coordinator.py",
     "PolicyWorker.logprobs, r, cfg.temperature, cfg.top_k, cfg.top_p)", "PolicyWorker.logprobs, r, cfg.temperature)",
     [SW + "test_top_k_top_p_logprobs_come_from_the_sampling_distribution"]),
    ("update's log-probs without top-k/top-p", "rlhf/workers.py",
     "logprobs = sampled_logprobs(backend, logits, r.responses, hp.top_k, hp.top_p)",
     "logprobs = backend.token_logprobs(logits, r.responses)",
     [SW + "test_top_k_top_p_logprobs_come_from_the_sampling_distribution"]),
    ("sampler's log-probs of the unfiltered distribution", "models/generation.py",
     "return tokens, filtered.log_softmax(-1)", "return tokens, scaled.log_softmax(-1)",
     [SW + "test_top_k_top_p_logprobs_come_from_the_sampling_distribution"]),
    ("top-k/top-p log-probs on one TP shard of the vocabulary", "rlhf/logprobs.py",
     "full = backend.gather_vocab(logits).float()  # (B, R, V)", "full = logits.float()  # (B, R, V)",
     ["tests/parallel/test_groups.py::test_tp2_logits_equal_tp1_and_export_merges[gpt2]"]),
    ("recompute_logprobs_every ignored", "rlhf/coordinator.py",
     "recompute = step % cfg.recompute_logprobs_every == 0", "recompute = True",
     [SW + "test_old_logprobs_are_recomputed_every_n_steps_and_the_sampler_serves_between"]),
    ("the reference runs without a KL penalty", "rlhf/coordinator.py",
     "ReferenceWorker.logprobs, r, cfg.temperature) if cfg.kl_coef > 0\n",
     "ReferenceWorker.logprobs, r, cfg.temperature) if True\n",
     [SW + "test_without_a_kl_penalty_the_reference_does_not_run"]),
    ("DPO pairs weighted 1/n, not 1/(C(K,2)·n)", "rlhf/algo/ranking.py",
     "weight.append(1.0 / (n_pairs * len(group_sizes)))", "weight.append(1.0 / len(group_sizes))",
     ["tests/rlhf/algo/test_preference.py"]),
    ("DPO without the reference", "rlhf/algo/preference.py", "log_ratio = logprobs - ref_logprobs  # (N,)",
     "log_ratio = logprobs  # (N,)", ["tests/rlhf/algo/test_preference.py", "tests/rlhf/test_dpo.py"]),
    # #16: packing, token-balanced shares, finished rows, truncated importance sampling
    ("engine.packing ignored (always padded)", "rlhf/logprobs.py", "    if not packed:\n", "    if True:\n",
     [PK + "test_packing_reaches_every_role_and_changes_nothing_but_rounding"]),
    ("packed rows attend across sequences", "models/transformer.py", "ctx = ForwardContext(kpm, segments, cache, rope)",
     "ctx = ForwardContext(kpm, None, cache, rope)", ["tests/models/test_packing.py"]),
    ("rows split over ranks by count, not tokens", "rlhf/coordinator.py",
     "return None if dp == 1 else torch.tensor(balanced_order(",
     "return None if True else torch.tensor(balanced_order(",
     [PK + "test_map_by_tokens_balances_the_ranks_and_restores_the_row_order"]),
    ("balanced rows' results left in the balanced order", "rlhf/coordinator.py", "restored[self.order] = value",
     "restored[:] = value", [PK + "test_map_by_tokens_balances_the_ranks_and_restores_the_row_order",
                             PK + "test_rows_are_split_over_ranks_by_tokens_and_come_back_in_order"]),
    ("finished rows kept in the decoding batch", "models/generation.py",
     "if drop_finished and len(rows) - int(alive.sum()) >= max(1, len(rows) // 8):", "if False:",
     ["tests/models/test_generation.py::test_finished_rows_leave_the_batch_and_change_no_token"]),
    ("finished rows' draws skipped (other samples than a full batch's)", "models/generation.py",
     "tokens, lp = (x[rows] for x in sample_next(every, params, generator))",
     "tokens, lp = sample_next(logits[:, -1], params, generator)",
     ["tests/models/test_generation.py::test_dropping_finished_rows_changes_no_sample"]),
    ("importance weights of vLLM samples not computed", "rlhf/coordinator.py",
     'if (cfg.rollout == "vllm" or cfg.schedule == "async") and cfg.tis_cap is not None:', "if False:",
     [VL + "test_shape_weights_tokens_by_the_truncated_ratio_for_vllm_samples_only"]),
    ("importance weights not applied in the policy step", "rlhf/workers.py",
     "hp.clip_eps_high, kl, r.is_weights)", "hp.clip_eps_high, kl, None)",
     [VL + "test_policy_step_multiplies_the_surrogate_by_the_importance_weights"]),
    ("missing_eos_score ignored in shaping", "rlhf/coordinator.py",
     "r.scores = score_unfinished(r.scores, done, cfg.missing_eos_score)", "r.scores = r.scores",
     [SH + "test_responses_cut_off_at_the_length_limit_get_the_missing_eos_score"]),
    ("the loop checks no EOS", "rlhf/schedules.py", "self.kl_ctl.at(step), self.stats, self.tok.eos_token_id,",
     "self.kl_ctl.at(step), self.stats, None,", [SW + "test_the_loop_scores_cut_off_responses_with_missing_eos_score"]),
    ("score_scale ignored in shaping", "rlhf/coordinator.py", 'scores = scores / scale["reward/spread"]',
     "scores = scores", [SH + "test_score_scale_divides_the_baselined_scores_by_the_within_prompt_spread"]),
    ("the running score scale not restored on resume", "rlhf/schedules.py",
     'spread.load_state_dict(start["spread"])', "pass", [SW + "test_roles_without_a_critic_save_and_resume"]),
    ("SFT/RM patience ignored (every epoch runs)", "rlhf/epochs.py",
     "        if stopper.should_stop:\n            break\n", "",
     [ES + "test_sft_stops_at_patience_and_keeps_the_best_epoch", ES + "test_reward_model_stops_after_patience"]),
    ("SFT/RM keep_best ignored (the last epoch kept)", "rlhf/epochs.py",
     "if cfg.keep_best and stopper.best_epoch != epoch:", "if False:",
     [ES + "test_sft_stops_at_patience_and_keeps_the_best_epoch",
      ES + "test_reward_model_keeps_its_best_held_out_accuracy"]),
    ("SFT's select=reward ignored (chosen by loss)", "rlhf/sft.py",
     "EarlyStopping(*SELECT_METRIC[cfg.select], cfg.patience,", 'EarlyStopping(*SELECT_METRIC["loss"], cfg.patience,',
     [ES + "test_sft_select_reward_keeps_the_epoch_the_reward_prefers"]),
    ("decay_epochs ignored (the decay spans the bound)", "rlhf/epochs.py",
     "return min(cfg.decay_epochs or cfg.epochs, cfg.epochs)", "return cfg.epochs",
     [ES + "test_the_decay_spans_decay_epochs_at_most_the_bound"]),
    ("async: the generator never takes the policy's new weights", "rlhf/schedules.py",
     "            pushed = push_weights(roles)\n", "            pushed = Ready(None)\n",
     [AS + "test_each_step_samples_with_the_weights_of_before_the_last_update"]),
    ("async: a resumed run draws the next step's sample afresh", "rlhf/schedules.py",
     'self.pending = start.get("pending")', "self.pending = None", [AS + "test_async_resume_is_bit_exact"]),
    ("colocated: the schedule ignored (sync's loop runs)", "rlhf/schedules.py",
     '"colocated": colocated_schedule}', '"colocated": sync_schedule}',
     [CO + "test_one_role_on_the_device_at_a_time_and_the_same_run_as_sync"]),
    ("colocated: a moved tensor keeps its device storage", "parallel/engine.py",
     "t.data = torch.empty(0, dtype=t.dtype, device=t.device)", "pass",
     [CO + "test_one_role_on_the_device_at_a_time_and_the_same_run_as_sync"]),
    ("colocated: a call does not move its role in first", "rlhf/colocation.py",
     "group.before = partial(self._before, name)", "group.before = None",
     [CO + "test_one_role_on_the_device_at_a_time_and_the_same_run_as_sync"]),
    ("colocated: critic and policy updates interleaved (a move per minibatch)", "rlhf/schedules.py",
     "in_turn=devices is not None)", "in_turn=False)",
     [CO + "test_one_role_on_the_device_at_a_time_and_the_same_run_as_sync"]),
    ("colocated: DeepSpeed's states never offloaded", "parallel/zero.py",
     "self.engine.offload_states(pin_memory=True)", "pass",
     [CO + "test_zero_2_and_zero_1_trainers_move_and_come_back_the_same"]),
    ("ppo.export ignored (the objective's choice always made)", "rlhf/export_choice.py",
     'or self.mode != "objective" or step in', "or step in",
     [EX + "test_export_last_ignores_a_better_earlier_policy"]),
    ("export: an earlier policy taken on any gain, noise or not", "rlhf/export_choice.py",
     "if not gain.beyond_noise:", "if gain.mean <= 0:",
     [EX + "test_a_gain_within_one_standard_error_keeps_the_last"]),
    ("export: the KL left out of the objective", "rlhf/algo/selection.py",
     "per_prompt_means([s - beta * k for", "per_prompt_means([s - 0 * k for",
     [EX + "test_the_kl_counts_against_an_earlier_policy"]),
    ("export: the kept policy never copied over the last", "rlhf/export_choice.py",
     "shutil.copytree(self.dir, exported,", "shutil.copytree(self.dir, exported.with_suffix('.x'),",
     [UT + "test_ppo_exports_the_evaluation_with_the_higher_held_out_objective"]),
    ("validation reward model: the trained-against one scores instead", "rlhf/scoring.py",
     "return self.validation.scores(batch.rollout)", "return self.rm.scores(batch.rollout)",
     [UT + "test_a_validation_reward_model_trained_beside_the_reward_model_judges_the_export"]),
    ("ppo.validation_model=null ignored", "launcher/stages.py", "if v is None or (v == \"auto\" and reward is None):",
     "if v == \"auto\" and reward is None:",
     [UT + "test_a_validation_reward_model_trained_beside_the_reward_model_judges_the_export"]),
    ("export: the validation score not read", "rlhf/export_choice.py",
     "objective = objective_of(ev.rows, self.beta, self.samples, self.judge)",
     "objective = objective_of(ev.rows, self.beta, self.samples)",
     [EX + "test_the_validation_reward_model_judges_where_the_run_has_one"]),
    ("reward ensemble: the members' scores not read", "rlhf/scoring.py",
     "            if self.members:\n", "            if False:\n",
     [UT + "test_an_ensemble_of_reward_models_trains_together_and_ppo_scores_by_its_worst_case"]),
    ("ppo.reward_ensemble ignored (always the minimum)", "rlhf/algo/ppo.py",
     "reduced = z.min(0).values if reduce == \"min\" else z.mean(0)", "reduced = z.min(0).values",
     ["tests/rlhf/algo/test_ppo.py::test_ensemble_scores_by_hand",
      UT + "test_an_ensemble_of_reward_models_trains_together_and_ppo_scores_by_its_worst_case"]),
    ("ppo.reward_ensemble=null ignored", "launcher/stages.py",
     "members = ensemble_members(reward) if reward is not None and cfg.ppo.reward_ensemble else []",
     "members = ensemble_members(reward) if reward is not None else []",
     [UT + "test_an_ensemble_of_reward_models_trains_together_and_ppo_scores_by_its_worst_case"]),
    ("rm.ensemble: members from the reward model's own seeds", "launcher/stages.py",
     "other = train_rm_once(cfg.model_copy(update=seeds), inputs,", "other = train_rm_once(cfg, inputs,",
     [UT + "test_an_ensemble_of_reward_models_trains_together_and_ppo_scores_by_its_worst_case"]),
    ("target_kl ignored", "rlhf/coordinator.py", "cfg.kl_estimator, cfg.target_kl)", "cfg.kl_estimator, None)",
     [SW + "test_target_kl_stops_an_update_once_it_has_moved_the_policy_that_far"]),
    ("target_kl's update boundary lost", "rlhf/coordinator.py", '"first": not sent}', '"first": False}',
     [SW + "test_target_kl_stops_an_update_once_it_has_moved_the_policy_that_far"]),
    ("kl_start_factor ignored", "rlhf/schedules.py", "cfg.kl_horizon, cfg.kl_schedule_start,\n",
     "cfg.kl_horizon, None,\n", [SW + "test_kl_start_factor_falls_to_kl_coef_over_the_decay_steps"]),
    ("the scheduled β not the one shaping rewards", "rlhf/schedules.py",
     "shape(rollout, components, self.cfg, self.kl_ctl.at(step),",
     "shape(rollout, components, self.cfg, self.kl_ctl.value,",
     [SW + "test_kl_start_factor_falls_to_kl_coef_over_the_decay_steps"]),
    ("the reward model's floor of epochs not the cosine's end", "rlhf/reward_model.py",
     "if self.min_epochs else decay_span(self)", "if self.min_epochs else 1",
     [ES + "test_reward_model_by_default_runs_until_its_cosine_has_ended"]),
    ("ppo.patience ignored (every step runs)", "rlhf/export_choice.py",
     "if self.patience is None or not self.first_stop", "if True or not self.first_stop",
     [UT + "test_ppo_stops_once_its_held_out_objective_stops_rising",
      EX + "test_patience_stops_where_the_objective_stopped_rising_and_a_restart_reads_it_back"]),
    ("patience: the start as the first mark", "rlhf/algo/selection.py",
     "    steps = sorted(objectives)[1:]\n    if not steps:\n        return None\n    mark, since",
     "    steps = sorted(objectives)\n    if not steps:\n        return None\n    mark, since",
     ["tests/rlhf/algo/test_selection.py::test_plateau_by_hand"]),
    ("patience: the loop runs on after the stop", "rlhf/schedules.py",
     "finished = self.evaluate(step + 1)", "self.evaluate(step + 1)",
     [UT + "test_ppo_stops_once_its_held_out_objective_stops_rising"]),
    ("patience: a restart forgets the evaluations before its checkpoint", "rlhf/export_choice.py",
     "if s <= step and s not in self.objectives:", "if False:",
     [EX + "test_patience_stops_where_the_objective_stopped_rising_and_a_restart_reads_it_back"]),
    ("ppo.decay_steps ignored by the learning rate (the cosine over ppo.steps)", "launcher/pipeline.py",
     "n_updates = p.lr_steps * p.ppo_epochs", "n_updates = p.steps * p.ppo_epochs",
     [UT + "test_ppo_decay_steps_ends_the_cosine_there_and_no_stop_comes_before_it"]),
    ("ppo.decay_steps ignored by the stop (patience stops before the cosine's end)", "rlhf/export_choice.py",
     "not self.first_stop <= step < self.last_step", "not 0 <= step < self.last_step",
     [UT + "test_ppo_decay_steps_ends_the_cosine_there_and_no_stop_comes_before_it"]),
    ("a demonstrations mix learns the prompts too", "rlhf/coordinator.py",
     "return collate_lm([self.rows[j] for j in picked.tolist()], self.pad_id)",
     "b = collate_lm([self.rows[j] for j in picked.tolist()], self.pad_id); "
     "return LMBatch(b.input_ids, b.attention_mask, b.attention_mask)",
     [SW + "test_a_demonstrations_mix_teaches_their_responses_and_never_their_prompts"]),
    ("a demonstrations mix read with the default data keys", "rlhf/schedules.py",
     "PretrainingMix(tok, cfg, data)", "PretrainingMix(tok, cfg)",
     [SW + "test_a_demonstrations_mix_teaches_their_responses_and_never_their_prompts"]),
]


def run(tests: list[str]) -> tuple[bool, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode != 0, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", type=int, help="mutation numbers (1-based)")
    args = parser.parse_args()
    rows, survived = [], 0
    for i, (what, rel, line, broken, tests) in enumerate(MUTATIONS, 1):
        if args.only and i not in args.only:
            continue
        path = ROOT / rel
        original = path.read_text()
        if original.count(line) != 1:
            raise SystemExit(f"mutation {i} ({what}): {rel} holds its line {original.count(line)} times, not once")
        try:
            path.write_text(original.replace(line, broken))
            red, seconds = run(tests)
        finally:
            path.write_text(original)
        survived += not red
        names = ", ".join(t.split("::")[-1] if "::" in t else t for t in tests)
        rows.append(f"| {i} | {what} | `{rel}` | {names} | {'red' if red else '**survived**'} ({seconds:.0f} s) |")
        print(rows[-1], flush=True)
    print("\n| # | break | file | tests | result |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
