"""Every PPO switch of the loop, tested where it acts in short runs on in-process groups
(tests/rlhf/conftest.py), so that a switch the loop ignores fails a test; those that act in the
shaping of one rollout are in test_ppo_shaping.py. Each test names the line it guards;
docs/algorithms.md lists the mutation check run against them."""

from __future__ import annotations

import json

import pytest
import torch

from launcher.worker_group import LocalGroup
from models.generation import filter_logits
from parallel.engine import EngineConfig
from parallel.host import ModelSource
from rlhf.algo.rollout import Rollout
from rlhf.batching import encode_pair
from rlhf.coordinator import PretrainingMix, Roles
from rlhf.data import DataConfig
from rlhf.functions import FunctionSpec
from rlhf.schedules import train_ppo
from rlhf.scoring import RewardWorker
from rlhf.task import WORDS
from rlhf.workers import CriticWorker, PolicyWorker
from tests.rlhf.test_ppo_loop import base_cfg, roles


class Spy:
    """A group that records what each `map` call was given."""

    def __init__(self, group):
        self.group, self.calls, self.spec = group, [], group.spec

    def map(self, fn, batch, *args, **kwargs):
        self.calls.append((fn.__name__, batch, args))
        return self.group.map(fn, batch, *args, **kwargs)

    def broadcast(self, fn, *args, **kwargs):
        return self.group.broadcast(fn, *args, **kwargs)


def critic_free(root, spy: bool = False) -> Roles:
    r = roles(root)
    r.critic = None
    if spy:
        r.policy = Spy(r.policy)
    return r


def loop(r: Roles, tok, prompts, cfg, data: DataConfig | None = None) -> dict[int, dict]:
    logged: dict[int, dict] = {}
    train_ppo(r, tok, prompts, cfg, lambda m, s: logged.__setitem__(s, m), None, lambda s: None, lambda s, t: None,
              data=data)
    return logged


def policy_weights(r: Roles) -> dict[str, torch.Tensor]:
    group = r.policy.group if isinstance(r.policy, Spy) else r.policy
    return {k: v.clone() for k, v in group._rank.worker.engine.local_state_dict().items()}


def test_critic_values_are_read_where_they_predict_each_response_token(setup):
    """values[:, t] is V of the state before response token t: the critic's output at the last token of
    the prefix prompt + response[:t], forwarded alone (guards CriticWorker._values' slice)."""
    root, tok, _ = setup
    critic = LocalGroup(CriticWorker, ModelSource(path=str(root / "reward")), EngineConfig())
    model = critic.broadcast(lambda w: w.model).get()[0]
    pad, eos = tok.pad_token_id, tok.eos_token_id
    seqs = torch.tensor([[pad, 5, 6, 7, 8, 9, eos], [4, 5, 6, 7, 8, 9, 10]])
    attn = seqs != pad
    r = Rollout(seqs, attn, attn[:, 4:], prompt_len=4)
    got = critic.map(CriticWorker.values, r).get()
    with torch.no_grad():
        for b, start in ((0, 1), (1, 0)):
            for t in range(3):
                prefix = seqs[b:b + 1, start:4 + t]
                want = model.scores(prefix, torch.ones_like(prefix, dtype=torch.bool))[0]
                assert float(got[b, t]) == pytest.approx(float(want), abs=1e-5), (b, t)


def test_the_loop_scores_cut_off_responses_with_missing_eos_score(setup):
    """Guards: the loop passes the tokenizer's EOS to shape. One new token: the random policy's
    responses almost never end, so nearly all score −300."""
    root, tok, prompts = setup
    logged = loop(roles(root), tok, prompts, base_cfg(steps=1, max_new_tokens=1, missing_eos_score=-300.0))
    assert logged[1]["response/unfinished"] > 0.5
    assert logged[1]["reward/score"] < -100.0


def test_critic_warmup_keeps_the_policy_fixed(setup):
    root, tok, prompts = setup
    r = roles(root)
    before = policy_weights(r)
    logged = loop(r, tok, prompts, base_cfg(steps=2, critic_warmup_steps=2))
    assert all(torch.equal(before[k], v) for k, v in policy_weights(r).items())
    assert "policy/pg_loss" not in logged[2] and "critic/loss" in logged[2]
    logged = loop(r, tok, prompts, base_cfg(steps=1, critic_warmup_steps=0))
    assert "policy/pg_loss" in logged[1]


