"""bench/tail_average.py: the average of a finished run's last checkpoints, the run ended as ppo.average_last would
end it, and the export criterion read afresh (each export and best evaluation under new sampling seeds)."""

from __future__ import annotations

import json

import pytest


def test_tail_average_reads_one_rank_runs_only(tmp_path):
    """bench/tail_average.py reads the policy checkpoints of a run by step; a checkpoint of several ranks (shards it
    would have to merge) is refused by name rather than averaged as if whole (its mean: rlhf/algo/averaging.py)."""
    import torch
    from safetensors.torch import save_file

    from bench.tail_average import snapshots

    state = {"w": torch.tensor([1.0, 2.0])}
    for step in (275, 300):
        (tmp_path / "ppo" / f"checkpoint-{step}" / "policy").mkdir(parents=True)
        save_file(state, tmp_path / "ppo" / f"checkpoint-{step}" / "policy" / "rank-00000.safetensors")
    assert list(snapshots(tmp_path)) == [275, 300]
    save_file(state, tmp_path / "ppo" / "checkpoint-300" / "policy" / "rank-00001.safetensors")
    with pytest.raises(SystemExit, match="checkpoint-300/policy: 2 rank files"):
        snapshots(tmp_path)


def test_tail_average_ends_each_window_as_the_run_would_its_export_weighing_the_average(tmp_path):
    """bench/tail_average.as_exported: the average is the last step's evaluation, and ppo.export=objective weighs its
    objective against the earlier evaluations' (worked out by hand: β 0.1, KL 1, 3 prompts × 2 samples). The last
    policy as trained (window 1, objective 0.5) beats step 25's 0.4 and is exported; the average (objectives 0, 0.1,
    −0.1) is beaten beyond noise by step 25, whose policy is then exported, while the average is the run's best
    evaluation."""
    from bench.tail_average import as_exported

    run = tmp_path / "sweep-r-s4-50"
    (run / "ppo" / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text("ppo: {kl_coef: 0.1}\nevaluation: {samples_per_prompt: 2}\n")
    for step, score, kl in ((0, 0.0, 0.0), (25, 0.5, 1.0), (50, 0.6, 1.0)):
        rows = [{"gold": 0.0, "score": score, "kl": kl}] * 6
        (run / "ppo" / "samples" / f"step-{step}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    evals = {str(s): {"eval/gold_score": g, "eval/gold_stderr": 0.05, "eval/kl": float(s > 0)}
             for s, g in ((0, 0.5), (25, 0.85), (50, 0.8))}
    (run / "ppo" / "result.json").write_text(json.dumps({"evaluations": evals}))
    read = {"windows": {1: {"gold": 0.8, "gold_stderr": 0.05, "kl": 1.0, "per_prompt_objective": [0.5] * 3},
                        2: {"gold": 0.9, "gold_stderr": 0.04, "kl": 1.1, "per_prompt_objective": [0.0, 0.1, -0.1]}}}
    out = as_exported(run, read)
    assert out[1]["exported_step"] == 50 and out[1]["gold"] == 0.8 and out[1]["peak"] == 0.85
    assert out[1]["closed"] == pytest.approx(0.6)
    assert out[2]["exported_step"] == 25 and out[2]["gold"] == 0.85 and out[2]["kl"] == 1.0
    assert (out[2]["peak"], out[2]["peak_stderr"]) == (0.9, 0.04) and out[2]["closed"] == pytest.approx(0.7)


def test_tail_average_reads_the_export_criterion_afresh_pooling_new_seeds_against_one_standard_error(tmp_path,
                                                                                                     monkeypatch):
    """bench/tail_average --fresh: the policies re-read are each window's export and its best evaluation's where they
    differ (window 4 exports its best: none); each is evaluated under the seeds FRESH_SEED… alone, its gold pooled
    prompt by prompt over them, and read once (a second call evaluates nothing). Worked out by hand: the best's pooled
    gold (0.9, 0.8, 1.0), fresh standard error 0.02 (mean of 0.01 and 0.03); the export's (0.87, 0.79, 0.97) is
    0.0233 below, beyond one standard error, so below its best afresh though within one in-run (0.01 < 0.03); against
    a fresh standard error of 0.03 it would not be."""
    import bench.tail_average as tail
    from bench.tail_average import FRESH_SEED, fresh_policies, fresh_table, fresh_verdict, read_fresh

    exported = {"1": {"exported_step": 300, "peak_step": 275, "gold": 0.90, "peak": 0.91, "peak_stderr": 0.03},
                "4": {"exported_step": 300, "peak_step": 300, "gold": 0.93, "peak": 0.93, "peak_stderr": 0.02}}
    read = {"windows": {1: {"steps": [300]}, 4: {"steps": [225, 250, 275, 300]}}, "exported": exported}
    assert fresh_policies(read) == {"average-1": [300], "step-275": [275]}
    per_seed = {"step-275": ([[0.9, 0.7], [0.8, 0.8], [1.0, 1.0]], (0.01, 0.03)),
                "average-1": ([[0.86, 0.88], [0.79, 0.79], [0.94, 1.0]], (0.02, 0.02))}
    calls = []

    class Judges:
        cfg = type("C", (), {"evaluation": type("E", (), {"samples_per_prompt": 1})})

        def __init__(self, run_dir):
            pass

        def evaluate(self, policy_dir, seeds):
            calls.append((policy_dir.name, seeds))
            golds, errors = per_seed[policy_dir.name]
            return [type("Ev", (), {"rows": [{"gold": g[i]} for g in golds],
                                    "gold": type("G", (), {"stderr": errors[i]})}) for i in range(len(seeds))]

    monkeypatch.setattr(tail, "RunJudges", Judges)
    monkeypatch.setattr(tail, "snapshots", lambda run_dir: {})
    monkeypatch.setattr(tail, "write_average", lambda run_dir, steps, files, path: path)
    assert read_fresh(tmp_path, read, 2)
    assert sorted(calls) == [("average-1", [FRESH_SEED, FRESH_SEED + 1]), ("step-275", [FRESH_SEED, FRESH_SEED + 1])]
    assert read["fresh"]["step-275"]["per_prompt_gold"] == pytest.approx([0.8, 0.8, 1.0])
    assert read["fresh"]["step-275"]["stderr"] == pytest.approx(0.02)
    per_seed["step-275"] = ([[0.9, 0.9], [0.8, 0.8], [1.0, 1.0]], (0.01, 0.03))  # the best's pooled gold as worked out
    read["fresh"].pop("step-275")
    assert read_fresh(tmp_path, read, 2) and not read_fresh(tmp_path, read, 2) and len(calls) == 3
    text = fresh_table({"notes r/s4/300": read})
    assert not fresh_verdict(read["fresh"]["step-275"] | {"stderr": 0.03}, read["fresh"]["average-1"])[1]
    assert "| notes r/s4/300 | 1 | average-1 · step-275 | +0.0100 (0.0300) | +0.0233 ± 0.0067 (0.0200) | no · yes |" \
        in text
    assert "| 1 | 0 of 1 | 1 of 1 |" in text and "| 4 | 0 of 1 | 0 of 1 |" in text
