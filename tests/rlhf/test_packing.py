"""engine.packing reaches every forward of the PPO loop (scoring and training, all four roles) and
changes no number beyond rounding: the switch is the only difference between two short runs. And
the rows of every call are split over data-parallel ranks by tokens, not by rows alone."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from launcher.worker_group import Handle, LocalGroup, split_batch
from parallel.engine import EngineConfig
from parallel.host import ModelSource
from parallel.mesh import GroupSpec
from rlhf.algo.rollout import Rollout
from rlhf.batching import balanced_order
from rlhf.coordinator import Roles, map_by_tokens
from rlhf.schedules import train_ppo
from rlhf.scoring import RewardWorker
from rlhf.workers import CriticWorker, PolicyWorker, ReferenceWorker
from tests.rlhf.test_ppo_loop import OPT, base_cfg


class SpyEngine:
    """Delegates to a worker's engine; records, per forward, whether it got packed rows and how many."""

    def __init__(self, engine, calls: list):
        self._engine, self._calls = engine, calls

    def __call__(self, *args, **kwargs):
        self._calls.append((kwargs.get("segments") is not None, args[0].shape[0]))
        return self._engine(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine, name)


def run(root, tok, prompts, packing: bool):
    policy, reward = ModelSource(path=str(root / "policy")), ModelSource(path=str(root / "reward"))
    engine = EngineConfig(packing=packing)
    roles = Roles(LocalGroup(PolicyWorker, policy, engine, OPT, 100, 4), LocalGroup(ReferenceWorker, policy, engine),
                  LocalGroup(CriticWorker, reward, engine, OPT, 100, 4), LocalGroup(RewardWorker, reward, engine))
    calls = {name: [] for name in ("policy", "reference", "critic", "reward")}
    for name, group in ((n, g) for n, g in vars(roles).items() if g is not None):
        worker = group._rank.worker
        worker = worker.rm if name == "reward" else worker
        worker.engine = SpyEngine(worker.engine, calls[name])
    logged = {}
    cfg = base_cfg(steps=3, kl_coef=0.05, samples_per_prompt=2)
    train_ppo(roles, tok, prompts, cfg, lambda m, s: logged.__setitem__(s, m), None, lambda s: None,
              lambda s, st: None, None)
    return logged, calls


def test_packing_reaches_every_role_and_changes_nothing_but_rounding(setup):
    root, tok, prompts = setup
    packed, packed_calls = run(root, tok, prompts, packing=True)
    padded, padded_calls = run(root, tok, prompts, packing=False)
    for name in packed_calls:
        # Generation's KV-cached decoding does not go through the engine; every other forward does.
        assert packed_calls[name] and all(p for p, _ in packed_calls[name]), name
        assert padded_calls[name] and not any(p for p, _ in padded_calls[name]), name
    # Short responses share rows: the packed forwards ran on fewer rows than the padded ones.
    assert sum(n for _, n in packed_calls["policy"]) < sum(n for _, n in padded_calls["policy"])
    for step in (1, 2, 3):
        for key in ("reward/score", "kl/sequence", "critic/values", "policy/pg_loss", "policy/entropy", "critic/loss",
                    "response/length"):
            assert packed[step][key] == pytest.approx(padded[step][key], rel=1e-4, abs=1e-5), (step, key)


def test_balanced_order_by_hand():
    # Parts of 3 rows. Longest first, each to the lighter part with room: 10 → A, 9 → B, 8 → B (9 < 10),
    # 3 → A (10 < 17), 2 → A (13 < 17; A is then full), 1 → B. A = rows 0, 5, 3 (15 tokens), B = 2, 4, 1 (18).
    assert balanced_order([10, 1, 9, 2, 8, 3], 2) == [0, 3, 5, 1, 2, 4]
    assert balanced_order([5, 4], 1) == [0, 1]
    assert sorted(balanced_order([3, 1, 4, 1, 5], 2)) == [0, 1, 2, 3, 4]


