"""Dependencies point one way (STYLE rule 2): checked on the source text of every module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPORT = re.compile(r"^\s*(?:import|from)\s+([a-zA-Z_][\w.]*)", re.MULTILINE)

FORBIDDEN = {
    "models": {"ray", "deepspeed", "megatron", "launcher", "parallel", "rlhf", "labelpage"},
    "parallel": {"ray", "launcher", "rlhf", "labelpage"},
    "rlhf": {"ray", "launcher", "labelpage"},
    "rlhf/algo": {"ray", "deepspeed", "megatron", "triton", "launcher", "parallel", "models", "transformers",
                  "labelpage"},
    # the labelling page reads and writes records through rlhf; it starts no model and no cluster
    "labelpage": {"ray", "deepspeed", "megatron", "triton", "torch", "launcher", "parallel"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_boundaries(package):
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        modules = set(IMPORT.findall(path.read_text()))
        bad = {m.split(".")[0] for m in modules} & FORBIDDEN[package]
        if package == "models":
            bad |= {m for m in modules if m.startswith("torch.distributed")}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, offenders


# STYLE rule 2; megatron has two: mesh.py owns its process-group state, tensor_parallel.py its layers.
WRAPPERS = {"deepspeed": {"parallel/zero.py"}, "megatron": {"parallel/mesh.py", "parallel/tensor_parallel.py"},
            "triton": {"models/kernels/flash_attention.py"}}


@pytest.mark.parametrize("library", sorted(WRAPPERS))
def test_each_heavy_library_is_wrapped_by_one_file(library):
    importers = {
        str(path.relative_to(ROOT))
        for package in ("launcher", "models", "parallel", "rlhf")
        for path in (ROOT / package).rglob("*.py")
        if library in {m.split(".")[0] for m in IMPORT.findall(path.read_text())}
    }
    assert importers == WRAPPERS[library]
