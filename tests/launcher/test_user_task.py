"""A task this project has never seen, run as a user would: their files, their reward function, and a
Hugging Face checkpoint of any supported family as the start. PPO's exported policy loads in
transformers, in its own family's class, with our logits; the chat template reaches every stage's
model-facing text; reward functions run in the reward group's ranks."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from launcher.cli import main
from models.hf import load_pretrained
from parallel.engine import lr_factor
from tests.launcher.user_task import make_checkpoint, make_tokenizer, write_task

CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM"}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    files = write_task(tmp_path_factory.mktemp("task"))
    return files, make_tokenizer(files)


def common(files, out) -> list[str]:
    fn = f"{files['rewards']}:correct"
    return [f"ppo.prompts={files['prompts']}", f"ppo.eval_prompts={files['eval']}", f"run.out_dir={out}", "run.name=t",
            f"ppo.reward_functions=[{{function: '{fn}'}}]", f"evaluation.gold_function={fn}",
            "ppo.steps=2", "ppo.prompts_per_step=8", "ppo.minibatches=2", "ppo.max_new_tokens=4",
            "ppo.max_prompt_len=24", "evaluation.max_new_tokens=4", "evaluation.max_prompt_len=24", "ppo.eval_every=1",
            "ppo.policy.optim.lr=1e-3", "ppo.critic_warmup_steps=0"]  # 2 steps: the policy must train in them


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_ppo_from_any_family_exports_it_with_identical_logits(task, tmp_path, family, capsys):
    files, tok = task
    start = make_checkpoint(family, tok, tmp_path / family)
    rc = main(["ppo", f"model.pretrained={start}", "ppo.reward_model=null", "run.backend=local",
               *common(files, tmp_path / "runs")])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "runs" / "t" / "ppo" / "policy"
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == CLASSES[family]
    ours = load_pretrained(out).eval()
    ids = torch.randint(0, len(tok), (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=0)
    before = AutoModelForCausalLM.from_pretrained(start).state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in hf.state_dict().items())  # PPO changed the weights
    assert "gold score" in capsys.readouterr().out


def test_pipeline_from_a_qwen2_checkpoint_through_its_chat_template(task, tmp_path, capsys):
    """SFT, reward model and PPO all start from the user's checkpoint; the RM's head is new."""
    files, tok = task
    start = make_checkpoint("qwen2", tok, tmp_path / "qwen2")
    args = [f"model.pretrained={start}", "data.chat_template=true", f"sft.train_data={files['sft']}",
            f"rm.train_data={files['comparisons']}", "sft.epochs=1", "sft.max_len=32", "rm.max_len=32",
            "run.backend=local", "ppo.reward_model_weight=0.5", *common(files, tmp_path / "runs")]
    from launcher.config import load_config
    from launcher.preflight import check_inputs, stages_of

    cfg = load_config(None, args)
    inputs = check_inputs(cfg, stages_of("pipeline", cfg))
    assert inputs.sft[0][0].prompt.startswith("<|user|>") and inputs.sft[0][0].prompt.endswith("<|assistant|>")
    assert inputs.rm[0][0].prompt.startswith("<|user|>")
    assert inputs.prompts[0].query.startswith("<|user|>") and not inputs.prompts[0].text.startswith("<|")
    assert main(["pipeline", *args]) == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "t"
    assert type(AutoModelForSequenceClassification.from_pretrained(run / "rm")).__name__ == \
        "Qwen2ForSequenceClassification"
    assert type(AutoModelForCausalLM.from_pretrained(run / "ppo" / "policy")).__name__ == "Qwen2ForCausalLM"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("eval/gold_score", "eval/gold_stderr", "eval/score", "eval/rm_score", "eval/fn/correct", "eval/kl",
                "eval/response_length", "eval/unfinished"):
        assert key in summary["start"] and key in summary["final"], key
    assert summary["start"]["eval/kl"] == pytest.approx(0.0, abs=1e-4)
    assert (run / "ppo" / "overoptimization.png").stat().st_size > 10_000
    # every evaluation's samples, each with its gold and score, as the gold mean says
    result = json.loads((run / "ppo" / "result.json").read_text())
    for step, ev in result["evaluations"].items():
        rows = [json.loads(line) for line in (run / "ppo" / "samples" / f"step-{step}.jsonl").read_text().splitlines()]
        assert {"prompt", "response", "gold", "score"} <= set(rows[0])
        assert sum(r["gold"] for r in rows) / len(rows) == pytest.approx(ev["eval/gold_score"])


PID_REWARD = '''
import os

def pid(prompts, responses, **fields):
    with open({log!r}, "a") as f:
        f.write(f"{{os.getpid()}} {{len(prompts)}}\\n")
    return [0.0] * len(prompts)
'''


@pytest.mark.slow
def test_reward_functions_run_in_the_reward_ranks(ray_cluster, task, tmp_path):
    """Two reward ranks, no reward model: each rank scores its half of every batch, none runs in the driver."""
    files, tok = task
    start = make_checkpoint("llama", tok, tmp_path / "llama")
    log = tmp_path / "pids.txt"
    (tmp_path / "pid.py").write_text(PID_REWARD.format(log=str(log)))
    args = ["ppo", f"model.pretrained={start}", "ppo.reward_model=null", *common(files, tmp_path / "runs"),
            f"ppo.reward_functions=[{{function: '{tmp_path / 'pid.py'}:pid'}}]", "ppo.reward.group.ranks=2",
            "evaluation.gold_function=null", "ppo.eval_every=100"]
    assert main(args) == 0
    ranks = json.loads((tmp_path / "runs" / "t" / "ppo" / "placement.json").read_text())["reward"]
    calls = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert {p for p, _ in calls} == {r["pid"] for r in ranks} and os.getpid() not in {p for p, _ in calls}
    assert {n for _, n in calls} == {4, 10}  # 8 rollouts a step and 20 eval prompts, split over 2 ranks


def test_hh_preset_checks_all_three_steps_on_the_real_file(shared_data, capsys, monkeypatch):
    """configs/hh.yaml names ../shared/data relative to the repository root, where users run it."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(["check", "--config", "hh", "run.out_dir=/nonexistent-dir-for-check"]) == 0
    out = capsys.readouterr().out
    assert "would run: sft → rm → ppo" in out and "PPO: 1710 prompts" in out, out


