"""Loaders on every file format and on bad input; the HH-RLHF loader on the real shared file."""

from __future__ import annotations

import csv
import gzip
import json

import datasets
import pytest

from rlhf.data import DataConfig, DataError, load_comparisons, load_prompts, load_sft, load_text, write_jsonl

ROWS = [{"prompt": "a", "response": "b", "extra": 1}, {"prompt": "c", "response": "d", "extra": 2}]


def write_formats(tmp_path, rows) -> list:
    """The same records as JSONL(.gz), a JSON array, CSV, TSV, Parquet, a save_to_disk directory and a
    directory of data files."""
    with gzip.open(tmp_path / "r.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "r.json").write_text(json.dumps(rows, indent=2))
    for name, delimiter in (("r.csv", ","), ("r.tsv", "\t")):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
            w.writeheader()
            w.writerows(rows)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "r.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    write_jsonl(tmp_path / "files" / "train.jsonl", rows)
    return ["r.jsonl.gz", "r.json", "r.csv", "r.tsv", "r.parquet", "saved", "files"]


def test_every_format_reads_the_same_records(tmp_path):
    for name in write_formats(tmp_path, ROWS):
        got = load_sft(tmp_path / name)
        assert [(r.prompt, r.response) for r in got] == [("a", "b"), ("c", "d")], name
        prompts = load_prompts(tmp_path / name)
        assert [p.text for p in prompts] == ["a", "c"], name
        # every other field travels with the prompt (CSV keeps text: the function parses it)
        assert [p.fields["extra"] for p in prompts] in ([1, 2], ["1", "2"]), name
        assert prompts[0].fields["response"] == "b"


def test_field_mapping_and_errors_in_the_users_names(tmp_path):
    keys = DataConfig(prompt_key="question", response_key="answer", chosen_key="good", rejected_key="bad")
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a", "id": 7}])
    assert [(r.prompt, r.response) for r in load_sft(path, keys)] == [("q", "a")]
    assert load_prompts(path, keys)[0].fields == {"answer": "a", "id": 7}
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "good": "x", "bad": "y"}])
    assert load_comparisons(pairs, keys)[0].responses == ("x", "y")
    with pytest.raises(DataError, match=r"m2\.jsonl:1: field 'answer': missing"):
        load_sft(write_jsonl(tmp_path / "m2.jsonl", [{"question": "q", "response": "a"}]), keys)
    with pytest.raises(DataError, match=r"p2\.jsonl:1: field 'bad': the same text as chosen"):
        load_comparisons(write_jsonl(tmp_path / "p2.jsonl", [{"question": "q", "good": "x", "bad": "x "}]), keys)


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
    ({"prompt": "p", "responses": ["a", "b", "a"]},
     r"c\.jsonl:1: field 'responses\.2': the same text as responses\.0; a ranking orders different responses"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, r"c\.jsonl:1: field 'rejected': the same text as chosen"),
])
def test_bad_comparisons_are_named(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_comparisons(write_jsonl(tmp_path / "c.jsonl", [row]))


def _gzip_truncated(tmp_path):
    data = gzip.compress(("\n".join(json.dumps(r) for r in ROWS * 200)).encode())
    (tmp_path / "f.jsonl.gz").write_bytes(data[: len(data) // 2])


# Each bad file, written by a function of tmp_path, and the start of its error (file name first).
BAD_FILES = {
    "invalid UTF-8": (lambda t: (t / "f.jsonl").write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff"}\n'),
                      r"f\.jsonl:2: not UTF-8 text \(byte 0xff"),
    "invalid UTF-16": (lambda t: (t / "f.jsonl").write_bytes(b"\xff\xfe" + '{"p'.encode("utf-16-le") + b"\x00\xd8"),
                       r"f\.jsonl: invalid UTF-16"),
    "binary": (lambda t: (t / "f.jsonl").write_bytes(bytes(range(256)) * 4), r"f\.jsonl:\d+: a binary file, not text"),
    "NUL bytes": (lambda t: (t / "f.jsonl").write_bytes(b'{"prompt": "a"}\n\x00\x00\n'), r"f\.jsonl:2: a NUL byte"),
    "truncated gzip": (_gzip_truncated, r"f\.jsonl\.gz: a corrupt or truncated gzip file"),
    "corrupt gzip": (lambda t: (t / "f.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage-garbage"),
                     r"f\.jsonl\.gz: a corrupt or truncated gzip file"),
    "not gzip": (lambda t: (t / "f.jsonl.gz").write_text('{"prompt": "a"}\n'), r"f\.jsonl\.gz: named \.gz but not"),
    "corrupt parquet": (lambda t: (t / "f.parquet").write_bytes(b"PAR1 this is not parquet"),
                        r"f\.parquet: not a readable Parquet"),
    "parquet named jsonl": (lambda t: datasets.Dataset.from_list(ROWS).to_parquet(str(t / "f.jsonl")),
                            r"f\.jsonl: a Parquet file; name it \.parquet"),
    "empty file": (lambda t: (t / "f.jsonl").write_text(""), r"f\.jsonl: no records \(an empty or blank file\)"),
    "blank file": (lambda t: (t / "f.jsonl").write_text("\n  \n\n"), r"f\.jsonl: no records"),
    "empty JSON array": (lambda t: (t / "f.json").write_text("[ ]"), r"f\.json: no records"),
    "bad JSON array": (lambda t: (t / "f.json").write_text('[\n {"prompt": "a"},\n {"prompt": }\n]'),
                       r"f\.json:3: invalid JSON"),
    "JSON array of lists": (lambda t: (t / "f.json").write_text('[\n {"prompt": "a"},\n ["b"]\n]'),
                            r"f\.json:3: expected a JSON object"),
    "JSON Lines named .csv": (lambda t: write_jsonl(t / "f.csv", ROWS),
                              r"f\.csv:1: named \.csv but holds JSON Lines .*; rename it \.jsonl"),
    "JSON array named .tsv": (lambda t: (t / "f.tsv").write_text(json.dumps(ROWS, indent=1)),
                              r"f\.tsv:1: named \.tsv but holds a JSON array"),
    "CSV row too long": (lambda t: (t / "f.csv").write_text("prompt,answer\na,1\nb,2,3\n"),
                         r"f\.csv:3: 3 values for 2 columns"),
    "CSV repeated header": (lambda t: (t / "f.csv").write_text("prompt,prompt\na,b\n"), r"f\.csv:1: repeated column"),
    "CSV empty prompt": (lambda t: (t / "f.csv").write_text("prompt,answer\n,1\n"),
                         r"f\.csv:2: field 'prompt': must not be empty"),
    "a directory": (lambda t: (t / "f.jsonl").mkdir(), r"f\.jsonl: not a readable data-set directory"),
    "missing": (lambda t: None, r"f\.jsonl: no such file or directory"),
    "reserved field": (lambda t: write_jsonl(t / "f.jsonl", [{"prompt": "a", "responses": "x"}]),
                       r"f\.jsonl:1: field 'responses' has the name of a reward function's own argument"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_get_one_clear_error(tmp_path, case):
    make, message = BAD_FILES[case]
    make(tmp_path)
    path = next(iter(sorted(tmp_path.iterdir())), tmp_path / "f.jsonl")
    with pytest.raises(DataError, match=message):
        load_prompts(path)


def test_a_record_ends_at_a_newline_only(tmp_path):
    """Web text holds U+2028/U+2029 (and U+0085) unescaped inside JSON strings; JSON Lines ends a record
    at "\\n" alone, so such a record is one record, its text intact, and the next keeps its line number."""
    text = "one\u2028two\u2029three\x85four\x1cfive"
    (tmp_path / "w.jsonl").write_text(json.dumps({"prompt": text, "response": "b"}, ensure_ascii=False) + "\r\n"
                                      + '{"prompt": "c", "response": ""}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"w\.jsonl:2: field 'response': must not be empty"):
        load_sft(tmp_path / "w.jsonl")
    (tmp_path / "w.jsonl").write_text(json.dumps({"prompt": text, "response": "b"}, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    assert [r.prompt for r in load_sft(tmp_path / "w.jsonl")] == [text]


def test_utf16_and_bom_files_are_read(tmp_path):
    text = '{"prompt": "ä", "response": "b"}\n'
    (tmp_path / "u16.jsonl").write_bytes(text.encode("utf-16"))  # with its BOM
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    for name in ("u16.jsonl", "bom.jsonl"):
        assert load_sft(tmp_path / name)[0].prompt == "ä"


def test_a_hub_name_without_network_fails_at_once(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DataError, match=r"someone/data:test: not a local file, and the Hugging Face Hub is not "
                                        r"reachable"):
        load_prompts("someone/data:test")


def test_unusable_hh_pairs_are_skipped_and_logged(tmp_path, caplog):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant:  "},
        {"chosen": "\n\nHuman: x\n\nAssistant: b", "rejected": "\n\nHuman: y\n\nAssistant: c"},
        {"chosen": "\n\nHuman: a\n\nAssistant: same", "rejected": "\n\nHuman: a\n\nAssistant: same"},
    ])
    assert len(load_comparisons(path)) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("hh.jsonl:2: skipped: an empty final" in m for m in messages)
    assert any("hh.jsonl:3: skipped: 'chosen' and 'rejected' differ" in m for m in messages)
    assert any("hh.jsonl:4: skipped: 'chosen' and 'rejected' end in the same" in m for m in messages)


def test_bad_parquet_row_is_named(tmp_path):
    datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": ""}]).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(DataError, match=r"p\.parquet:row 1: field 'prompt': must not be empty"):
        load_prompts(tmp_path / "p.parquet")


def test_pretraining_text(tmp_path):
    (tmp_path / "t.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty text"):
        load_text(tmp_path / "t.txt")
    (tmp_path / "short.txt").write_text("hi")
    with pytest.raises(DataError, match=r"short\.txt: only 2 characters of text; the pretraining mix needs at least 9"):
        load_text(tmp_path / "short.txt", min_chars=9)
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match=r"dir: is a directory; expected a text file"):
        load_text(tmp_path / "dir")


def test_hh_rlhf_harmless_real_file(shared_data, caplog):
    prompts = load_prompts(shared_data / "hh_harmless_dev.jsonl.gz")  # each pair's dialogue so far
    assert len(prompts) == 1800 and all(p.text.endswith("\n\nAssistant:") for p in prompts)
    assert all("\n\nHuman:" in p.text and not p.fields for p in prompts)
    got = load_comparisons(shared_data / "hh_harmless_dev.jsonl.gz")
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(got) + len(skipped) == 1800  # every record is either used or reported
    assert len(got) > 1700
    for c in got:
        assert c.prompt.endswith("\n\nAssistant:") and c.prompt.startswith("\n\nHuman:")
        assert len(c.responses) == 2 and "\n\nAssistant:" not in c.responses[0]


def test_hh_rlhf_dialogues_as_conversations(shared_data, caplog):
    """Under data.chat_template the chosen dialogues are conversations: every record used or reported,
    most of several turns, and the text of every turn kept (speaker labels aside)."""
    import re

    got = load_sft(shared_data / "hh_harmless_dev.jsonl.gz", DataConfig(chat_template=True))
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(got) + len(skipped) == 1800 and len(got) > 1780
    assert sum(len(r.messages) >= 4 for r in got) > 900
    with gzip.open(shared_data / "hh_harmless_dev.jsonl.gz", "rt") as f:
        rows = {json.loads(line)["chosen"] for line in f}
    words = lambda text: re.sub(r"\s+|Human:|Assistant:", "", text)  # noqa: E731
    texts = {words(t) for t in rows}
    assert all(words("".join(m["content"] for m in r.messages)) in texts for r in got)
    pairs = load_comparisons(shared_data / "hh_harmless_dev.jsonl.gz", DataConfig(chat_template=True))
    prompts = load_prompts(shared_data / "hh_harmless_dev.jsonl.gz", DataConfig(chat_template=True))
    assert len(pairs) > 1780 and len(prompts) > 1790
    assert all(c.context[-1]["role"] == "user" and c.responses[0] == c.responses[0].strip() for c in pairs)
    assert all(p.judged[-1]["role"] == "user" for p in prompts)


def test_tinyshakespeare_text(shared_data):
    assert load_text(shared_data / "tinyshakespeare.txt.gz").startswith("First Citizen:")
