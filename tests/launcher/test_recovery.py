"""Real faults on real processes: the CLI's PPO stage on Ray, with the driver killed during a save, a
checkpoint corrupted on disk, a SIGTERM, and a diverging learning rate. Each run must end as an
uninterrupted one does — bit for bit (docs/reliability.md). Ranks of every role killed or frozen: the
chaos soak (test_chaos.py)."""

from __future__ import annotations

import json
import signal

import pytest
from safetensors.torch import load_file

from bench.chaos import SMALL, last_step, ppo_args, start
from launcher.cli import main
from parallel import checkpoint as ck
from tests.launcher.faults import assert_same_run, finish, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
def test_driver_killed_during_a_save_then_resumed_from_a_corrupted_directory(models, reference, tmp_path):
    """SIGKILL the driver while a checkpoint is being written: the staging directory is never taken for
    a checkpoint. Then flip a byte of the newest committed checkpoint: run.resume=true skips it with a
    warning for the one before, and the run still ends bit-identical to the uninterrupted one."""
    log = tmp_path / "log"
    proc = start(ppo_args(models, tmp_path), log)
    run = tmp_path / "demo"
    def saving() -> bool:  # a checkpoint is being written, and an earlier one is whole
        return len(ck.list_checkpoints(run / "ppo")) >= 2 and any((run / "ppo").glob(".checkpoint-*.partial"))

    wait_for(saving, proc, log, poll_s=0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    torn = list((run / "ppo").glob(".checkpoint-*.partial"))
    assert torn and ck.latest(run / "ppo") != ck.checkpoint_dir(run / "ppo", ck.step_of(torn[0].name[1:-8]))
    newest = ck.latest(run / "ppo")
    older = ck.list_checkpoints(run / "ppo")[1]
    victim = next(p for p in sorted((newest / "policy").iterdir()) if p.suffix == ".safetensors")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    log2 = tmp_path / "log2"
    text = finish(start(ppo_args(models, tmp_path, "run.resume=true"), log2), log2)
    assert f"skipping checkpoint {newest}: policy/{victim.name} does not match its checksum" in text
    assert f"resumed from {older} at step {ck.step_of(older)}" in text
    assert not list((run / "ppo").glob(".checkpoint-*.partial"))  # cleared by the next commit
    assert_same_run(run, reference)


def test_sigterm_saves_at_the_step_boundary_and_the_resumed_run_is_exact(models, reference, tmp_path):
    """SIGTERM to the driver (Ray's own handler would abort it with status 134): the step in flight
    ends, a checkpoint is committed, exit status 75; the same command with run.resume=true finishes
    bit-identical to the uninterrupted run."""
    log = tmp_path / "log"
    proc = start(ppo_args(models, tmp_path), log)
    run = tmp_path / "demo"
    wait_for(lambda: last_step(run) >= 3, proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    saved = ck.latest(run / "ppo")
    assert "SIGTERM received: saving at the end of this step" in log.read_text()
    assert f"preempted: stopped on request after step {ck.step_of(saved)}, which is saved" in log.read_text()
    log2 = tmp_path / "log2"
    text = finish(start(ppo_args(models, tmp_path, "run.resume=true"), log2), log2)
    assert f"resumed from {saved} at step {ck.step_of(saved)}" in text
    assert_same_run(run, reference)
    evaluations = json.loads((run / "ppo" / "result.json").read_text())["evaluations"]
    assert sorted(evaluations, key=int) == ["0", "12"]  # the start's evaluation, from before the stop


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_last_good_checkpoint(models, tmp_path, capsys):
    rc = main(["ppo", "--config", "demo", f"run.out_dir={tmp_path}", "run.backend=local",
               f"ppo.policy_init={models / 'sft'}", f"ppo.reward_model={models / 'rm'}", *SMALL, "ppo.steps=8",
               "ppo.save_every=1", "ppo.policy.optim.lr=1e4", "ppo.critic.optim.lr=1e4",
               "ppo.policy.optim.grad_clip=0", "ppo.critic.optim.grad_clip=0", "run.max_bad_steps=2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "2 steps in a row with non-finite values" in err and "keeping the last checkpoint" in err, err
    for path in ck.list_checkpoints(tmp_path / "demo" / "ppo"):
        assert ck.verify(path) is None
        for f in path.rglob("*.safetensors"):
            assert all(t.isfinite().all() for t in load_file(str(f)).values()), f
