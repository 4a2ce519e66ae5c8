"""The PPO loop on in-process groups: KL responds to β, resume is exact, the training path reproduces
the sampling log-probs after every sync (also through ZeRO-3's generation copy), scores land on the
last real token."""

from __future__ import annotations

import pytest
import torch

from launcher.worker_group import Handle, LocalGroup
from parallel.engine import EngineConfig, OptimConfig
from parallel.host import ModelSource
from rlhf.algo.rollout import Rollout
from rlhf.coordinator import Roles
from rlhf.guards import DivergedError
from rlhf.ppo_config import PPOConfig
from rlhf.schedules import train_ppo
from rlhf.scoring import RewardWorker
from rlhf.task import WORDS
from rlhf.workers import CriticWorker, PolicyWorker, ReferenceWorker, RewardModelWorker

OPT = OptimConfig(lr=3e-3, warmup_steps=0, min_lr_ratio=1.0)
PLAIN = EngineConfig()


def role_args(root, policy_engine=PLAIN) -> dict[str, tuple]:
    """Each role's worker class and arguments, in Roles' order."""
    policy, reward = ModelSource(path=str(root / "policy")), ModelSource(path=str(root / "reward"))
    return {"policy": (PolicyWorker, policy, policy_engine, OPT, 100, 4),
            "reference": (ReferenceWorker, policy, EngineConfig()),
            "critic": (CriticWorker, reward, EngineConfig(), OPT, 100, 4),
            "reward": (RewardWorker, reward, EngineConfig())}


def roles(root, policy_engine=PLAIN) -> Roles:
    return Roles(*(LocalGroup(*args) for args in role_args(root, policy_engine).values()))


def run(root, tok, prompts, cfg: PPOConfig, start=None, saved=None, engine=PLAIN, nan_steps=(), out=None):
    """PPO on in-process groups; the reward role's scores are NaN at `nan_steps`; `out` gets the roles.
    With cfg.schedule=async a generator group samples (a copy of the policy without an optimizer)."""
    logged: dict[int, dict] = {}
    r = roles(root, engine)
    if cfg.schedule == "async":
        r.generator = LocalGroup(PolicyWorker, ModelSource(path=str(root / "policy")), PLAIN, seed=cfg.seed)
    if nan_steps:
        r.reward = NaNScores(r.reward, nan_steps)
    if out is not None:
        out["roles"] = r
    if start is not None:
        r.policy.broadcast(PolicyWorker.load_state, str(saved / "policy")).get()
        r.critic.broadcast(CriticWorker.load_state, str(saved / "critic")).get()

    def checkpoint(step, state):
        ranks = {k: v for k, v in state.items() if k != "pending"}  # the stage keeps an async run's sample apart
        r.policy.broadcast(PolicyWorker.save_state, str(root / f"ck{step}" / "policy"), ranks).get()
        r.critic.broadcast(CriticWorker.save_state, str(root / f"ck{step}" / "critic"), ranks).get()
        checkpoint.state = state
        if out is not None:
            out.setdefault("states", {})[step] = state

    train_ppo(r, tok, prompts, cfg, lambda m, s: logged.__setitem__(s, m), None, lambda s: None, checkpoint, start)
    return logged, getattr(checkpoint, "state", None)


SEVENS = """
def sevens(prompts, responses, op, **fields):
    # the fields arrive aligned with their rows: each prompt starts with its own op
    for p, o in zip(prompts, op, strict=True):
        if p.split()[0] != o:
            raise AssertionError(f"field op={o!r} arrived with prompt {p!r}")
    return [r.split().count("7") / max(1, len(r.split())) for r in responses]
"""


