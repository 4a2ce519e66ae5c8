"""Labels from the current policies: dealing responses among policies, labeller functions and their
checks, rankings written as comparisons, agreement between two labellers."""

from __future__ import annotations

import json
import random
import textwrap
from collections import Counter

import pytest

from rlhf.data import load_comparisons
from rlhf.files import DataError
from rlhf.functions import FunctionError
from rlhf.labelling import (
    LabelItem,
    Labeller,
    LabellerSpec,
    allocate,
    check_ranking,
    label_items,
    load_items,
    order_by_scores,
    pair_agreement,
    ranked_record,
)


def test_allocate_gives_each_policy_its_share_and_mixes_them():
    slots = allocate(10, 4, [3, 1], seed=0)
    counts = Counter(m for row in slots for m in row)
    assert counts == {0: 30, 1: 10} and all(len(row) == 4 for row in slots)
    assert len({tuple(row) for row in slots}) > 1  # dealt, not in blocks
    assert allocate(10, 4, [3, 1], seed=0) == slots and allocate(10, 4, [3, 1], seed=1) != slots
    # 7 prompts × 3 = 21 responses at 1:1:1 → 7 each; at 0.5:0.25:0.25 → 10.5, 5.25, 5.25 → 11, 5, 5
    assert Counter(m for row in allocate(7, 3, [1, 1, 1], 0) for m in row) == {0: 7, 1: 7, 2: 7}
    assert Counter(m for row in allocate(7, 3, [0.5, 0.25, 0.25], 0) for m in row) == {0: 11, 1: 5, 2: 5}


def test_check_ranking_accepts_only_permutations():
    assert check_ranking([2, 0, 1], 3) == [2, 0, 1]
    for bad in ([0, 0, 1], [0, 1], [0, 1, 3], [0, 1, 2.0], [True, 0, 2], "012", None):
        assert check_ranking(bad, 3) is None, bad


def test_order_by_scores_and_ties():
    assert order_by_scores([0.1, 0.9, 0.5], "drop", random.Random(0)) == [1, 2, 0]
    dropped = order_by_scores([1.0, 0.0, 1.0, 0.5], "drop", random.Random(0))
    assert len(dropped) == 3 and dropped[0] in (0, 2) and dropped[1:] == [3, 1]  # one of the tied two stays
    kept = order_by_scores([1.0, 0.0, 1.0, 0.5], "random", random.Random(0))
    assert sorted(kept[:2]) == [0, 2] and kept[2:] == [3, 1]


def item(responses, prompt="p", **kw) -> LabelItem:
    return LabelItem("7", prompt, tuple(responses), tuple({"model": "m", "step": i} for i in range(len(responses))),
                     **kw)


def test_ranked_record_collapses_repeats_and_writes_a_loadable_comparison(tmp_path):
    rec = ranked_record(item(["a", "b", "a ", "c"]), [2, 1, 0, 3], {"name": "x", "version": "1"})
    assert rec["responses"] == ["a ", "b", "c"] and [s["step"] for s in rec["sources"]] == [2, 1, 3]
    assert ranked_record(item(["a", "a"]), [0, 1], {}) is None
    chat = ranked_record(item(["yes", "no"], prompt=({"role": "user", "content": "ok?"},)), [1, 0], {})
    assert chat["responses"] == [[{"role": "assistant", "content": "no"}], [{"role": "assistant", "content": "yes"}]]
    (tmp_path / "text.jsonl").write_text(json.dumps(rec) + "\n")
    (tmp_path / "chat.jsonl").write_text(json.dumps(chat) + "\n")
    assert load_comparisons(tmp_path / "text.jsonl")[0].responses == ("a ", "b", "c")
    assert load_comparisons(tmp_path / "chat.jsonl")[0].context == ({"role": "user", "content": "ok?"},)