def test_split_batch_keeps_tensors_and_lists_row_for_row():
    @dataclass
    class Rows:
        ids: torch.Tensor
        texts: list[str]

    parts = split_batch(Rows(torch.arange(5), list("abcde")), 2)
    for part in parts:
        assert ["abcde"[i] for i in part.ids.tolist()] == part.texts


class TwoRanks:
    """A one-process group that says it has two data-parallel ranks, and records what each rank's share
    of every call's rows would hold, in tokens."""

    def __init__(self, group):
        self.group, self.spec, self.shares = group, GroupSpec(ranks=2), []

    def map(self, fn, batch, *args, **kwargs):
        rollout = batch["rollout"] if isinstance(batch, dict) else getattr(batch, "rollout", batch)
        if hasattr(rollout, "attention_mask"):  # not the prompts of `generate`
            self.shares.append([int(part.attention_mask.sum()) for part in split_batch(rollout, 2)])
        return self.group.map(fn, batch, *args, **kwargs)

    def broadcast(self, fn, *args, **kwargs):
        return self.group.broadcast(fn, *args, **kwargs)


def test_rows_are_split_over_ranks_by_tokens_and_come_back_in_order(setup):
    """Guards: map_by_tokens and the minibatch order in coordinator.update, and InOrder's restoring of
    each result to its row: with two (simulated) ranks the run's numbers are those of one rank."""
    root, tok, prompts = setup
    policy, reward = ModelSource(path=str(root / "policy")), ModelSource(path=str(root / "reward"))
    runs = {}
    for ranks in (1, 2):
        roles = Roles(LocalGroup(PolicyWorker, policy, EngineConfig(), OPT, 100, 4),
                      LocalGroup(ReferenceWorker, policy, EngineConfig()),
                      LocalGroup(CriticWorker, reward, EngineConfig(), OPT, 100, 4),
                      LocalGroup(RewardWorker, reward, EngineConfig()))
        if ranks == 2:
            roles = Roles(*(TwoRanks(g) for g in (roles.policy, roles.reference, roles.critic, roles.reward)))
        logged = {}
        train_ppo(roles, tok, prompts, base_cfg(steps=2, kl_coef=0.05, temperature=1.5),
                  lambda m, s, out=logged: out.__setitem__(s, m), None, lambda s: None, lambda s, st: None, None)
        runs[ranks] = (logged, roles)
    for step in (1, 2):
        for key in ("reward/score", "kl/sequence", "critic/values", "policy/pg_loss", "critic/loss"):
            assert runs[2][0][step][key] == pytest.approx(runs[1][0][step][key], rel=1e-4, abs=1e-6), (step, key)
    shares = [s for g in vars(runs[2][1]).values() if g is not None for s in g.shares]
    assert len(shares) > 10
    assert max(abs(a - b) for a, b in shares) <= 18  # within one row's tokens (prompt ≤ 12 + 6 new)


class Echo:
    """A one-rank group that runs `fn` on the whole batch in this process."""

    spec = GroupSpec()

    def map(self, fn, batch, *args):
        return Handle(lambda: fn(batch, *args))


def test_map_by_tokens_balances_the_ranks_and_restores_the_row_order():
    """Guards: token_balanced and InOrder in rlhf/coordinator.py. Rows of 10, 10, 10, 1, 1, 1 tokens:
    split by rows, one rank gets 30 tokens and the other 3; by tokens, 21 and 12."""
    lengths = [10, 10, 10, 1, 1, 1]
    mask = torch.tensor([[t < n for t in range(10)] for n in lengths])
    ids = torch.arange(6)[:, None].expand(6, 10)  # each row's tokens are its index
    r = Rollout(ids, mask, mask, 0)
    group = TwoRanks(Echo())
    out = map_by_tokens(group, lambda b: {"row": b.sequences[:, 0].float(), "metric": 1.0}, r).get()
    assert group.shares == [[21, 12]]
    assert out["row"].tolist() == [0, 1, 2, 3, 4, 5] and out["metric"] == 1.0
    assert [int(p.attention_mask.sum()) for p in split_batch(r, 2)] == [30, 3]