def test_a_reward_function_alone_drives_the_policy(setup, tmp_path):
    """No reward model: the reward ranks hold no weights; the function's score rises under PPO."""
    from dataclasses import replace

    from rlhf.functions import FunctionSpec

    root, tok, prompts = setup
    (tmp_path / "rewards.py").write_text(SEVENS)
    spec = FunctionSpec(function="rewards.py:sevens").resolved(tmp_path)
    prompts = [replace(p, fields={"op": p.text.split()[0]}) for p in prompts]
    reward = LocalGroup(RewardWorker, None, EngineConfig(), (spec,), str(tmp_path))
    assert reward.broadcast(lambda w: w.rm).get() == [None]
    policy = ModelSource(path=str(root / "policy"))
    r = Roles(LocalGroup(PolicyWorker, policy, PLAIN, OPT, 100, 4), LocalGroup(ReferenceWorker, policy, EngineConfig()),
              LocalGroup(CriticWorker, policy, EngineConfig(), OPT, 100, 4), reward)  # critic: a fresh value head
    cfg = base_cfg(steps=10, kl_coef=0.0, ppo_epochs=2, reward_model=None,
                   reward_functions=[{"function": spec.function, "weight": 2.0}])
    logged: dict[int, dict] = {}
    train_ppo(r, tok, prompts, cfg, lambda m, s: logged.__setitem__(s, m), None, lambda s: None, lambda s, t: None)
    first = sum(logged[s]["reward/fn/sevens"] for s in (1, 2)) / 2
    last = sum(logged[s]["reward/fn/sevens"] for s in (9, 10)) / 2
    assert last > first + 0.1, (first, last)
    assert logged[10]["reward/score"] == pytest.approx(2.0 * logged[10]["reward/fn/sevens"])  # the weight
    assert "reward/rm_score" not in logged[10]


def base_cfg(**kw) -> PPOConfig:
    """The loop tests' settings: random models, whose responses rarely end before 6 tokens, so they are
    scored as they are unless a test sets missing_eos_score; one sample per prompt, no baseline, one
    epoch, no critic warm-up and InstructGPT's β, fixed (not the suite-tuned defaults), unless a test says."""
    return PPOConfig(**{"prompts_per_step": 16, "minibatches": 2, "max_new_tokens": 6, "max_prompt_len": 12,
                        "normalize_scores": False, "eval_every": 1000, "missing_eos_score": None,
                        "samples_per_prompt": 1, "score_baseline": "none", "ppo_epochs": 1,
                        "critic_warmup_steps": 0, "kl_coef": 0.02, "kl_target": None} | kw)


def test_larger_beta_gives_smaller_kl(setup):
    root, tok, prompts = setup
    kl = {}
    for beta in (1e-6, 5.0):  # β > 0 so that the KL is measured: at β = 0 the reference does not run
        logged, _ = run(root, tok, prompts, base_cfg(steps=8, kl_coef=beta, ppo_epochs=2))
        kl[beta] = sum(logged[s]["kl/sequence"] for s in (6, 7, 8)) / 3
    assert kl[1e-6] > 0.05, kl  # the policy really moved
    assert kl[5.0] < 0.5 * kl[1e-6], kl


class NaNScores:
    """The reward role, except that its scores are NaN at the given steps (one scoring call per step)."""

    def __init__(self, group, steps):
        self.group, self.steps, self.calls, self.spec = group, set(steps), 0, group.spec

    def map(self, fn, batch, *args, **kwargs):
        self.calls += 1
        out = self.group.map(fn, batch, *args, **kwargs).get()
        if self.calls in self.steps:
            out = {k: torch.full_like(v, float("nan")) for k, v in out.items()}
        return Handle(lambda: out)

    def broadcast(self, fn, *args, **kwargs):
        return self.group.broadcast(fn, *args, **kwargs)


def weights(r: Roles) -> dict[str, torch.Tensor]:
    return {f"{role}.{k}": v.clone() for role in ("policy", "critic")
            for k, v in getattr(r, role)._rank.worker.engine.local_state_dict().items()}


def test_resume_is_bit_exact_with_the_pretraining_mix(setup):
    """Interrupted at step 2 and resumed = uninterrupted, bit for bit: metrics and final weights (the
    RNG of the rank, prompt order, KL controller, optimizer, LR schedule, and the PPO-ptx batches)."""
    root, tok, prompts = setup
    text = root / "ptx.txt"
    text.write_text(" ".join(WORDS[i % len(WORDS)] for i in range(0, 3000, 7)))
    cfg = {"ptx_coef": 0.5, "ptx_data": str(text), "ptx_batch_size": 4, "ptx_max_len": 8, "kl_target": 1.0,
           "policy": {"optim": {"lr": 3e-3, "warmup_steps": 2, "min_lr_ratio": 0.1}}}
    a, b = {}, {}
    straight, _ = run(root, tok, prompts, base_cfg(steps=4, **cfg), out=a)
    first, state = run(root, tok, prompts, base_cfg(steps=2, save_every=2, **cfg))
    assert state["step"] == 2 and state["kl"]["value"] != 0.02  # the adaptive controller moved
    resumed, _ = run(root, tok, prompts, base_cfg(steps=4, **cfg), start=state, saved=root / "ck2", out=b)
    assert_same_steps(straight, resumed, a, b)
    assert straight[4]["policy/ptx_loss"] > 0