def test_pair_agreement_by_hand():
    # [0,1,2] vs [0,2,1]: pairs (0,1) alike, (0,2) alike, (1,2) opposite → 2 of 3
    assert pair_agreement([0, 1, 2], [0, 2, 1]) == (2, 3)
    assert pair_agreement([3, 2, 1, 0], [0, 1, 2, 3]) == (0, 6)
    assert pair_agreement([0, 1, 2], [2, 0]) == (0, 1)  # only the responses both ranked


LABELLERS = """
__version__ = "2.1"

def by_length(prompts, responses, **fields):
    return [[len(r) for r in rs] for rs in responses]

def reverse(prompts, responses, **fields):
    return [list(range(len(rs)))[::-1] for rs in responses]

def with_answer(prompts, responses, answer):
    return [[float(r == a) for r in rs] for rs, a in zip(responses, answer)]

def not_a_permutation(prompts, responses, **fields):
    return [[0] * len(rs) for rs in responses]

def nan(prompts, responses, **fields):
    return [[float("nan")] + [1.0] * (len(rs) - 1) for rs in responses]

def short(prompts, responses, **fields):
    return [[1.0, 2.0] for _ in responses]

def fails_on_b(prompts, responses, **fields):
    if any(p == "b" for p in prompts):
        raise KeyError("b")
    return [[1.0] * len(rs) for rs in responses]

def hangs(prompts, responses, **fields):
    import time
    time.sleep(5)
"""


@pytest.fixture
def labellers(tmp_path):
    (tmp_path / "lab.py").write_text(textwrap.dedent(LABELLERS))
    return lambda name, **kw: Labeller(LabellerSpec(function=f"lab.py:{name}", **kw).resolved(tmp_path), tmp_path)


def test_labeller_scores_rankings_and_fields(labellers):
    items = [item(["aaa", "a", "aa"]), LabelItem("8", "q", ("x", "y"), ({}, {}), fields={"answer": "y"})]
    lab = labellers("by_length")
    assert lab.identity == {"name": lab.spec.function, "version": "2.1"}
    assert lab(items[:1]) == [[0, 2, 1]]
    assert labellers("reverse", returns="ranking")(items[:1]) == [[2, 1, 0]]
    assert labellers("with_answer")(items[1:]) == [[1, 0]]
    records, left_out = label_items(lab, [*items, item(["z", "z"])])
    assert [r["responses"] for r in records] == [["aaa", "aa", "a"]] and left_out == ["8", "7"]


@pytest.mark.parametrize("name, kw, message", [
    ("not_a_permutation", {"returns": "ranking"}, "a ranking is a permutation of 0..2"),
    ("nan", {}, "nan, not a finite number, for prompt 'p', response 'aaa'"),
    ("short", {}, "returned [1.0, 2.0] for prompt 'p'"),
    ("fails_on_b", {}, "raised KeyError: 'b' on prompt 'b'"),
    ("hangs", {"timeout_s": 0.2}, "did not return within 0.2 s"),
])
def test_labeller_errors_name_the_function_and_prompt(labellers, name, kw, message):
    items = [item(["aaa", "a", "aa"]), item(["aaa", "a", "aa"], prompt="b")]
    with pytest.raises(FunctionError, match=f"lab.py:{name}") as e:
        labellers(name, **kw)(items)
    assert message in str(e.value)


def test_load_items_names_the_line_and_field(tmp_path):
    good = {"id": 1, "prompt": "p", "responses": ["a", "b"], "sources": [{"model": "m", "step": 0}] * 2}
    path = tmp_path / "to_label.jsonl"
    path.write_text(json.dumps(good) + "\n")
    assert load_items(path)[0].as_record()["responses"] == ["a", "b"]
    for row, message in [({**good, "id": 2, "responses": ["a"]}, "to_label.jsonl:2: field 'responses'"),
                         (good, "to_label.jsonl:2: field 'id': '1' is also the id at .*to_label.jsonl:1"),
                         ({**good, "id": 2, "sources": [{}]}, "to_label.jsonl:2: field 'sources'"),
                         ({"id": 3, "responses": ["a", "b"]}, "to_label.jsonl:2: field 'prompt': missing")]:
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(DataError, match=message):
            load_items(path)
