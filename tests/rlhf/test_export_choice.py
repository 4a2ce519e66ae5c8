"""ppo.export: which policy the PPO stage exports, decided on the held-out objective (score − β·KL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.evaluate import Evaluation
from rlhf.export_choice import BEST, ExportChoice
from rlhf.workers import PolicyWorker


class Done:
    def get(self):
        return None


class FakePolicy:
    """A policy group whose export writes which step's weights it holds."""

    step = 0

    def broadcast(self, fn, path):
        assert fn is PolicyWorker.export
        Path(path).mkdir(parents=True)
        (Path(path) / "weights").write_text(f"step {self.step}")
        return Done()


class FakeTok:
    def save_pretrained(self, path):
        (path / "tokenizer.json").write_text("{}")


def rows(scores, kls=None):
    kls = kls if kls is not None else [0.0] * len(scores)
    return [{"prompt": f"p{i // 2}", "response": "r", "score": s, "kl": k}
            for i, (s, k) in enumerate(zip(scores, kls, strict=True))]


def run(tmp_path, mode: str, evaluations: dict[int, list[dict]], last: int, resuming: bool = False,
        judge: str = "score"):
    """Evaluations by step through an ExportChoice (β 0.5, 2 samples per prompt); the last one's rows as
    its samples file; then the last policy exported and finish()."""
    out = tmp_path / "ppo"
    (out / "samples").mkdir(parents=True, exist_ok=True)
    choice = ExportChoice(out, mode, 0.5, 2, last, resuming, judge=judge)
    policy = FakePolicy()
    for step, rs in sorted(evaluations.items()):
        policy.step = step
        (out / "samples" / f"step-{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
        choice.seen(step, Evaluation({}, None, rs), policy, FakeTok())
    exported = out / "policy"  # the stage's own export of the last policy
    exported.mkdir(exist_ok=True)
    (exported / "weights").write_text(f"step {last}")
    result = choice.finish(exported)
    return result, (exported / "weights").read_text()


LOW = [0.0, 0.2, 0.1, -0.1, 0.0, 0.1]  # three prompts, two samples each


def test_an_earlier_policy_better_beyond_noise_is_exported(tmp_path):
    high = [x + 1.0 for x in LOW]
    middle = [x + 0.5 for x in LOW]
    result, weights = run(tmp_path, "objective", {0: rows([9.0] * 6), 25: rows(high), 50: rows(middle),
                                                   75: rows(LOW)}, last=75)
    assert weights == "step 25" and result["exported_step"] == 25  # not the start (step 0), not step 50
    assert result["export_gain"] == pytest.approx(1.0)
    assert "step 25's policy" in result["export_reason"]
    assert (tmp_path / "ppo" / "policy" / "tokenizer.json").exists()


@pytest.mark.parametrize("judge", ["validation_score", "score"])
def test_the_validation_reward_model_judges_where_the_run_has_one(tmp_path, judge):
    """The reward model PPO trained against rates the last policy highest; the validation reward model
    rates step 25's higher beyond noise: with it as the judge step 25 is exported, without it the last."""
    def judged(trained, validation):
        return [r | {"validation_score": v} for r, v in zip(rows(trained), validation, strict=True)]

    evaluations = {25: judged(LOW, [x + 1.0 for x in LOW]), 50: judged([x + 2.0 for x in LOW], LOW)}
    result, weights = run(tmp_path, "objective", evaluations, last=50, judge=judge)
    if judge == "score":
        assert weights == "step 50" and result["exported_step"] == 50
        return
    assert weights == "step 25" and result["exported_step"] == 25
    assert result["export_judge"] == "validation_score" and result["export_gain"] == pytest.approx(1.0)
    assert "by the validation reward model" in result["export_reason"]


def test_the_kl_counts_against_an_earlier_policy(tmp_path):
    """Step 25 scores 1.0 higher but sits 4 nats further out: at β 0.5 its objective is 1.0 lower."""
    high = [x + 1.0 for x in LOW]
    result, weights = run(tmp_path, "objective", {25: rows(high, [4.0] * 6), 50: rows(LOW)}, last=50)
    assert weights == "step 50" and result["exported_step"] == 50
    assert "no earlier evaluation has a higher held-out objective" in result["export_reason"]


def test_a_gain_within_one_standard_error_keeps_the_last(tmp_path):
    noisy = [0.5, 0.5, -0.5, -0.5, 0.1, 0.1]  # per prompt +0.5, −0.5, +0.1 over zero: mean 0.033
    result, weights = run(tmp_path, "objective", {25: rows(noisy), 50: rows([0.0] * 6)}, last=50)
    assert weights == "step 50" and result["exported_step"] == 50
    assert "within one standard error" in result["export_reason"]


def test_export_last_ignores_a_better_earlier_policy(tmp_path):
    high = [x + 1.0 for x in LOW]
    result, weights = run(tmp_path, "last", {25: rows(high), 50: rows(LOW)}, last=50)
    assert weights == "step 50" and result["exported_step"] == 50
    assert not (tmp_path / "ppo" / BEST).exists()


def test_without_scores_or_kl_the_last_is_exported(tmp_path):
    bare = [{"prompt": "p", "response": "r", "gold": 1.0}] * 2
    result, weights = run(tmp_path, "objective", {25: bare, 50: bare}, last=50)
    assert weights == "step 50" and "no held-out evaluation with a score and a KL" in result["export_reason"]


def test_a_resumed_run_keeps_the_kept_policy_and_a_new_run_drops_it(tmp_path):
    high = [x + 1.0 for x in LOW]
    run(tmp_path, "objective", {25: rows(high), 50: rows(LOW)}, last=100)  # stopped before its end
    resumed, weights = run(tmp_path, "objective", {75: rows(LOW), 100: rows(LOW)}, last=100, resuming=True)
    assert weights == "step 25" and resumed["exported_step"] == 25
    fresh, weights = run(tmp_path, "objective", {75: rows(LOW), 100: rows(LOW)}, last=100, resuming=False)
    assert weights == "step 100" and fresh["exported_step"] == 100


def test_patience_stops_where_the_objective_stopped_rising_and_a_restart_reads_it_back(tmp_path):
    """ppo.patience 2: steps 25 and 50 rise beyond noise, 75 and 100 do not beat 50's: the run stops after
    step 100 of 200, without keeping step 100's policy (the last is exported anyway). A restart from step 75
    reads steps 25-75 back from their sample files and counts 100 again; without patience nothing stops."""
    out = tmp_path / "ppo"
    (out / "samples").mkdir(parents=True)
    evaluations = {0: rows(LOW), 25: rows([x + 1.0 for x in LOW]), 50: rows([x + 2.0 for x in LOW]),
                   75: rows([x + 1.9 for x in LOW]), 100: rows([x + 2.0 for x in LOW])}
    choice, policy = ExportChoice(out, "objective", 0.5, 2, 200, False, patience=2), FakePolicy()
    stopped = []
    for step, rs in evaluations.items():
        policy.step = step
        (out / "samples" / f"step-{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
        choice.seen(step, Evaluation({}, None, rs), policy, FakeTok())
        stopped.append(choice.stops(step))
    assert stopped == [False, False, False, False, True] and choice.stopped_at == 100
    assert choice.stop_reason == ("stopped after step 100 of at most 200: 2 evaluation(s) in a row without a "
                                  "held-out objective higher than step 50's by more than one standard error "
                                  "(ppo.patience 2)")
    assert choice.best()["step"] == 50  # step 100, equal to it, was not exported to best-objective

    restarted = ExportChoice(out, "objective", 0.5, 2, 200, True, patience=2)
    restarted.resume(75, [0, 25, 50, 75, 100])
    assert sorted(restarted.objectives) == [0, 25, 50, 75] and not restarted.stops(75)
    restarted.seen(100, Evaluation({}, None, evaluations[100]), policy, FakeTok())
    assert restarted.stops(100) and restarted.stopped_at == 100
    restarted.resume(0, [])  # an attempt from the start: only the start's evaluation, the same policy, counts
    assert sorted(restarted.objectives) == [0] and restarted.stopped_at is None
    unlimited = ExportChoice(out, "objective", 0.5, 2, 200, True, patience=None)
    unlimited.resume(100, [0, 25, 50, 75, 100])
    assert not unlimited.stops(100)