FALLING_REWARD = '''
from pathlib import Path

def falling(prompts, responses, **fields):
    """Every call scores lower than the one before: 0, −1, −2, ... for the whole batch."""
    calls = Path({count!r})
    n = int(calls.read_text()) if calls.exists() else 0
    calls.write_text(str(n + 1))
    return [-float(n)] * len(prompts)
'''


def run_falling(task, tmp_path, capsys, *overrides: str) -> tuple[Path, dict]:
    """`instructrl ppo` on the falling reward alone (no reward model, no gold), evaluated every step:
    the run's directory and its PPO result."""
    files, tok = task
    start = make_checkpoint("gpt2", tok, tmp_path / "gpt2")
    (tmp_path / "falling.py").write_text(FALLING_REWARD.format(count=str(tmp_path / "calls")))
    rc = main(["ppo", f"model.pretrained={start}", "ppo.reward_model=null", "run.backend=local",
               *common(files, tmp_path / "runs"), *overrides,
               f"ppo.reward_functions=[{{function: '{tmp_path / 'falling.py'}:falling'}}]",
               "ppo.missing_eos_score=null", "evaluation.gold_function=null"])
    assert rc == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "t"
    return run, json.loads((run / "ppo" / "result.json").read_text())


@pytest.mark.parametrize("export", ["objective", "last"])
def test_ppo_exports_the_evaluation_with_the_higher_held_out_objective(task, tmp_path, export, capsys):
    """A reward that falls with every call: step 1's held-out objective is the best, beyond noise, and
    ppo.export=objective exports step 1's policy (as kept in best-objective/); ppo.export=last the last."""
    run, result = run_falling(task, tmp_path, capsys, "ppo.steps=3", f"ppo.export={export}")
    exported = AutoModelForCausalLM.from_pretrained(run / "ppo" / "policy").state_dict()
    if export == "last":
        assert result["exported_step"] == 3 and not (run / "ppo" / "best-objective").exists()
        return
    assert result["exported_step"] == 1 and "step 1's policy" in result["export_reason"]
    kept = AutoModelForCausalLM.from_pretrained(run / "ppo" / "best-objective").state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in exported.items())
    assert json.loads((run / "ppo" / "best-objective" / "objective.json").read_text())["step"] == 1
    assert "exported: step 1's policy" in capsys.readouterr().out