def test_value_clip_clips_the_critics_update(setup):
    root, tok, prompts = setup
    frac = {}
    for clip in (None, 0.01):
        logged = loop(roles(root), tok, prompts, base_cfg(steps=2, ppo_epochs=4, value_clip=clip))
        frac[clip] = logged[2]["critic/clipfrac"]
    assert frac[None] == 0.0 and frac[0.01] > 0.1, frac


def test_kl_target_moves_the_coefficient(setup):
    root, tok, prompts = setup
    fixed = loop(roles(root), tok, prompts, base_cfg(steps=3, kl_coef=0.1, kl_horizon=10))
    adaptive = loop(roles(root), tok, prompts, base_cfg(steps=3, kl_coef=0.1, kl_target=100.0, kl_horizon=10))
    assert [fixed[s]["kl/coef"] for s in (1, 3)] == [0.1, 0.1]
    # KL far below its target: β shrinks by the clipped 20% × 16 rollouts / horizon 10 after each step
    assert adaptive[3]["kl/coef"] == pytest.approx(0.1 * (1 - 0.2 * 1.6) ** 2)


def test_kl_start_factor_falls_to_kl_coef_over_the_decay_steps(setup):
    root, tok, prompts = setup
    logged = loop(roles(root), tok, prompts, base_cfg(steps=4, kl_coef=0.1, kl_start_factor=5, kl_decay_steps=2))
    assert [logged[s]["kl/coef"] for s in (1, 2, 3, 4)] == pytest.approx([0.5, 0.3, 0.1, 0.1])
    # the penalty the rollouts' rewards carry is that β's: total = baselined score − β · KL per response
    for s in (1, 2, 3):
        row = logged[s]
        assert row["reward/total"] == pytest.approx(row["reward/score_baselined"] - row["kl/coef"] * row["kl/sequence"],
                                                    abs=1e-5)


def test_entropy_bonus_holds_entropy_up(setup, tmp_path):
    """A reward for one token collapses the policy's entropy; the entropy bonus holds it up."""
    root, tok, prompts = setup
    entropy = {}
    for coef in (0.0, 0.5):
        r = critic_free(root)
        r.reward = sevens(tmp_path)
        cfg = base_cfg(steps=8, kl_coef=0.0, ppo_epochs=2, samples_per_prompt=4, advantage_estimator="rloo",
                       entropy_coef=coef, reward_model=None, reward_functions=[{"function": SEVENS_FN}])
        entropy[coef] = loop(r, tok, prompts, cfg)[8]["policy/entropy"]
    assert entropy[0.5] > entropy[0.0] + 0.1, entropy


def test_clip_higher_clips_fewer_ratios(setup):
    root, tok, prompts = setup
    frac = {}
    for high in (None, 10.0):
        logged = loop(roles(root), tok, prompts, base_cfg(steps=3, ppo_epochs=4, clip_eps=0.05, clip_eps_high=high))
        frac[high] = logged[3]["policy/clipfrac"]
    assert frac[10.0] < 0.8 * frac[None], frac


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_loss_aggregation_reaches_the_policy(setup, mode):
    root, tok, prompts = setup
    r = critic_free(root, spy=True)
    cfg = base_cfg(steps=1, samples_per_prompt=2, advantage_estimator="rloo", loss_agg=mode)
    loop(r, tok, prompts, cfg)
    batches = [b["rollout"] for name, b, _ in r.policy.calls if name == "ppo_step"]
    assert len(batches) == 2
    for mb in batches:
        mask, w = mb.response_mask, mb.loss_weights
        assert float(w.sum()) == pytest.approx(1.0 if mode != "seq_mean_token_sum_norm" else
                                               float(mask.sum()) / (mask.shape[0] * cfg.max_new_tokens))
        per_row = w.sum(-1)[mask.any(-1)]
        if mode == "seq_mean_token_mean":
            assert per_row.tolist() == pytest.approx([1 / mask.shape[0]] * len(per_row))
        elif mode == "token_mean":
            assert w[mask].tolist() == pytest.approx([1 / float(mask.sum())] * int(mask.sum()))


