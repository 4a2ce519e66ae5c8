"""Each stage command checks what that stage uses (#27, item 6): the simplest SFT command needs no
comparisons, `rm` and `ppo` continue the run an earlier command started; and sft.select=reward
scores SFT epochs with the reward functions, as a user's pipeline runs it."""

from __future__ import annotations

import json

import pytest

from launcher.cli import main
from launcher.config import ConfigError, load_config
from launcher.preflight import check_inputs, stages_of
from parallel.engine import lr_factor
from tests.launcher.user_task import write_task

SMALL = ["run.backend=local", "model.preset=toy", "sft.max_len=32", "rm.max_len=32", "ppo.max_new_tokens=4",
         "ppo.max_prompt_len=24", "evaluation.max_new_tokens=4", "evaluation.max_prompt_len=24"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    files = write_task(tmp_path_factory.mktemp("task"), n_sft=200, n_prompts=120, n_eval=16)
    # the demonstrations carry the answer the gold function reads, so their own gold can be measured
    rows = [json.loads(line) for line in files["sft"].read_text().splitlines()]
    for row in rows:
        row["answer"] = sum(int(x) for x in row["prompt"].rstrip(" =").split(" + "))
    files["sft"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def test_each_stage_command_needs_only_its_own_inputs(files, tmp_path, capsys):
    out = [f"run.out_dir={tmp_path}", "run.name=mine", "model.bpe_vocab=512"]
    # the simplest command: no comparisons, no prompts, the reward model left at its default 'auto'
    assert main(["sft", f"sft.train_data={files['sft']}", *out, *SMALL, "sft.epochs=2"]) == 0, capsys.readouterr().err
    assert "stop_reason: ran all 2 epoch(s)" in capsys.readouterr().out
    # the reward model from this run's SFT model, with this run's tokenizer; only the comparisons named
    assert main(["rm", f"rm.train_data={files['comparisons']}", *out, *SMALL, "rm.epochs=1"]) == 0, \
        capsys.readouterr().err
    rm = json.loads((tmp_path / "mine" / "rm" / "result.json").read_text())
    assert rm["epochs"] == 1 and "eval/accuracy" in rm
    # PPO from this run's SFT policy against this run's reward model; only the prompts named
    assert main(["ppo", f"ppo.prompts={files['prompts']}", *out, *SMALL, "ppo.steps=1", "ppo.prompts_per_step=8",
                 "ppo.minibatches=2", "ppo.samples_per_prompt=2", "ppo.eval_every=100"]) == 0, capsys.readouterr().err
    assert (tmp_path / "mine" / "ppo" / "policy" / "model.safetensors").exists()
    # the timeline: the loop's phases and every role's calls as a Chrome trace; busy fractions per step
    trace = json.loads((tmp_path / "mine" / "ppo" / "timeline.json").read_text())["traceEvents"]
    groups = {e["args"]["name"] for e in trace if e["name"] == "process_name"}
    assert groups == {"coordinator", "policy", "reference", "critic", "reward"}
    assert {e["name"] for e in trace if e.get("cat") == "coordinator"} == {"generate", "score", "train", "sync"}
    step = next(json.loads(x) for x in (tmp_path / "mine" / "ppo" / "metrics.jsonl").open() if '"time/train"' in x)
    assert 0 < step["timeline/policy/busy"] <= 1 and 0 < step["timeline/critic/busy"] <= 1


def test_pipeline_and_check_still_check_what_the_pipeline_uses(files, tmp_path):
    cfg = load_config(None, [f"sft.train_data={files['sft']}", f"ppo.prompts={files['prompts']}",
                             f"run.out_dir={tmp_path}", "model.bpe_vocab=512", *SMALL])
    check_inputs(cfg, stages_of("sft", cfg))  # SFT alone: fine
    with pytest.raises(ConfigError, match=r"'auto' is this run's reward model, and there is no rm\.train_data"):
        check_inputs(cfg, stages_of("pipeline", cfg))
    with pytest.raises(ConfigError, match=r"rm\.train_data: the reward model learns from ranked comparisons"):
        check_inputs(cfg, stages_of("rm", cfg))
    dpo = load_config(None, [f"sft.train_data={files['sft']}", f"run.out_dir={tmp_path}", "model.bpe_vocab=512",
                             "run.algorithm=dpo", *SMALL])
    with pytest.raises(ConfigError, match=r"rm\.train_data: DPO learns from ranked comparisons"):
        check_inputs(dpo, stages_of("pipeline", dpo))


def test_sft_select_reward_needs_a_reward_that_exists_before_sft(files, tmp_path):
    cfg = load_config(None, [f"sft.train_data={files['sft']}", f"rm.train_data={files['comparisons']}",
                             f"ppo.prompts={files['prompts']}", f"run.out_dir={tmp_path}", "model.bpe_vocab=512",
                             "sft.select=reward", *SMALL])
    with pytest.raises(ConfigError, match=r"sft\.select=reward .* this config has neither \(ppo\.reward_model=auto "
                                          r"is trained after SFT\)"):
        check_inputs(cfg, stages_of("sft", cfg))


def test_pipeline_selects_sft_by_reward_and_reports_how_sft_ended(files, tmp_path, capsys):
    fn = f"{files['rewards']}:correct"
    args = [f"sft.train_data={files['sft']}", f"ppo.prompts={files['prompts']}", f"ppo.eval_prompts={files['eval']}",
            f"run.out_dir={tmp_path}", "run.name=sel", "model.bpe_vocab=512", *SMALL, "ppo.reward_model=null",
            f"ppo.reward_functions=['{fn}']", f"evaluation.gold_function={fn}", "sft.select=reward", "sft.epochs=3",
            "sft.patience=1", "ppo.steps=1", "ppo.prompts_per_step=8", "ppo.minibatches=2",
            "ppo.samples_per_prompt=2"]
    assert main(["pipeline", *args]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    run = tmp_path / "sel"
    scores = [json.loads(line) for line in (run / "sft" / "metrics.jsonl").read_text().splitlines()]
    scores = [m["select/score"] for m in scores if "select/score" in m]
    sft = json.loads((run / "sft" / "result.json").read_text())
    assert len(scores) == sft["epochs"] >= 1 and sft["select/score"] == max(scores)
    assert sft["kept_epoch"] == scores.index(max(scores)) + 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sft_stop"] == sft["stop_reason"] and "highest select/score" in summary["sft_stop"]
    rows = [json.loads(line) for line in files["sft"].read_text().splitlines()][-10:]  # the held-out 1/20
    own = sum(float(r["response"] == str(r["answer"])) for r in rows) / len(rows)
    assert summary["sft_demonstrations_gold"] == pytest.approx(own)
    assert "the held-out demonstrations' own gold" in printed and sft["stop_reason"] in printed


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_the_learning_rate_decays_over_decay_epochs_and_then_stays_at_its_floor(stage, files, tmp_path, capsys):
    """`decay_epochs` spans the cosine over fewer epochs than the bound: every step's logged rate is the
    schedule's over decay_epochs' steps (flat at lr × min_lr_ratio after them), not over all epochs'."""
    data = {"sft": f"sft.train_data={files['sft']}", "rm": f"rm.train_data={files['comparisons']}"}
    args = [f"run.out_dir={tmp_path}", "run.name=decay", "model.bpe_vocab=512", *SMALL, data["sft"]]
    if stage == "rm":  # from this run's SFT model
        assert main(["sft", *args, "sft.epochs=1"]) == 0, capsys.readouterr().err
        args.append(data["rm"])
    schedule = [f"{stage}.epochs=3", f"{stage}.decay_epochs=1", f"{stage}.patience=null",
                f"{stage}.optim.warmup_steps=2", f"{stage}.optim.min_lr_ratio=0.1"]
    assert main([stage, *args, *schedule]) == 0, capsys.readouterr().err
    cfg = load_config(None, [*args, *schedule])
    optim = getattr(cfg, stage).optim
    lrs = [m["train/lr"] for m in map(json.loads, (tmp_path / "decay" / stage / "metrics.jsonl").open())
           if "train/lr" in m]
    per_epoch = len(lrs) // 3
    assert len(lrs) == 3 * per_epoch and per_epoch > optim.warmup_steps
    expected = [optim.lr * lr_factor(s, optim.warmup_steps, per_epoch, 0.1) for s in range(len(lrs))]
    assert lrs == pytest.approx(expected)
    assert lrs[per_epoch:] == pytest.approx([optim.lr * 0.1] * 2 * per_epoch)
