"""A full disk during a save (#31, item 3): the save's partial directory removed, the previous
checkpoint whole and loadable, an error naming the path and the space needed (or, configured, a
warning and a save at the next turn); a metrics record cut short by the disk is dropped on resume."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from bench import chaos
from launcher.cli import main
from launcher.storage import storage_cause
from launcher.tracking import Tracker, WandbConfig
from models.errors import InputError
from parallel import checkpoint as ck
from rlhf.workers import ModelWorker

SMALL = ["run.backend=local", *chaos.SMALL]


class SafetensorError(Exception):
    """What safetensors raises on a full disk: no errno, only its text."""


def test_storage_failures_are_recognised_in_any_wrapping():
    enospc = OSError(errno.ENOSPC, "No space left on device")
    assert storage_cause(enospc) is enospc
    text = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                           'left on device" })')
    assert storage_cause(text) is text

    class RayTaskError(Exception):
        cause = enospc

    assert storage_cause(RayTaskError("a rank failed")) is enospc
    try:
        raise RuntimeError("the call failed") from OSError(errno.EIO, "Input/output error")
    except RuntimeError as e:
        assert storage_cause(e).errno == errno.EIO
    assert storage_cause(OSError(errno.ENOENT, "No such file")) is None and storage_cause(ValueError("x")) is None


def ppo(models: Path, out: Path, *extra: str) -> list[str]:
    return ["ppo", "--config", "demo", f"run.out_dir={out}", f"ppo.policy_init={models / 'sft'}",
            f"ppo.reward_model={models / 'rm'}", *SMALL, "ppo.steps=4", "ppo.save_every=1", "run.save_total_limit=0",
            *extra]


@pytest.fixture
def disk_fills_at_second_save(monkeypatch):
    """The policy's part of the second checkpoint meets a full disk after writing some bytes."""
    real, calls = ModelWorker.save_state, []

    def save_state(self, directory, client_state):
        calls.append(directory)
        if len(calls) == 3:  # step 1: policy, critic; step 2: the policy's part fails
            Path(directory).mkdir(parents=True, exist_ok=True)
            (Path(directory) / "rank-00000.safetensors").write_bytes(b"\0" * 1000)
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        return real(self, directory, client_state)

    monkeypatch.setattr(ModelWorker, "save_state", save_state)
    return monkeypatch


def test_a_full_disk_stops_the_run_and_leaves_the_last_checkpoint_whole(models, tmp_path, disk_fills_at_second_save,
                                                                         capsys):
    assert main(ppo(models, tmp_path)) == 2
    err = capsys.readouterr().err
    ppo_dir = tmp_path / "demo" / "ppo"
    assert f"{ppo_dir}/.checkpoint-2.partial: saving step 2 failed (Error while serializing" in err
    assert "MB free on its file system, and a checkpoint of this run takes about" in err
    assert f"the previous checkpoint, {ppo_dir}/checkpoint-1, is whole and loadable" in err
    assert [p.name for p in ppo_dir.iterdir() if "checkpoint" in p.name] == ["checkpoint-1"]
    assert ck.verify(ppo_dir / "checkpoint-1") is None
    assert any('"save_failed"' in line for line in (ppo_dir / "metrics.jsonl").read_text().splitlines())
    disk_fills_at_second_save.undo()  # space freed: the same command resumes from step 1 and finishes
    assert main(ppo(models, tmp_path, "run.resume=true")) == 0
    resumed = [json.loads(x) for x in (ppo_dir / "metrics.jsonl").read_text().splitlines() if '"resume"' in x]
    assert [r["checkpoint"] for r in resumed] == [str(ppo_dir / "checkpoint-1")]
    assert sorted(p.name for p in ppo_dir.glob("checkpoint-*")) == [f"checkpoint-{i}" for i in range(1, 5)]


def test_configured_to_continue_it_saves_at_the_next_turn(models, tmp_path, disk_fills_at_second_save, caplog):
    assert main(ppo(models, tmp_path, "run.on_save_error=continue")) == 0
    ppo_dir = tmp_path / "demo" / "ppo"
    assert sorted(p.name for p in ppo_dir.glob("*checkpoint-*")) == ["checkpoint-1", "checkpoint-3", "checkpoint-4"]
    assert "the run goes on and saves again at the next save" in caplog.text


def test_a_metrics_record_cut_short_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "a": 1.0}) + "\n" + '{"step": 2, "a": 0.')
    tracker = Tracker(tmp_path, "t", WandbConfig(mode="disabled"), {}, "ppo", resume=True)
    tracker.log({"a": 2.0}, 2)
    tracker.finish()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2,\n{"step": 3, "a": 1.0}\n')
    with pytest.raises(InputError, match=r"metrics\.jsonl:2: not a JSON record"):
        Tracker(tmp_path, "t", WandbConfig(mode="disabled"), {}, "ppo", resume=True)