def test_group_filter_trains_only_prompts_whose_samples_differ(setup, tmp_path):
    """A reward that is constant on `copy` prompts: with filter_groups only `reverse` prompts are trained."""
    root, tok, prompts = setup
    (tmp_path / "fn.py").write_text("def split(prompts, responses, **f):\n"
                                    "    return [0.0 if p.startswith('copy') else float(len(r)) "
                                    "for p, r in zip(prompts, responses)]\n")
    spec = FunctionSpec(function="fn.py:split").resolved(tmp_path)
    for on in (False, True):
        r = critic_free(root, spy=True)
        r.reward = LocalGroup(RewardWorker, None, EngineConfig(), (spec,), str(tmp_path))
        cfg = base_cfg(steps=1, samples_per_prompt=2, advantage_estimator="grpo", filter_groups=on,
                       reward_model=None, reward_functions=[{"function": spec.function}])
        logged = loop(r, tok, prompts, cfg)
        trained = [b["rollout"] for name, b, _ in r.policy.calls if name == "ppo_step"]
        first_words = {tok.decode(row[mb.attention_mask[i]][:1]) for mb in trained for i, row in
                       enumerate(mb.sequences)}
        assert ("copy" in first_words) is not on, first_words
        assert ("filter/kept_fraction" in logged[1]) is on


SEVENS_FN = "rewards.py:sevens"


def sevens(directory) -> LocalGroup:
    """A reward role that pays the share of "7" in a response (no reward model)."""
    (directory / "rewards.py").write_text("def sevens(prompts, responses, **f):\n"
                                          "    return [r.split().count('7') / max(1, len(r.split())) "
                                          "for r in responses]\n")
    spec = FunctionSpec(function=SEVENS_FN).resolved(directory)
    return LocalGroup(RewardWorker, None, EngineConfig(), (spec,), str(directory))


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_estimators_drive_the_policy_without_a_critic(setup, tmp_path, estimator):
    root, tok, prompts = setup
    r = critic_free(root)
    r.reward = sevens(tmp_path)
    cfg = base_cfg(steps=10, kl_coef=0.0, ppo_epochs=2, samples_per_prompt=4, advantage_estimator=estimator,
                   reward_model=None, reward_functions=[{"function": SEVENS_FN}])
    logged = loop(r, tok, prompts, cfg)
    first = sum(logged[s]["reward/fn/sevens"] for s in (1, 2)) / 2
    last = sum(logged[s]["reward/fn/sevens"] for s in (9, 10)) / 2
    assert last > first + 0.1, (first, last)
    assert not any(k.startswith("critic/") for k in logged[10])


def test_target_kl_stops_an_update_once_it_has_moved_the_policy_that_far(setup):
    """Guards: the loop passes ppo.target_kl to the policy (PolicyStep), and ppo_step's bound. 4 epochs × 2
    minibatches: the first is measured at the rollout's own policy (approximate KL about 0) and steps; the
    second measures that step, passes a bound of 1e-6, and neither it nor the six after it step. The next
    step's update starts again."""
    root, tok, prompts = setup
    logged, moved = {}, {}
    for bound in (None, 1e-6):
        r = roles(root)
        before = policy_weights(r)
        logged[bound] = loop(r, tok, prompts, base_cfg(steps=2, ppo_epochs=4, target_kl=bound))
        moved[bound] = sum(float((v - before[k]).square().sum()) for k, v in policy_weights(r).items()) ** 0.5
    assert "policy/kl_stopped" not in logged[None][2]
    assert [logged[1e-6][s]["policy/kl_stopped"] for s in (1, 2)] == [7 / 8, 7 / 8]
    assert 0 < moved[1e-6] < 0.5 * moved[None], moved  # 2 optimizer steps of 16


def test_kl_as_a_loss_term_holds_the_policy_back(setup):
    root, tok, prompts = setup
    kl = {}
    for beta in (1e-6, 5.0):  # β > 0 so that the KL is measured: at β = 0 the reference does not run
        logged = loop(roles(root), tok, prompts, base_cfg(steps=6, kl_coef=beta, ppo_epochs=2, kl_penalty="loss",
                                                          kl_estimator="k2"))
        kl[beta] = sum(logged[s]["kl/sequence"] for s in (5, 6)) / 2
        assert "policy/kl_loss" in logged[6]
    assert kl[5.0] < 0.5 * kl[1e-6], kl


