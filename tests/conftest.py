"""Shared test fixtures: tiny random HF checkpoints made locally, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    # The Triton kernel's tests run in Triton's interpreter on CPU; it is read when kernels are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session, shut down (with its processes) at the end."""
    from launcher.cluster import init_ray, shutdown_ray

    resources = init_ray(num_cpus=8)  # logical CPUs: ranks ask for fractions of the 2 real cores
    yield resources
    shutdown_ray()
