"""The README's main job, shrunk: the demo CLI writes an HF model, metrics, summary and a W&B run."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from launcher.cli import main


@pytest.mark.e2e
def test_demo_cli_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    rc = main(["demo", f"run.out_dir={tmp_path}", "run.backend=local", "task.n_sft=300", "task.n_eval=20",
               "task.n_comparisons=40", "task.n_ppo=40", "sft.epochs=1", "ppo.steps=2", "ppo.prompts_per_step=16",
               "ppo.eval_every=1"])
    assert rc == 0
    run = tmp_path / "demo"
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["sft_gold_score"] <= 1.0 and 0.0 <= summary["rm_eval_accuracy"] <= 1.0
    assert AutoModelForCausalLM.from_pretrained(run / "sft") is not None
    assert AutoModelForSequenceClassification.from_pretrained(run / "rm").config.num_labels == 1
    stats = json.loads((run / "rm" / "reward_stats.json").read_text())
    assert stats["n"] >= 2 * 10 and stats["std"] > 0  # every response of the held-out rankings
    assert AutoModelForCausalLM.from_pretrained(run / "ppo" / "policy") is not None
    assert summary["ppo_gold_score"] is not None and summary["final_kl"] is not None
    lines = [json.loads(x) for x in (run / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in m for m in lines) and any("eval/loss" in m for m in lines)
    assert list((run / "sft" / "wandb").glob("offline-run-*"))
    assert (run / "config.yaml").exists()
    out = capsys.readouterr().out
    assert "reward model held-out pair accuracy" in out and "gold score" in out
