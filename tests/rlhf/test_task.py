"""The embedded task: deterministic, held-out splits disjoint, labeller scores as worked out by hand."""

from __future__ import annotations

import random

import pytest

from rlhf.data import load_comparisons, load_prompts, load_sft
from rlhf.task import EmbeddedTask, TaskConfig, corrupt, gold_score, target


def test_gold_score_by_hand():
    assert gold_score("reverse : 3 7 1 =", "1 7 3") == 1.0
    assert gold_score("reverse : 3 7 1 =", "1 7") == pytest.approx(2 / 3)
    assert gold_score("sort : 3 7 1 =", "1 3 7 9") == pytest.approx(3 / 4)
    assert gold_score("copy : 3 7 1 =", "") == 0.0
    assert gold_score("copy : 3 7 1 =", "7 1 3") == 0.0


def test_corrupt_changes_the_answer():
    rng = random.Random(0)
    answer = target("sort", list("52913"))
    assert answer == list("12359")
    assert all(corrupt(answer, rng, 1) != answer for _ in range(50))


def test_writes_deterministic_valid_data(tmp_path):
    cfg = TaskConfig(n_sft=200, n_comparisons=100, n_ppo=50, n_eval=20, k_responses=4)
    a, b = EmbeddedTask(cfg).write(tmp_path / "a"), EmbeddedTask(cfg).write(tmp_path / "b")
    for name in a:
        assert a[name].read_text() == b[name].read_text(), name
    sft, evals = load_sft(a["sft_train"]), load_sft(a["sft_eval"])
    assert len(sft) == 200 and len(evals) == 20
    assert all(gold_score(r.prompt, r.response) == 1.0 for r in evals)  # clean held-out targets
    noisy = sum(gold_score(r.prompt, r.response) < 1 for r in sft) / len(sft)
    assert 0.15 < noisy < 0.45  # demo_error_rate = 0.3
    cmps = load_comparisons(a["comparisons_train"])
    assert all(len(c.responses) == 4 and len(set(c.responses)) == 4 for c in cmps)
    # ranked best first up to label noise: the first beats the last on gold score nearly always
    order_ok = sum(gold_score(c.prompt, c.responses[0]) >= gold_score(c.prompt, c.responses[-1]) for c in cmps)
    assert order_ok / len(cmps) > 0.95
    train = {p.text for p in load_prompts(a["ppo_train"])} | {r.prompt for r in sft} | {c.prompt for c in cmps}
    held = {p.text for p in load_prompts(a["ppo_eval"])} | {r.prompt for r in evals}
    assert not train & held


def test_gold_summary_by_hand():
    """Two prompts × two samples: per-prompt means 0.75 and 0.25 → mean 0.5, stderr = stdev/√2 = 0.25."""
    from rlhf.evaluate import summarize_gold
    from rlhf.task import gold_scores

    prompts = ["copy : 1 2 =", "copy : 1 2 =", "reverse : 1 2 =", "reverse : 1 2 ="]
    scores = gold_scores(prompts, ["1 2", "1 3", "2 9", "9 9"])
    assert scores == [1.0, 0.5, 0.5, 0.0]
    g = summarize_gold(scores, samples=2)
    assert g.mean == pytest.approx(0.5) and g.stderr == pytest.approx(0.25)
    with pytest.raises(ValueError, match="3 samples are not whole groups of 2 per prompt"):
        summarize_gold(scores[:3], samples=2)
