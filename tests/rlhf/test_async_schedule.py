"""ppo.schedule=async on in-process groups: each step's samples come from the generator holding the
weights of before the last update (one update stale), the staleness is corrected by truncated importance
weights, and a run resumed from a save mid-way is bit-exact with the uninterrupted one."""

from __future__ import annotations

import torch

from rlhf.workers import PolicyWorker
from tests.rlhf.test_ppo_loop import assert_same_steps, base_cfg, run


class Spy:
    """A group, recording the weights it holds whenever it is asked to sample."""

    def __init__(self, group):
        self.group, self.spec, self.sampled_with = group, group.spec, []

    def map(self, fn, batch, *args, **kwargs):
        if fn is PolicyWorker.generate:
            self.sampled_with.append(own_weights(self.group))
        return self.group.map(fn, batch, *args, **kwargs)

    def broadcast(self, fn, *args, **kwargs):
        return self.group.broadcast(fn, *args, **kwargs)


def own_weights(group) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in group._rank.worker.model.named_parameters()}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_each_step_samples_with_the_weights_of_before_the_last_update(setup, monkeypatch):
    root, tok, prompts = setup
    import rlhf.schedules as schedules

    seen: dict = {}
    real = schedules.Steps.__init__

    def spying(self, roles, *args):  # the generator behind a spy; the policy's weights after every step
        roles.generator = seen["generator"] = Spy(roles.generator)
        seen["policy"] = [own_weights(roles.policy)]
        real(self, roles, *args)
        log = self.log
        self.log = lambda m, s: (seen["policy"].append(own_weights(roles.policy)), log(m, s))

    monkeypatch.setattr(schedules.Steps, "__init__", spying)
    logged, _ = run(root, tok, prompts, base_cfg(steps=4, schedule="async"))
    w, sampled = seen["policy"], seen["generator"].sampled_with  # w[t]: the policy's weights before step t
    assert len(w) == 5 and not same(w[1], w[0]) and not same(w[2], w[1])  # every update moved the policy
    # step 0's samples and step 1's (drawn while step 0 trained) come from the start; step t's from w[t - 1]
    assert len(sampled) == 4 and same(sampled[0], w[0]) and same(sampled[1], w[0])
    assert same(sampled[2], w[1]) and same(sampled[3], w[2])
    assert [logged[s]["rollout/staleness"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 1.0]
    # the learner's old log-probs are of newer weights than the sampler's: corrected, token by token
    assert logged[1]["check/logprob_gap_max"] < 1e-5 < logged[3]["check/logprob_gap_max"]
    assert logged[1]["rollout/tis_weight_mean"] == 1.0 != logged[3]["rollout/tis_weight_mean"]


def test_async_resume_is_bit_exact(setup):
    """Saved after step 2 (with the sample step 3 drew before the save) and resumed = uninterrupted."""
    root, tok, prompts = setup
    cfg = {"schedule": "async", "kl_target": 1.0}
    a, b = {}, {}
    straight, _ = run(root, tok, prompts, base_cfg(steps=4, save_every=2, **cfg), out=a)
    state = a["states"][2]
    assert state["step"] == 2 and state["pending"].sequences.shape[0] == 16
    assert "pending" not in a["states"][4]  # the last step draws no next sample
    resumed, _ = run(root, tok, prompts, base_cfg(steps=4, **cfg), start=state, saved=root / "ck2", out=b)
    assert_same_steps(straight, resumed, a, b)
