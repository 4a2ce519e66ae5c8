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


PACKAGES = ("launcher", "models", "parallel", "rlhf", "labelpage")


def module_graph() -> dict[str, set[str]]:
    """module → the project's modules it imports anywhere in its text (function-local imports too:
    a circle broken only by importing late is still a circle)."""
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
             for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    paths = {name.removesuffix(".__init__"): p for name, p in paths.items()}
    graph = {}
    for name, path in paths.items():
        text = path.read_text()
        targets = set(IMPORT.findall(text))
        # "from launcher import x" names modules too
        targets |= {f"{m}.{x}" for m, xs in re.findall(r"^\s*from\s+([\w.]+)\s+import\s+\(?([\w ,]+)", text, re.M)
                    for x in (s.split()[0] for s in xs.split(",") if s.strip())}
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    """#30 item 7: cluster.py took recovery.STOP through a function-local import while recovery
    imported worker_group and worker_group imported cluster."""
    assert cycles(module_graph()) == []