def test_top_k_top_p_logprobs_come_from_the_sampling_distribution(setup):
    """Sampling with top-k/top-p: the training path's log-probs equal the sampler's (gap ~0), and they
    are not the unfiltered ones (which would make the ratio and the KL of another distribution)."""
    root, tok, prompts = setup
    r = roles(root)
    r.policy = Spy(r.policy)
    logged = loop(r, tok, prompts, base_cfg(steps=2, top_k=5, top_p=0.9))
    assert all(m["check/logprob_gap_max"] < 1e-4 for m in logged.values())
    (_, rollout, args), = [c for c in r.policy.calls if c[0] == "logprobs"][-1:]
    assert args[1:] == (5, 0.9)
    unfiltered = r.policy.group.map(PolicyWorker.logprobs, rollout, 1.0).get()
    filtered = r.policy.group.map(PolicyWorker.logprobs, rollout, 1.0, 5, 0.9).get()
    assert float((filtered - unfiltered).abs().max()) > 0.05
    # the sampler's own filter, applied by hand to one row's logits, gives the same log-probs
    logits = torch.randn(3, 11)
    kept = filter_logits(logits, 5, 0.9)
    assert torch.isinf(kept).sum() >= 3 * 6
    # the update's ratio starts at exactly 1: its log-probs are of the same filtered distribution
    cfg = base_cfg(steps=1, top_k=5, top_p=0.9).model_copy(update={"minibatches": 1})
    logged = loop(roles(root), tok, prompts, cfg)
    assert logged[1]["policy/approx_kl"] < 1e-6 and logged[1]["policy/clipfrac"] == 0.0


def test_without_a_kl_penalty_the_reference_does_not_run(setup):
    root, tok, prompts = setup
    for beta in (0.0, 0.1):
        r = roles(root)
        r.reference = Spy(r.reference)
        logged = loop(r, tok, prompts, base_cfg(steps=2, kl_coef=beta))
        assert len(r.reference.calls) == (2 if beta else 0)
        assert ("kl/sequence" in logged[2]) is bool(beta)
        assert "policy/pg_loss" in logged[2]


def test_old_logprobs_are_recomputed_every_n_steps_and_the_sampler_serves_between(setup):
    """recompute_logprobs_every=3: the policy scores its samples at steps 1 and 4 only (the gap is
    checked there); between, the update's ratio starts from the sampler's log-probs, within 1e-5."""
    root, tok, prompts = setup
    r = roles(root)
    r.policy = Spy(r.policy)
    cfg = base_cfg(steps=4, recompute_logprobs_every=3).model_copy(update={"minibatches": 1})
    logged = loop(r, tok, prompts, cfg)
    assert sum(name == "logprobs" for name, _, _ in r.policy.calls) == 2
    assert [("check/logprob_gap_max" in logged[s]) for s in (1, 2, 3, 4)] == [True, False, False, True]
    assert all(logged[s]["policy/approx_kl"] < 1e-5 for s in (2, 3))  # first (only) minibatch: ratio ≈ 1
    every = loop(roles(root), tok, prompts, base_cfg(steps=2))
    assert all("check/logprob_gap_max" in m for m in every.values())


def test_pretraining_loss_falls_with_ptx_and_not_without(setup):
    root, tok, prompts = setup
    text = root / "ptx-falls.txt"
    text.write_text(" ".join(WORDS[(i * 3) % len(WORDS)] for i in range(4000)))  # a repeating pattern to learn
    probe_cfg = base_cfg(steps=1, ptx_coef=1.0, ptx_data=str(text), ptx_max_len=16, seed=99)
    probe = PretrainingMix(tok, probe_cfg).batch(0)
    mixed_loss_falls(setup, probe, text)


