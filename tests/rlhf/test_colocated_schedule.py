"""ppo.schedule=colocated on in-process groups: whenever a role is called, every other role's state is in
host memory (its device storage released), the run logs and ends exactly as the synchronous one, and
the peak state bytes on a device are one role's, not the sum. Also with ZeRO-2 and ZeRO-1 engines."""

from __future__ import annotations

import pytest
import torch

from launcher.worker_group import LocalGroup
from parallel.engine import EngineConfig
from rlhf.coordinator import Roles
from rlhf.residency import to_device, to_host
from rlhf.schedules import train_ppo
from rlhf.workers import PolicyWorker
from tests.rlhf.test_ppo_loop import base_cfg, role_args, weights


class Watched:
    """A group that notes, at each call (once the call has put its role on the devices), which other
    roles still hold weights on the device."""

    def __init__(self, name: str, group, everyone: dict, seen: list):
        self.name, self.group, self.spec, self.everyone, self.seen = name, group, group.spec, everyone, seen

    @property
    def before(self):
        return self.group.before

    @before.setter
    def before(self, hook):
        self.group.before = hook

    def _check(self, fn) -> None:
        if fn in (to_host, to_device):
            return
        if self.group.before is not None:
            self.group.before(fn)
        others = [n for n, g in self.everyone.items() if n != self.name and resident(g)]
        self.seen.append((self.name, fn.__name__, others))

    def map(self, fn, batch, *args, **kwargs):
        self._check(fn)
        return self.group.map(fn, batch, *args, **kwargs)

    def broadcast(self, fn, *args, **kwargs):
        self._check(fn)
        return self.group.broadcast(fn, *args, **kwargs)


def worker(group):
    w = group._rank.worker
    return w.rm if hasattr(w, "rm") else w


def resident(group) -> bool:
    """Does any of the role's parameters hold storage on its device? For a DeepSpeed engine, whose host
    buffers are CPU tensors as its device ones are here: has DeepSpeed moved none of its states?"""
    w = worker(group)
    if w.engine_cfg.zero_stage:
        return not w.engine.engine.optimizer.offloaded_states
    return any(p.untyped_storage().nbytes() for p in w.model.parameters())


def run(root, tok, prompts, cfg, engines: dict | None = None):
    """PPO on in-process groups (`engines`: role → EngineConfig), every group watched; each evaluation
    exports the policy and each save writes policy and critic. Returns what was logged, the roles (all
    back on the device) and the watch's notes: (role, call, other roles on the device then)."""
    args = role_args(root)
    for role, engine in (engines or {}).items():
        cls, src, _, *rest = args[role]
        args[role] = (cls, src, engine, *rest)
    groups = {name: LocalGroup(*a) for name, a in args.items()}
    seen: list = []
    roles = Roles(**{n: Watched(n, g, groups, seen) for n, g in groups.items()})
    logged: dict[int, dict] = {}

    def evaluate(step):
        roles.policy.broadcast(PolicyWorker.export, str(root / f"eval{step}")).get()

    def checkpoint(step, state):
        for name in ("policy", "critic"):
            getattr(roles, name).broadcast(PolicyWorker.save_state, str(root / f"co{step}" / name), state).get()

    train_ppo(roles, tok, prompts, cfg, lambda m, s: logged.__setitem__(s, m), None, evaluate, checkpoint)
    assert groups["policy"].before is None and resident(groups["policy"])  # left for the stage's export
    for group in groups.values():  # the critic's weights too, to compare
        group.broadcast(to_device).get()
    return logged, Roles(**groups), seen


def assert_same_run(a: dict, b: dict, roles_a: Roles, roles_b: Roles) -> None:
    assert sorted(a) == sorted(b)
    for step in a:
        for key, value in a[step].items():
            if not key.startswith(("time", "perf/", "driver/")):
                assert b[step][key] == value, (step, key)
    final, again = weights(roles_a), weights(roles_b)
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_one_role_on_the_device_at_a_time_and_the_same_run_as_sync(setup):
    root, tok, prompts = setup
    cfg = {"steps": 3, "save_every": 2, "eval_every": 2, "ppo_epochs": 2, "critic_warmup_steps": 1}
    sync, sync_roles, sync_seen = run(root, tok, prompts, base_cfg(**cfg))
    assert all(len(others) == 3 for _, _, others in sync_seen)  # sync: every role stays
    co, co_roles, co_seen = run(root, tok, prompts, base_cfg(**cfg, schedule="colocated"))
    calls = {(name, call) for name, call, _ in co_seen}
    assert {("policy", "generate"), ("policy", "logprobs"), ("reference", "logprobs"), ("reward", "scores"),
            ("critic", "values"), ("critic", "value_step"), ("policy", "ppo_step"), ("policy", "export"),
            ("policy", "save_state"), ("critic", "save_state")} <= calls
    assert [others for _, _, others in co_seen if others] == []  # whoever is called is alone on the device
    assert_same_run(sync, co, sync_roles, co_roles)
    for step in (2, 3):
        m = co[step]
        assert m["memory/device_peak_bytes"] == m["memory/largest_role_bytes"] < m["memory/all_roles_bytes"]
    # the largest role is the trained policy: its fp32 weights and Adam's two moments, as its engine counts them
    held = worker(co_roles.policy).engine.state_bytes()
    n = sum(p.numel() for p in worker(co_roles.policy).model.parameters())
    assert co[3]["memory/largest_role_bytes"] == pytest.approx(sum(held.values()), rel=0.01)
    assert sum(held.values()) == pytest.approx(3 * 4 * n, rel=0.01)
    assert co[3]["time/moves"] > 0
    # step 2 (no evaluation or save before it): reference, reward, critic in to score, the policy to train
    assert co[2]["memory/roles_moved_in"] == 4  # each trainer once: the critic's updates before the policy's


def test_zero_2_and_zero_1_trainers_move_and_come_back_the_same(setup):
    """DeepSpeed's offload_states for a ZeRO-2 policy and a ZeRO-1 critic: the colocated run is the synchronous one."""
    root, tok, prompts = setup
    engines = {"policy": EngineConfig(zero_stage=2), "critic": EngineConfig(zero_stage=1)}
    cfg = {"steps": 2, "critic_warmup_steps": 0}
    sync, sync_roles, _ = run(root, tok, prompts, base_cfg(**cfg), engines)
    co, co_roles, seen = run(root, tok, prompts, base_cfg(**cfg, schedule="colocated"), engines)
    assert_same_run(sync, co, sync_roles, co_roles)
    assert [others for _, _, others in seen if others] == []
    assert co[2]["memory/device_peak_bytes"] < co[2]["memory/all_roles_bytes"]


def test_a_role_called_while_on_the_host_says_so(setup):
    root, tok, prompts = setup
    group = LocalGroup(*role_args(root)["reference"])
    assert group.broadcast(to_host).get()[0]["bytes"] > 0
    assert not resident(group)
    with pytest.raises(RuntimeError, match="while its state is in host memory"):
        group.broadcast(PolicyWorker.export, str(root / "never")).get()
    assert group.broadcast(to_device).get()[0]["bytes"] > 0
    assert resident(group)
