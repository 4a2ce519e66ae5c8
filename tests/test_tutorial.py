"""docs/tutorial.md as a new user follows it: its files written from the page, its commands run as
written in a fresh folder, and its claims checked on the run they produce."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
FILE_BLOCK = re.compile(r'```\w+ title="([^"]+)"\n(.*?)```', re.S)
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


@pytest.mark.slow
@pytest.mark.e2e
def test_tutorial_runs_as_written(tmp_path):
    text = TUTORIAL.read_text()
    files = FILE_BLOCK.findall(text)
    assert [name for name, _ in files] == ["make_data.py", "reward.py", "my.yaml", "labeller.py"]
    for name, body in files:
        (tmp_path / name).write_text(body)
    script = "set -euo pipefail\n" + "\n".join(BASH_BLOCK.findall(text))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "INSTRUCTRL_PROGRESS_INTERVAL": "5"}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "Traceback" not in out and "Transformer Engine" not in out, out[-4000:]
    assert "all inputs are readable and consistent; `instructrl pipeline` would run: sft → ppo" in out
    summary = json.loads((tmp_path / "runs" / "addition" / "summary.json").read_text())
    start, final = summary["start"], summary["final"]
    gain = final["eval/gold_score"] - start["eval/gold_score"]
    noise = math.hypot(start["eval/gold_stderr"], final["eval/gold_stderr"])
    # the page reports +0.208 (9.2 s.e.); +0.217 and +0.237 on two seeds before SFT stopped on its held-out loss
    assert gain > 0.05 and gain > 2 * noise, summary
    assert (tmp_path / "runs" / "addition" / "ppo" / "overoptimization.png").stat().st_size > 10_000
    # section 7: a file to label, its comparisons, and three rounds of sample → label → RM → PPO
    ranked = [json.loads(line) for line in (tmp_path / "runs/addition/sample/to_label.comparisons.jsonl").open()]
    assert ranked and all(r["labeller"]["name"].endswith("labeller.py:team") for r in ranked)
    rounds = json.loads((tmp_path / "runs" / "addition-rounds" / "summary.json").read_text())
    assert [r["round"] for r in rounds["rounds"]] == [1, 2, 3], rounds
    assert rounds["rounds"][-1]["comparisons_so_far"] > rounds["rounds"][0]["comparisons_so_far"]
    # the page reads the table as a warning: few labels, a weak reward model; each round starts where the last ended
    assert all(r["rm_eval_accuracy"] is not None and r["gold"] is not None for r in rounds["rounds"]), rounds
    assert [r["start_gold"] for r in rounds["rounds"][1:]] == [r["gold"] for r in rounds["rounds"][:-1]]
    logs = sorted(p.name for p in (tmp_path / "runs" / "addition" / "logs").glob("*.log"))
    # the pipeline's sft policy + policy, reference, critic, reward, and section 7's sampler: one file per rank
    assert logs == [f"addition-{g}-rank0.log" for g in ("critic", "policy", "policy-sft", "reference", "reward",
                                                         "sampler0")], logs
    # a non-terminal log gets whole lines, not a bar redrawn with carriage returns
    assert "\r" not in done.stderr and re.search(r"^ppo: +\d+% .*\d+/60", done.stderr, re.M), done.stderr[-2000:]
