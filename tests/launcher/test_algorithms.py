"""The algorithms beyond PPO from the command line, shrunk: SFT → DPO on the embedded task, DPO from a
user's Hugging Face checkpoint on pairwise chosen/rejected data, and a critic-free PPO run that starts
no critic and saves none."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from launcher.cli import main
from tests.launcher.user_task import make_checkpoint, make_tokenizer, write_task

TINY = ["run.backend=local", "task.n_sft=300", "task.n_eval=20", "task.n_comparisons=40", "task.n_ppo=40",
        "sft.epochs=1"]


@pytest.mark.e2e
def test_pipeline_sft_then_dpo(tmp_path, capsys):
    rc = main(["demo", f"run.out_dir={tmp_path}", "run.algorithm=dpo", *TINY, "dpo.batch_size=8"])
    assert rc == 0, capsys.readouterr().err
    run = tmp_path / "demo"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algorithm"] == "dpo" and not (run / "rm").exists() and not (run / "ppo").exists()
    assert summary["start"]["eval/gold_score"] is not None and summary["final"]["eval/kl"] > 0
    assert 0.0 <= summary["dpo_eval_accuracy"] <= 1.0
    assert AutoModelForCausalLM.from_pretrained(run / "dpo" / "policy") is not None
    out = capsys.readouterr().out
    assert "final DPO policy" in out and "DPO held-out pair accuracy" in out


@pytest.mark.e2e
def test_dpo_on_pairwise_user_data_from_a_checkpoint(tmp_path, capsys):
    files = write_task(tmp_path / "task", n_sft=10, n_prompts=40, n_eval=8)
    tok = make_tokenizer(files)
    start = make_checkpoint("llama", tok, tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    gold = f"{files['rewards']}:correct"
    rc = main(["dpo", f"dpo.init={start}", f"model.tokenizer={tmp_path / 'llama'}",
               f"rm.train_data={files['comparisons']}", f"ppo.eval_prompts={files['eval']}",
               f"ppo.prompts={files['prompts']}", f"evaluation.gold_function={gold}",
               "evaluation.max_new_tokens=4", "evaluation.max_prompt_len=24", "dpo.batch_size=8",
               f"run.out_dir={tmp_path / 'runs'}", "run.name=d", "run.backend=local"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "runs" / "d" / "dpo" / "result.json").read_text())
    assert sorted(result["evaluations"], key=int)[0] == "0" and len(result["evaluations"]) == 2
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "d" / "dpo" / "policy")
    assert type(hf).__name__ == "LlamaForCausalLM"


@pytest.mark.e2e
def test_critic_free_ppo_starts_and_saves_no_critic(tmp_path, capsys):
    """(Each estimator's shaping and loop: tests/rlhf/test_ppo_shaping.py, test_ppo_switches.py.)"""
    rc = main(["demo", f"run.out_dir={tmp_path}", *TINY, "ppo.steps=2", "ppo.prompts_per_step=16",
               "ppo.samples_per_prompt=4", "ppo.eval_every=1", "ppo.save_every=1",
               "ppo.advantage_estimator=grpo"])
    assert rc == 0, capsys.readouterr().err
    ppo = tmp_path / "demo" / "ppo"
    assert sorted(json.loads((ppo / "placement.json").read_text())) == ["policy", "reference", "reward"]
    checkpoints = sorted(ppo.glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-1", "checkpoint-2"]
    assert all(sorted(p.name for p in c.iterdir() if p.is_dir()) == ["policy"] for c in checkpoints)
    lines = [json.loads(x) for x in (ppo / "metrics.jsonl").read_text().splitlines()]
    assert any("policy/pg_loss" in m for m in lines) and not any("critic/loss" in m for m in lines)


@pytest.mark.e2e
def test_the_ptx_preset_mixes_shakespeare_into_ppo(tmp_path, capsys, shared_data):
    rc = main(["demo", "--config", "demo_ptx", f"run.out_dir={tmp_path}", *TINY, "ppo.steps=2",
               "ppo.prompts_per_step=16", "ppo.eval_every=2", "ppo.critic_warmup_steps=0",
               f"ppo.ptx_data={shared_data / 'tinyshakespeare.txt.gz'}"])
    assert rc == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in (tmp_path / "demo-ptx" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    ptx = [m["policy/ptx_loss"] for m in lines if "policy/ptx_loss" in m]
    assert ptx and all(0 < x < 20 for x in ptx)
