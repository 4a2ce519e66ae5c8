"""Checkpoints are whole or absent, verified before use, and loaded without unpickling objects."""

from __future__ import annotations

import logging
import os
import pickle

import pytest
import torch

from launcher.worker_group import LocalGroup
from models.config import ModelConfig
from parallel import checkpoint as ck
from parallel.engine import EngineConfig, OptimConfig
from parallel.host import ModelSource
from parallel.zero import load_safely
from rlhf.workers import PolicyWorker


def stage(root, step: int, payload: bytes = b"weights") -> None:
    for role in ("policy", "critic"):
        d = ck.staging_dir(root, step) / role
        d.mkdir(parents=True, exist_ok=True)
        (d / "rank-00000.safetensors").write_bytes(payload + bytes([step]))


def test_commit_verify_latest_and_prune(tmp_path, caplog):
    for step in (2, 4, 6):
        stage(tmp_path, step)
        assert ck.commit(tmp_path, step, {"step": step}) == tmp_path / f"checkpoint-{step}"
    stage(tmp_path, 8)  # a save interrupted before its commit: never a candidate
    assert [ck.step_of(p) for p in ck.list_checkpoints(tmp_path)] == [6, 4, 2]
    assert ck.verify(tmp_path / "checkpoint-6") is None
    (tmp_path / "checkpoint-6" / "critic" / "rank-00000.safetensors").write_bytes(b"weightz\x06")  # same size
    with caplog.at_level(logging.WARNING, logger="instructrl"):
        assert ck.latest(tmp_path) == tmp_path / "checkpoint-4"
    assert "checkpoint-6: critic/rank-00000.safetensors does not match its checksum" in caplog.text
    removed = ck.prune(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == [".checkpoint-8.partial", "checkpoint-2"]
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["checkpoint-6", "checkpoint-4"]


@pytest.mark.parametrize("damage, problem", [
    ("manifest", "no manifest.json"),
    ("truncate", "is 3 bytes, the manifest says 8"),
    ("remove", "policy/rank-00000.safetensors is missing"),
    ("state step", "coordinator.json does not match its checksum"),
])
def test_each_kind_of_damage_is_named(tmp_path, damage, problem):
    stage(tmp_path, 3)
    path = ck.commit(tmp_path, 3, {"step": 3})
    f = path / "policy" / "rank-00000.safetensors"
    if damage == "manifest":
        (path / ck.MANIFEST).unlink()
    elif damage == "truncate":
        f.write_bytes(b"wei")
    elif damage == "remove":
        f.unlink()
    else:
        (path / ck.STATE).write_text('{"step": 4}')
    assert problem in ck.verify(path)


def test_the_same_step_saved_again_replaces_the_old_copy(tmp_path):
    stage(tmp_path, 5, b"first")
    ck.commit(tmp_path, 5, {"step": 5})
    stage(tmp_path, 5, b"again")
    ck.commit(tmp_path, 5, {"step": 5})
    assert ck.verify(tmp_path / "checkpoint-5") is None
    assert (tmp_path / "checkpoint-5" / "policy" / "rank-00000.safetensors").read_bytes().startswith(b"again")


class Payload:
    """What a hostile checkpoint carries: unpickling it would run a shell command."""

    def __reduce__(self):
        return os.system, ("touch pwned",)


def tiny_group(stage: int) -> LocalGroup:
    cfg = ModelConfig(vocab_size=40, max_seq_len=16, d_model=16, n_layers=1, n_heads=2, pad_token_id=0,
                      eos_token_id=1)
    return LocalGroup(PolicyWorker, ModelSource(config=cfg), EngineConfig(zero_stage=stage), OptimConfig(), 10, 2)


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_state_files_load_without_unpickling_objects(tmp_path, monkeypatch, zero_stage):
    """Our engine's and DeepSpeed's checkpoint files round-trip through the weights-only loader; a
    file carrying code is refused, and the code never runs."""
    monkeypatch.chdir(tmp_path)
    group = tiny_group(zero_stage)
    group.broadcast(PolicyWorker.save_state, str(tmp_path / "ck"), {"step": 3}).get()
    assert group.broadcast(PolicyWorker.load_state, str(tmp_path / "ck")).get() == [{"step": 3}]
    files = sorted((tmp_path / "ck").rglob("*.pt"))
    assert files and not list((tmp_path / "ck").rglob("*.bin"))
    if zero_stage == 0:
        assert (tmp_path / "ck" / "rank-00000.safetensors").exists()
    target = max(files, key=lambda f: f.stat().st_size)  # the optimizer state
    torch.save({"state": Payload()}, target)
    with pytest.raises(pickle.UnpicklingError):
        group.broadcast(PolicyWorker.load_state, str(tmp_path / "ck")).get()
    with pytest.raises(pickle.UnpicklingError):
        load_safely(str(target))
    assert not (tmp_path / "pwned").exists()


def test_a_model_with_nonfinite_weights_is_not_saved(tmp_path):
    from rlhf.guards import DivergedError

    group = tiny_group(0)
    with torch.no_grad():
        next(group._rank.worker.model.parameters())[0] = float("nan")
    with pytest.raises(DivergedError, match="NaN or infinite weights"):
        group.broadcast(PolicyWorker.save_state, str(tmp_path / "ck"), {"step": 1}).get()
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_a_nonfinite_gradient_norm_skips_the_step(zero_stage):
    """A finite loss with an infinite gradient (√x at 0): the engine leaves weights, optimizer and LR
    schedule as they were and reports the norm; a finite one then steps."""
    group = tiny_group(zero_stage)
    engine = group._rank.worker.engine
    before = {k: v.clone() for k, v in engine.local_state_dict().items()}
    p = next(engine.module.parameters())
    loss = torch.sqrt(p - p.detach()).sum()
    assert torch.isfinite(loss)
    engine.backward(loss)
    out = engine.step()
    assert not torch.isfinite(torch.tensor(out["grad_norm"]))
    after = engine.local_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    engine.backward((p * p).sum())
    out = engine.step()
    assert torch.isfinite(torch.tensor(out["grad_norm"])) and not torch.equal(before[next(iter(before))],
                                                                               engine.local_state_dict()[next(iter(before))])


def test_a_compile_lock_left_by_a_killed_process_is_cleared(tmp_path, caplog):
    """torch's extension builder waits forever on a lock whose owner died mid-compile."""
    from parallel.zero import STALE_LOCK_S, clear_stale_lock

    lock = tmp_path / "lock"
    lock.touch()
    clear_stale_lock(tmp_path)
    assert lock.exists()  # another process may be compiling right now
    old = lock.stat().st_mtime - STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    with caplog.at_level(logging.WARNING, logger="instructrl"):
        clear_stale_lock(tmp_path)
    assert not lock.exists() and "left by a process killed while compiling" in caplog.text
