"""`instructrl pipeline run.rounds=N rm.labeller=...`: each round samples the current policy (and the SFT
policy's share), labels, trains the reward model on every comparison so far and continues PPO with
its KL still to the SFT policy; people label through a pause and run.resume=true."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launcher.cli import EXIT_AWAITING_LABELS, main
from tests.launcher.test_sampling import LABELLER
from tests.launcher.test_stage_commands import SMALL
from tests.launcher.user_task import write_task

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    files = write_task(root / "task", n_sft=200, n_prompts=80, n_eval=8)
    (root / "lab.py").write_text(LABELLER)
    return root, files


def pipeline_args(root, files, labeller: str, *extra: str) -> list[str]:
    return ["pipeline", f"run.out_dir={root}", "run.name=rounds", "model.bpe_vocab=512", *SMALL,
            f"sft.train_data={files['sft']}", "sft.epochs=1", "rm.epochs=1", f"ppo.prompts={files['prompts']}",
            f"ppo.eval_prompts={files['eval']}", f"evaluation.gold_function={files['rewards']}:correct",
            "ppo.prompts_per_step=8", "ppo.minibatches=2", "ppo.samples_per_prompt=2", "ppo.eval_every=100",
            "run.rounds=2", "ppo.steps=4", f"sample.prompts={files['prompts']}", "sample.limit=24", "sample.k=3",
            "sample.sft_share=0.5", "ppo.missing_eos_score=null", "ppo.critic_warmup_steps=0",
            f"rm.labeller={labeller}", *extra]


def test_people_label_through_pauses_then_a_function_finishes_the_rounds(task, capsys):
    root, files = task
    run = root / "rounds"
    # rm.labeller=human: the run writes round 1's file to label and pauses
    assert main(pipeline_args(root, files, "human", "run.overwrite=true")) == EXIT_AWAITING_LABELS
    to_label = run / "labels" / "to_label.jsonl"
    assert "waits for people to rank it" in capsys.readouterr().err and to_label.exists()
    rows = [json.loads(line) for line in to_label.read_text().splitlines()]
    assert len(rows) == 24 and {s["model"] for r in rows for s in r["sources"]} == {str(run / "sft")}
    # people rank it (here through the command the page shares its output format with), and the run goes on
    assert main(["label", str(to_label), "--labeller", f"{root / 'lab.py'}:closeness"]) == 0
    assert main(pipeline_args(root, files, "human", "run.resume=true")) == EXIT_AWAITING_LABELS
    second = run / "round-2" / "labels" / "to_label.jsonl"
    sources = Counter(s["model"] for line in second.read_text().splitlines() for s in json.loads(line)["sources"])
    assert sources == {str(run / "sft"): 36, str(run / "ppo" / "policy"): 36}  # sample.sft_share=0.5 of 24 × 3
    # the same run finished by a labeller function
    assert main(pipeline_args(root, files, f"{root / 'lab.py'}:closeness", "run.resume=true")) == 0, \
        capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    first, last = summary["rounds"]
    assert first["rm_trained_on"] < last["rm_trained_on"] and last["comparisons_so_far"] > first["comparisons_so_far"]
    assert (run / "round-2" / "ppo" / "policy" / "model.safetensors").exists()
    assert (run / "overoptimization.png").exists() and "rounds (each: sample" in capsys.readouterr().out
    # round 2's PPO starts from round 1's policy, and its KL is still to the SFT policy: where round 1 ended
    ended = json.loads((run / "ppo" / "result.json").read_text())["evaluations"]["2"]["eval/kl"]
    evals = json.loads((run / "round-2" / "ppo" / "result.json").read_text())["evaluations"]
    assert ended > 0.01 and evals["0"]["eval/kl"] == pytest.approx(ended, abs=1e-4)
    comparisons = (run / "round-2" / "labels" / "to_label.comparisons.jsonl").read_text().splitlines()
    assert {json.loads(c)["labeller"]["version"] for c in comparisons} == {"sums-1"}


def test_check_describes_the_rounds(task, capsys):
    root, files = task
    assert main(["check", *pipeline_args(root, files, "human", "run.name=checked")[1:]]) == 0
    assert "rounds: 2 × (sample 24 prompts × 3 responses, ranked by people, on the labelling page" in \
        capsys.readouterr().out


def test_rounds_need_a_labeller_and_whole_steps(task, capsys):
    root, files = task
    args = [a for a in pipeline_args(root, files, "x.py:f") if not a.startswith("rm.labeller")]
    assert main(args) == 2 and "set rm.labeller" in capsys.readouterr().err
    assert main(pipeline_args(root, files, "human", "ppo.steps=3")) == 2
    assert "make it a multiple of the rounds" in capsys.readouterr().err
    assert main(pipeline_args(root, files, f"{root / 'lab.py'}:nope", "run.name=other")) == 2
    assert "rm.labeller: " in capsys.readouterr().err
    assert main(pipeline_args(root, files, "human", "sample.limit=50", "run.name=other")) == 2
    assert "2 round(s) of 50 prompts (sample.limit) need 100" in capsys.readouterr().err


@pytest.mark.slow
def test_a_round_preempted_in_its_ppo_resumes_there_and_ends_as_an_uninterrupted_run(task, capsys):
    """SIGTERM during round 2's PPO: exit 75; run.resume=true skips round 1 and round 2's labels and reward
    model, resumes round 2's PPO from its checkpoint, and ends with the uninterrupted run's weights."""
    root, files = task
    labeller = f"{root / 'lab.py'}:closeness"
    extra = ("ppo.steps=60", "ppo.save_every=1")  # 30 steps a round: the signal lands inside round 2's PPO
    run = root / "preempted"
    log = root / "preempted.log"
    env = {**os.environ, "INSTRUCTRL_PROGRESS_INTERVAL": "1"}
    args = [str(BIN / "instructrl"), *pipeline_args(root, files, labeller, *extra, "run.name=preempted")]
    proc = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
    metrics = run / "round-2" / "ppo" / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and any('"reward/score"' in x for x in metrics.read_text().splitlines())):
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 75, log.read_text()[-3000:]
    done_before = {p: p.stat().st_mtime for p in [run / "ppo" / "result.json", run / "round-2" / "rm" / "result.json",
                                                  run / "round-2" / "labels" / "to_label.comparisons.jsonl"]}
    assert main(pipeline_args(root, files, labeller, *extra, "run.name=preempted", "run.resume=true")) == 0
    assert all(p.stat().st_mtime == t for p, t in done_before.items())
    events = [json.loads(x) for x in metrics.read_text().splitlines() if '"event": "resume"' in x]
    assert len(events) == 1 and "round-2/ppo/checkpoint-" in events[0]["checkpoint"]
    assert main(pipeline_args(root, files, labeller, *extra, "run.name=straight", "run.overwrite=true")) == 0
    resumed = load_file(run / "round-2" / "ppo" / "policy" / "model.safetensors")
    straight = load_file(root / "straight" / "round-2" / "ppo" / "policy" / "model.safetensors")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