@pytest.mark.parametrize("average", [2, 1, None])
def test_ppo_average_last_exports_the_mean_of_the_last_evaluations_weights(task, tmp_path, average, capsys):
    """ppo.average_last=2 over 3 steps evaluated every step (ppo.average_span=1: the whole run): the weights of steps
    2 and 3 are kept as trained (step 2's equal to its checkpoint's), and the policy exported is their mean, weight by
    weight (rlhf/export_choice.py PolicyAverage), put in the policy's place before step 3's evaluation and checkpoint
    (which holds it); 1: the last policy as trained, nothing kept. Unset, the defaults over 8 steps: of the last 4
    evaluations (5-8) those in the run's last quarter, steps 6, 7 and 8."""
    from safetensors.torch import load_file

    from parallel.host import read_checkpoint

    window = {2: ["ppo.steps=3", "ppo.average_last=2", "ppo.average_span=1"], 1: ["ppo.steps=3", "ppo.average_last=1"],
              None: ["ppo.steps=8"]}[average]
    run, result = run_falling(task, tmp_path, capsys, *window, "ppo.export=last", "ppo.save_every=1",
                              "run.save_total_limit=0")
    last = 8 if average is None else 3
    _, exported = read_checkpoint(run / "ppo" / "policy")
    checkpoint = {s: load_file(run / "ppo" / f"checkpoint-{s}" / "policy" / "rank-00000.safetensors")
                  for s in range(1, last + 1)}
    assert all(torch.equal(v, checkpoint[last][k]) for k, v in exported.items())  # the last evaluation's weights
    if average == 1:
        assert result["averaged_steps"] == [] and not (run / "ppo" / "average").exists()
        return
    steps = [2, 3] if average == 2 else [6, 7, 8]
    assert result["averaged_steps"] == steps and result["exported_step"] == last
    kept = {s: load_file(run / "ppo" / "average" / f"step-{s}" / "rank-00000.safetensors") for s in steps}
    assert sorted(int(d.name.split("-")[1]) for d in (run / "ppo" / "average").iterdir()) == steps
    assert all(torch.equal(v, checkpoint[s][k]) for s in steps[:-1] for k, v in kept[s].items())  # as trained there
    assert any(not torch.equal(v, kept[last][k]) for k, v in exported.items())  # not the last as trained
    for k, v in exported.items():
        mean = sum(kept[s][k].double() for s in steps) / len(steps)  # a second, naive mean
        torch.testing.assert_close(v, mean.float(), rtol=0, atol=1e-7)
    assert f"that policy is the mean of the policy's weights at steps {', '.join(map(str, steps))}" in \
        capsys.readouterr().out


def test_ppo_average_last_resumed_after_its_last_checkpoint_under_zero3_exports_the_mean(task, tmp_path, capsys):
    """A run that saved its last checkpoint and stopped before its export, resumed: ZeRO-3 restores its own fp32
    copy of the weights as trained, and the mean is put in their place again before the export (guards
    PolicyAverage.apply in run_ppo; without it the resumed export differs from the mean by ~1e-3)."""
    import shutil

    from safetensors.torch import load_file

    from parallel.host import read_checkpoint

    args = ("ppo.steps=3", "ppo.export=last", "ppo.average_last=2", "ppo.average_span=1",
            "ppo.policy.engine.zero_stage=3", "ppo.save_every=1")
    run, _ = run_falling(task, tmp_path, capsys, *args)
    shutil.rmtree(run / "ppo" / "policy")
    (run / "ppo" / "result.json").unlink()
    run, result = run_falling(task, tmp_path, capsys, *args, "run.resume=true")
    _, exported = read_checkpoint(run / "ppo" / "policy")
    kept = {s: load_file(run / "ppo" / "average" / f"step-{s}" / "rank-00000.safetensors") for s in (2, 3)}
    assert result["averaged_steps"] == [2, 3]
    for k, v in exported.items():
        torch.testing.assert_close(v, (kept[2][k] + kept[3][k]) / 2, rtol=0, atol=1e-7)


