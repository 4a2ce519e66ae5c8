"""engine.packing reaches every forward of the PPO loop (scoring and training, all four roles) and
changes no number beyond rounding: the switch is the only difference between two short runs."""

from __future__ import annotations

import pytest

from launcher.worker_group import LocalGroup
from parallel.engine import EngineConfig
from parallel.host import ModelSource
from rlhf.coordinator import Roles, train_ppo
from rlhf.workers import CriticWorker, PolicyWorker, ReferenceWorker, RewardWorker
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
    for name, group in vars(roles).items():
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
