"""The fault tests' shared runs (tests/launcher/faults.py): trained once per session."""

from __future__ import annotations

import pytest

from bench.chaos import SMALL, ppo_args, start
from launcher.cli import main
from tests.launcher.faults import finish


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """An SFT policy and a reward model, trained in-process (the faults are for the PPO stage)."""
    out = tmp_path_factory.mktemp("base")
    assert main(["demo", f"run.out_dir={out}", "run.backend=local", *SMALL, "ppo.steps=1"]) == 0
    return out / "demo"


@pytest.fixture(scope="session")
def reference(models, tmp_path_factory):
    """The uninterrupted PPO run of faults.ppo_args, on a local Ray cluster of its own."""
    out = tmp_path_factory.mktemp("reference")
    log = out / "log"
    finish(start(ppo_args(models, out), log), log)
    return out / "demo"