@pytest.mark.parametrize("schedule", ["sync", "async"])
@pytest.mark.parametrize("patience", [1, None])
def test_ppo_stops_once_its_held_out_objective_stops_rising(task, tmp_path, patience, schedule, capsys):
    """The falling reward again, evaluated every step: step 2's objective is not above step 1's (the first
    mark), so ppo.patience=1 ends the run after step 2 of at most 6 and exports step 1's policy; without
    patience all 6 steps run. Under schedule=async the next step's sample, drawn already, is left unused."""
    run, result = run_falling(task, tmp_path, capsys, "ppo.steps=6", f"ppo.patience={patience or 'null'}",
                              f"ppo.schedule={schedule}")
    steps = [json.loads(line)["step"] for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines()
             if "reward/score" in json.loads(line)]
    if patience is None:
        assert steps == [1, 2, 3, 4, 5, 6] and result["steps_run"] == 6 and result["stop_reason"] == "ran all 6 steps"
        return
    assert steps == [1, 2] and result["steps_run"] == 2 and sorted(result["evaluations"]) == ["0", "1", "2"]
    assert result["stop_reason"].startswith("stopped after step 2 of at most 6: 1 evaluation(s) in a row without")
    assert result["exported_step"] == 1 and "step 1's policy" in result["export_reason"]
    out = capsys.readouterr().out  # the summary: the stop, and the exported policy's step
    assert f"PPO: {result['stop_reason']}" in out and "final PPO policy (step 1)" in out


def test_ppo_decay_steps_ends_the_cosine_there_and_no_stop_comes_before_it(task, tmp_path, capsys):
    """ppo.decay_steps=3 of at most 6: the policy's learning rate falls from 1e-3 to its floor (a tenth) over
    the 24 updates of steps 1-3 (4 epochs × 2 minibatches each), not over 48, and ppo.patience=1 does not end
    the run at step 2 (as without decay_steps) but at step 3, the cosine's end; step 1's policy is exported."""
    run, result = run_falling(task, tmp_path, capsys, "ppo.steps=6", "ppo.decay_steps=3", "ppo.patience=1")
    lr = {m["step"]: m["policy/lr"] for m in map(json.loads, (run / "ppo" / "metrics.jsonl").read_text().splitlines())
          if "policy/lr" in m}
    cosine = {s: 1e-3 * statistics.fmean(lr_factor(i, 0, 24, 0.1) for i in range(8 * s - 8, 8 * s)) for s in (1, 2, 3)}
    assert lr == pytest.approx(cosine, rel=1e-9)  # each step's mean rate over its 8 updates, of a cosine over 24
    assert result["steps_run"] == 3 and result["exported_step"] == 1
    assert result["stop_reason"].startswith("stopped after step 3 of at most 6: 2 evaluation(s) in a row without")


def eval_rows(ppo_dir) -> list[dict]:
    return [json.loads(line) for f in sorted((ppo_dir / "samples").glob("step-*.jsonl"))
            for line in f.read_text().splitlines()]


def test_a_validation_reward_model_trained_beside_the_reward_model_judges_the_export(task, tmp_path, capsys):
    """rm.validation=true trains a second reward model from the next seeds into rm/validation; PPO's
    held-out rows then carry its score (validation_score) beside the trained-against one's, and the export
    is judged by it. Named as ppo.validation_model, the reward model itself gives validation_score ==
    score row for row; ppo.validation_model=null leaves it out."""
    files, tok = task
    start = make_checkpoint("gpt2", tok, tmp_path / "gpt2")
    base = [f"model.pretrained={start}", "run.backend=local", *common(files, tmp_path / "runs"),
            "ppo.missing_eos_score=null"]  # 4-token responses are mostly cut off: scored by the models, not a rule
    rm_args = [f"rm.train_data={files['comparisons']}", "rm.epochs=1", "rm.max_len=32"]
    assert main(["rm", *base, *rm_args, "rm.validation=true"]) == 0, capsys.readouterr().err
    rm = tmp_path / "runs" / "t" / "rm"
    weights = [AutoModelForSequenceClassification.from_pretrained(d).state_dict() for d in (rm, rm / "validation")]
    assert (rm / "validation" / "reward_stats.json").exists()
    assert any(not torch.equal(v, weights[1][k]) for k, v in weights[0].items())  # another seed, another model

    # ppo.validation_model=auto; raw scores (no normalisation), so that only the model can tell them apart
    assert main(["ppo", *base, *rm_args, "ppo.normalize_scores=false"]) == 0, capsys.readouterr().err
    rows = eval_rows(rm.parent / "ppo")
    assert all("validation_score" in r for r in rows)
    assert any(r["validation_score"] != pytest.approx(r["score"]) for r in rows)
    result = json.loads((rm.parent / "ppo" / "result.json").read_text())
    assert "by the validation reward model" in result["export_reason"]

    for name, judge in (("same", str(rm)), ("none", "null")):
        args = [*base, *rm_args, f"run.name={name}", f"ppo.reward_model={rm}", f"ppo.validation_model={judge}"]
        assert main(["ppo", *args]) == 0, capsys.readouterr().err
        rows = eval_rows(tmp_path / "runs" / name / "ppo")
        if judge == "null":
            assert not any("validation_score" in r for r in rows)
        else:
            assert [r["validation_score"] for r in rows] == pytest.approx([r["score"] for r in rows])