def mixed_loss_falls(setup, probe, mix, data: DataConfig | None = None) -> None:
    """4 steps with the mix (γ 1) lower the loss of the `probe` batch by 0.3 nats or more; 4 without it (and no
    KL) lower it by less than 0.1, and log no mixed loss."""
    root, tok, prompts = setup
    nll = {}
    for coef in (0.0, 1.0):
        r = roles(root)
        before = r.policy.map(PolicyWorker.sft_eval, probe).get()
        cfg = base_cfg(steps=4, kl_coef=0.0, ptx_coef=coef, ptx_data=str(mix) if coef else None, ptx_max_len=16,
                       ptx_batch_size=8)
        logged = loop(r, tok, prompts, cfg, data)
        after = r.policy.map(PolicyWorker.sft_eval, probe).get()
        nll[coef] = (before["nll_sum"] / before["tokens"], after["nll_sum"] / after["tokens"])
        assert ("policy/ptx_loss" in logged[4]) is bool(coef)
    assert nll[1.0][1] < nll[1.0][0] - 0.3, nll
    assert nll[0.0][1] > nll[0.0][0] - 0.1, nll


def test_a_demonstrations_mix_teaches_their_responses_and_never_their_prompts(setup):
    """ppo.ptx_data naming demonstrations (.jsonl, read with the run's data keys) mixes in their SFT loss: each
    row is a demonstration encoded as SFT encodes it, the response (and EOS) the only targets, and the loop
    lowers the responses' loss (guards PretrainingMix's demonstrations branch and train_ppo's `data`)."""
    root, tok, prompts = setup
    demos = root / "ptx-demos.jsonl"
    rows = [{"q": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3)),
             "a": " ".join(WORDS[(i * 3 + k) % 7] for k in range(4))} for i in range(200)]
    demos.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = DataConfig(prompt_key="q", response_key="a")
    probe = PretrainingMix(tok, base_cfg(steps=1, ptx_coef=1.0, ptx_data=str(demos), ptx_max_len=16, seed=99),
                           keys).batch(0)
    encoded = {tuple(e.prompt + e.response): e for e in (encode_pair(tok, r["q"], r["a"], 16) for r in rows)}
    for ids, mask, target in zip(probe.input_ids, probe.attention_mask, probe.loss_mask, strict=True):
        e = encoded[tuple(ids[mask].tolist())]  # a demonstration, whole
        assert target[mask].tolist() == [False] * len(e.prompt) + [True] * len(e.response)
    mixed_loss_falls(setup, probe, demos, keys)


def test_ptx_batches_give_every_data_parallel_rank_the_same_rows(setup):
    root, tok, _ = setup
    text = root / "ptx-split.txt"
    text.write_text(" ".join(WORDS[i % len(WORDS)] for i in range(500)))
    mix = PretrainingMix(tok, base_cfg(steps=1, ptx_coef=1.0, ptx_data=str(text), ptx_batch_size=3, ptx_max_len=8))
    from launcher.worker_group import split_batch

    assert mix.batch(0).input_ids.shape[0] == 3
    shards = split_batch(mix.batch(0, ranks=4), 4)
    assert [s.input_ids.shape[0] for s in shards] == [1, 1, 1, 1]
    shards = split_batch(mix.batch(0, ranks=2), 2)
    assert [s.input_ids.shape[0] for s in shards] == [2, 2]
    assert torch.equal(mix.batch(5, 2).input_ids, mix.batch(5, 2).input_ids)  # a function of its position


def test_roles_without_a_critic_save_and_resume(setup):
    """A critic-free run checkpoints the policy alone and resumes bit-exactly from it, the running
    score scale included (its state is in the checkpoint's state: a fresh one changes step 3's loss)."""
    root, tok, prompts = setup
    cfg = base_cfg(steps=3, samples_per_prompt=2, advantage_estimator="rloo", score_scale="prompt_spread")
    straight = loop(critic_free(root), tok, prompts, cfg)
    r = critic_free(root)
    saved = {}

    def checkpoint(step, state):
        r.policy.broadcast(PolicyWorker.save_state, str(root / "cf" / "policy"), state).get()
        saved.update(state)

    train_ppo(r, tok, prompts, cfg.model_copy(update={"steps": 2, "save_every": 2}), lambda m, s: None, None,
              lambda s: None,
              checkpoint)
    again = critic_free(root)
    again.policy.broadcast(PolicyWorker.load_state, str(root / "cf" / "policy")).get()
    logged: dict[int, dict] = {}
    train_ppo(again, tok, prompts, cfg, lambda m, s: logged.__setitem__(s, m), None, lambda s: None,
              lambda s, t: None, saved)
    assert logged[3]["reward/score"] == straight[3]["reward/score"]
    assert logged[3]["policy/pg_loss"] == straight[3]["policy/pg_loss"]

