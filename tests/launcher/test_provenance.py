"""A resume compares the data files with those the run started with (#31, item 4): a changed file is
an error naming it, unless run.resume_changed_data=true; a changed config key is said."""

from __future__ import annotations

import json
import logging

from launcher.cli import main
from launcher.provenance import file_fingerprint
from tests.launcher.test_stage_commands import SMALL
from tests.launcher.user_task import write_task


def test_fingerprints_see_content_not_dates(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text("x\n")
    first = file_fingerprint(a)
    a.write_text("x\n")
    assert file_fingerprint(a) == first
    a.write_text("y\n")
    assert file_fingerprint(a)["sha256"] != first["sha256"] and file_fingerprint(a)["size"] == 2
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "part-0").write_text("1")
    folder = file_fingerprint(tmp_path / "d")
    (tmp_path / "d" / "part-1").write_text("2")
    assert file_fingerprint(tmp_path / "d") != folder and file_fingerprint(tmp_path / "hub/name") is None


def test_a_resume_refuses_data_changed_under_it(tmp_path, capsys, caplog):
    files = write_task(tmp_path / "task", n_sft=120, n_prompts=40, n_eval=8)
    args = ["sft", f"run.out_dir={tmp_path}", "run.name=r", "model.bpe_vocab=512", *SMALL, "sft.epochs=1",
            f"sft.train_data={files['sft']}"]
    assert main(args) == 0
    recorded = json.loads((tmp_path / "r" / "inputs.json").read_text())["data"]["sft.train_data"]
    assert recorded["path"] == str(files["sft"]) and len(recorded["sha256"]) == 64
    with open(files["sft"], "a") as f:  # edited between the job and its requeue
        f.write(json.dumps({"prompt": "1 + 1 =", "response": "2"}) + "\n")
    assert main([*args, "run.resume=true"]) == 2
    err = capsys.readouterr().err
    assert "sft.train_data: " in err and "sft.jsonl changed since the run started" in err
    with caplog.at_level(logging.WARNING, logger="instructrl"):
        assert main([*args, "run.resume=true", "run.resume_changed_data=true", "sft.batch_size=8"]) == 0
    assert "going on with it (run.resume_changed_data=true)" in caplog.text
    assert "resuming with sft.batch_size=8; the run started with 32" in caplog.text
    assert main([*args, "run.resume=true"]) == 0  # the accepted data is now what the run has
