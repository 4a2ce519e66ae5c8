"""bench/mutation_check.py's catalogue stays true to the code: each line it breaks is in its file exactly once,
and each test meant to catch the break exists (a stale entry would only be found when the slow check runs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.mutation_check import MUTATIONS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("what, rel, line, broken, tests", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_mutation_names_a_line_and_tests_that_exist(what, rel, line, broken, tests):
    assert (ROOT / rel).read_text().count(line) == 1, f"{rel} should hold {line!r} once"
    assert line != broken
    for test in tests:
        file, _, name = test.partition("::")
        assert (ROOT / file).exists(), test
        if name:
            assert re.search(rf"^\s*def {re.escape(name.split('[')[0])}\(", (ROOT / file).read_text(), re.M), test