def test_an_ensemble_of_reward_models_trains_together_and_ppo_scores_by_its_worst_case(task, tmp_path, capsys):
    """rm.ensemble=2 trains a second member from the next seeds into rm/ensemble/1 (and rm.validation one
    more, from the seeds after it); PPO finds the member beside the reward model and scores by the
    members' minimum on their held-out scales (ppo.reward_ensemble=min), or their mean. Read at step 0,
    where every run samples the same responses: the ensemble's score is min (mean) of the reward model's
    alone (ppo.reward_ensemble=null) and the member's alone (named as the validation model), row for row."""
    files, tok = task
    start = make_checkpoint("gpt2", tok, tmp_path / "gpt2")
    base = [f"model.pretrained={start}", "run.backend=local", *common(files, tmp_path / "runs"),
            "ppo.missing_eos_score=null", "ppo.score_clip=null"]  # every score as the models give it
    rm_args = [f"rm.train_data={files['comparisons']}", "rm.epochs=1", "rm.max_len=32"]
    assert main(["rm", *base, *rm_args, "rm.ensemble=2", "rm.validation=true"]) == 0, capsys.readouterr().err
    rm = tmp_path / "runs" / "t" / "rm"
    assert f"'model': '{rm / 'ensemble' / '1'}'" in capsys.readouterr().out  # the stage's result names the member
    dirs = (rm, rm / "ensemble" / "1", rm / "validation")
    weights = [AutoModelForSequenceClassification.from_pretrained(d).state_dict() for d in dirs]
    for a, b in ((0, 1), (1, 2)):  # each its own seeds
        assert any(not torch.equal(v, weights[b][k]) for k, v in weights[a].items())
    assert (rm / "ensemble" / "1" / "reward_stats.json").exists()

    def first_rows(name: str, *args: str) -> list[dict]:
        assert main(["ppo", *base, *rm_args, f"run.name={name}", f"ppo.reward_model={rm}", *args]) == 0, \
            capsys.readouterr().err
        return [json.loads(line) for line in (tmp_path / "runs" / name / "ppo" / "samples" / "step-0.jsonl")
                .read_text().splitlines()]

    alone = first_rows("alone", "ppo.reward_ensemble=null", "ppo.validation_model=null")
    member = f"ppo.validation_model={rm / 'ensemble' / '1'}"
    worst, mean = first_rows("min", member), first_rows("mean", member, "ppo.reward_ensemble=mean")
    assert [r["response"] for r in worst] == [r["response"] for r in alone] == [r["response"] for r in mean]
    assert [r["score"] for r in worst] == pytest.approx(
        [min(a["score"], w["validation_score"]) for a, w in zip(alone, worst, strict=True)], abs=1e-5)
    assert [r["score"] for r in mean] == pytest.approx(
        [(a["score"] + w["validation_score"]) / 2 for a, w in zip(alone, mean, strict=True)], abs=1e-5)
    assert any(w["score"] < a["score"] - 1e-3 for a, w in zip(alone, worst, strict=True))  # the member counts
    assert any(w["score"] > w["validation_score"] + 1e-3 for w in worst) or \
        any(w["score"] < w["validation_score"] - 1e-3 for w in worst)  # and so does the reward model

    (rm / "ensemble" / "1" / "reward_stats.json").unlink()  # a member that cannot be put on the scale: named
    assert main(["ppo", *base, *rm_args, "run.name=broken", f"ppo.reward_model={rm}"]) == 2
    err = capsys.readouterr().err
    assert f"{rm / 'ensemble' / '1' / 'reward_stats.json'}: not found" in err and "Traceback" not in err
