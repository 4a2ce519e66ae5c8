"""Loaders on good and bad input; the HH-RLHF loader on the real shared file."""

from __future__ import annotations

import gzip
import json

import datasets
import pytest

from rlhf.data import DataError, load_comparisons, load_prompts, load_sft, load_text, write_jsonl


def test_sft_and_prompts_from_jsonl_gz_parquet_and_datasets_dir(tmp_path):
    rows = [{"prompt": "a", "response": "b", "extra": 1}, {"prompt": "c", "response": "d", "extra": 2}]
    with gzip.open(tmp_path / "sft.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "sft.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "sft_ds"))
    for name in ("sft.jsonl.gz", "sft.parquet", "sft_ds"):
        got = load_sft(tmp_path / name)
        assert [(r.prompt, r.response) for r in got] == [("a", "b"), ("c", "d")]
    assert load_prompts(tmp_path / "sft.parquet") == ["a", "c"]


def test_all_comparison_formats(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": "p1", "responses": ["best", "mid", "worst"]},
        {"prompt": "p2", "chosen": "good", "rejected": "bad"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: a good one",
         "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: no"},
    ])
    got = load_comparisons(path)
    assert got[0].responses == ("best", "mid", "worst")
    assert (got[1].prompt, got[1].responses) == ("p2", ("good", "bad"))
    assert got[2].prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:"
    assert got[2].responses == (" a good one", " no")


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": "a", "response": ', r"bad\.jsonl:2: invalid JSON"),
    ('{"prompt": "a"}', r"bad\.jsonl:2: field 'response': missing"),
    ('{"prompt": "a", "response": "  "}', r"bad\.jsonl:2: field 'response': must not be empty"),
    ('{"prompt": 3, "response": "x"}', r"bad\.jsonl:2: field 'prompt': Input should be a valid string"),
    ('[1, 2]', r"bad\.jsonl:2: expected a JSON object"),
])
def test_bad_sft_lines_are_named(tmp_path, line, message):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok", "response": "ok"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        load_sft(tmp_path / "bad.jsonl")


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "p", "responses": ["only one"]}, r"c\.jsonl:1: field 'responses': List should have at least 2"),
    ({"prompt": "p", "responses": ["a", ""]}, r"c\.jsonl:1: field 'responses\.1': must not be empty"),
    ({"prompt": "p", "chosen": "a"}, r"c\.jsonl:1: field 'rejected': missing"),
    ({"chosen": "no turns", "rejected": "x\n\nAssistant: y"}, r"c\.jsonl:1: field 'chosen': no '"),
])
def test_bad_comparisons_are_named(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_comparisons(write_jsonl(tmp_path / "c.jsonl", [row]))


def test_unusable_hh_pairs_are_skipped_and_logged(tmp_path, caplog):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant:  "},
        {"chosen": "\n\nHuman: x\n\nAssistant: b", "rejected": "\n\nHuman: y\n\nAssistant: c"},
    ])
    assert len(load_comparisons(path)) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("hh.jsonl:2: skipped: an empty final" in m for m in messages)
    assert any("hh.jsonl:3: skipped: 'chosen' and 'rejected' differ" in m for m in messages)


def test_bad_parquet_row_is_named(tmp_path):
    datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": ""}]).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(DataError, match=r"p\.parquet:row 1: field 'prompt': must not be empty"):
        load_prompts(tmp_path / "p.parquet")


def test_missing_file_and_empty_text(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_sft(tmp_path / "nope.jsonl")
    (tmp_path / "t.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty text"):
        load_text(tmp_path / "t.txt")


def test_hh_rlhf_harmless_real_file(shared_data, caplog):
    got = load_comparisons(shared_data / "hh_harmless_dev.jsonl.gz")
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(got) + len(skipped) == 1800  # every record is either used or reported
    assert len(got) > 1700
    for c in got:
        assert c.prompt.endswith("\n\nAssistant:") and c.prompt.startswith("\n\nHuman:")
        assert len(c.responses) == 2 and "\n\nAssistant:" not in c.responses[0]


def test_tinyshakespeare_text(shared_data):
    assert load_text(shared_data / "tinyshakespeare.txt.gz").startswith("First Citizen:")