def assert_same_steps(straight: dict, resumed: dict, a: dict, b: dict) -> None:
    """The resumed run logged steps 3 and 4 as the uninterrupted one did (times aside), and the two end
    with the same weights (a, b: each run's `out`)."""
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        for key, value in straight[step].items():
            if not key.startswith(("time", "perf/")):
                assert resumed[step][key] == value, (step, key)
    final, again = weights(a["roles"]), weights(b["roles"])
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_nonfinite_scores_skip_the_update_and_the_run_goes_on(setup):
    root, tok, prompts = setup
    out = {}
    logged, _ = run(root, tok, prompts, base_cfg(steps=3), nan_steps=[2], out=out)
    assert [logged[s]["check/skipped_step"] for s in (1, 2, 3)] == [0.0, 1.0, 0.0]
    assert "policy/pg_loss" not in logged[2] and "critic/loss" not in logged[2]
    assert all(torch.isfinite(w).all() for w in weights(out["roles"]).values())


def test_max_bad_steps_in_a_row_stop_the_run(setup):
    root, tok, prompts = setup
    with pytest.raises(DivergedError, match=r"PPO step 4: 3 steps in a row with non-finite values \(last: "
                                            r"non-finite scores for prompts \["):
        run(root, tok, prompts, base_cfg(steps=5), nan_steps=[2, 3, 4])


@pytest.mark.parametrize("stage", [0, 3])
def test_training_path_reproduces_sampling_logprobs(setup, stage):
    root, tok, prompts = setup
    logged, _ = run(root, tok, prompts, base_cfg(steps=3), engine=EngineConfig(zero_stage=stage))
    for step, m in logged.items():
        assert m["check/logprob_gap_max"] < 1e-5, (step, m["check/logprob_gap_max"])
    assert logged[3]["kl/sequence"] != 0.0  # the policy was updated and synced between steps


def test_score_lands_on_the_last_real_token(setup):
    root, tok, _ = setup
    reward = LocalGroup(RewardModelWorker, ModelSource(path=str(root / "reward")), EngineConfig())
    rm = reward.broadcast(lambda w: w.model).get()[0]
    pad, eos = tok.pad_token_id, tok.eos_token_id
    # left-padded prompts of 2 and 4 tokens; responses of 1 token + EOS and 3 tokens without EOS
    seqs = torch.tensor([[pad, pad, 5, 6, 7, eos, pad, pad], [5, 6, 7, 8, 9, 10, 11, pad]])
    seqs[1, -1] = pad
    attn = seqs != pad
    resp = attn[:, 4:]
    r = Rollout(seqs, attn, resp, prompt_len=4)
    got = reward.map(RewardModelWorker.scores, r).get()
    with torch.no_grad():
        expected = [rm.scores(seqs[0:1, 2:6], attn[0:1, 2:6])[0], rm.scores(seqs[1:2, :7], attn[1:2, :7])[0]]
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_updates_sent_ahead_to_ray_groups_equal_the_in_process_ones(ray_cluster, setup):
    """update() sends every minibatch of every epoch to the policy and critic groups before it awaits
    an answer; each Ray actor runs them in the order sent, so 2 steps × 2 epochs × 2 minibatches on
    one-rank Ray groups log what the in-process groups (each call done before the next is made) log."""
    from launcher.worker_group import GroupSpec, build_groups, shutdown_groups

    root, tok, prompts = setup
    cfg = base_cfg(steps=2, ppo_epochs=2, samples_per_prompt=2, score_baseline="leave_one_out")
    local, _ = run(root, tok, prompts, cfg)
    spec = GroupSpec(ranks=1, cpus_per_rank=0.5)
    groups = build_groups({role: (cls, spec, args, {}) for role, (cls, *args) in role_args(root).items()},
                          timeout_s=120)
    logged: dict[int, dict] = {}
    try:
        train_ppo(Roles(*groups.values()), tok, prompts, cfg, lambda m, s: logged.__setitem__(s, m), None,
                  lambda s: None, lambda step, state: None)
    finally:
        shutdown_groups(groups)
    assert sorted(logged) == sorted(local) == [1, 2]
    for step in (1, 2):
        keys = [k for k in local[step] if k.startswith(("policy/", "critic/", "kl/", "reward/"))]
        assert "policy/pg_loss" in keys and "critic/value_error" in keys
        for k in keys:
            # one process or another, its threads may sum in another order: not bit-equal, but an
            # update applied out of order or twice moves these by orders of magnitude more
            assert logged[step][k] == pytest.approx(local[step][k], rel=1e-4, abs=1e-6), (step, k)
