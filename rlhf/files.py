"""Rows from the files people have, each with the place a user can open: "file:line" or "file:row N".

JSON Lines, a JSON array, CSV/TSV (plain or gzipped, UTF-8 with or without BOM, or UTF-16 with a
BOM) are read here with the standard library, because a bad record must be named by its line:
`datasets`' JSON and CSV builders report pyarrow errors without one, and infer one type per column
(a CSV column of digits becomes integers, an empty cell NaN). Parquet, Arrow directories written by
`save_to_disk`, directories of data files and Hub data sets go through `datasets`, rows numbered
from 0 as `datasets` and pandas number them. Every failure is a DataError naming the file.
Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path

from models.errors import InputError

TEXT_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".txt", ".gz", ".parquet", ".arrow"}
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.\[\]%:+-]+)?$")  # owner/name[:split]


def is_record_file(path: str | Path) -> bool:
    """A .jsonl or .json file, gzipped or not: records, where a file of any other name is read as plain text."""
    suffixes = Path(path).suffixes
    suffixes = suffixes[:-1] if suffixes[-1:] == [".gz"] else suffixes
    return suffixes[-1:] in ([".jsonl"], [".json"])


class DataError(InputError):
    """A user's data file is malformed; the message names file, line and field."""


def read_text(path: str | Path) -> str:
    """A text file's contents: gunzipped when gzip, decoded from UTF-8 (BOM dropped) or BOM-marked UTF-16."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a text file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: a corrupt or truncated gzip file ({e}); compress it again") from None
    elif path.suffix == ".gz":
        raise DataError(f"{path}: named .gz but not gzip-compressed; rename it or compress it")
    if raw[:4] == b"PAR1":
        raise DataError(f"{path}: a Parquet file; name it .parquet")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: invalid UTF-16 at byte {e.start}; save the file as UTF-8") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        kind = "a binary file, not text" if b"\x00" in raw[:4096] else "not UTF-8 text"
        raise DataError(f"{path}:{line}: {kind} (byte 0x{raw[e.start]:02x} at offset {e.start}); save the "
                        f"file as UTF-8") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise DataError(f"{path}:{line}: a NUL byte: a binary file, not text")
    return text


def read_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(where, row) for every record of a local file, a local data-set directory, or a Hub data set."""
    name = str(path)
    path = Path(path)
    if not path.exists():
        if HUB_NAME.match(name) and path.suffix not in TEXT_SUFFIXES:
            yield from _hub_rows(name)
            return
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        yield from _dataset_dir_rows(path)
        return
    kind = path.name.removesuffix(".gz").rpartition(".")[2]
    if kind == "parquet":
        yield from _table_rows(path, lambda d: d.Dataset.from_parquet(str(path)), "Parquet")
        return
    text = read_text(path)
    if kind in ("csv", "tsv"):
        _not_json(path, text, kind)
        yield from _csv_rows(path, text, "\t" if kind == "tsv" else ",")
    elif kind == "json" and text.lstrip().startswith("["):
        yield from _json_array_rows(path, text)
    else:
        yield from _jsonl_rows(path, text)


def _not_json(path: Path, text: str, kind: str) -> None:
    """A file named .csv/.tsv whose first line is a JSON object or array is JSON, not a table of one column."""
    first = next((line.strip() for line in text.split("\n") if line.strip()), "")
    if first[:1] not in ("{", "["):
        return
    try:
        json.loads(first)
        looks = "JSON Lines (its first line is one JSON record)"
    except json.JSONDecodeError:
        if first[:1] != "[":
            return
        looks = "a JSON array"
    raise DataError(f"{path}:1: named .{kind} but holds {looks}; rename it .jsonl (or .json)")


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[str, dict]]:
    # A record ends at "\n" only: str.splitlines() would also split at U+2028, U+2029, U+0085 and other
    # separators that JSON strings may hold unescaped (common in web text)
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            hint = "; a .json file holds one JSON array of records or one record per line" \
                if line_no == 1 and line.lstrip().startswith("{") and not line.rstrip().endswith("}") else ""
            raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno}){hint}") from None
        yield _object(path, line_no, row)


def _json_array_rows(path: Path, text: str) -> Iterator[tuple[str, dict]]:
    """The records of `[{...}, {...}]`, each named by the line it starts on."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, text.index("[") + 1).end()
    if text[pos:pos + 1] == "]":
        return
    while True:
        line = text.count("\n", 0, pos) + 1
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        yield _object(path, line, row)
        pos = ws.match(text, pos).end()
        sep = text[pos:pos + 1]
        if sep == "]":
            return
        if sep != ",":
            where = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}:{where}: invalid JSON (expected ',' or ']' between records)")
        pos = ws.match(text, pos + 1).end()


def _object(path: Path, line: int, row) -> tuple[str, dict]:
    if not isinstance(row, dict):
        raise DataError(f"{path}:{line}: expected a JSON object (a record with named fields), "
                        f"got {type(row).__name__}")
    return f"{path}:{line}", row


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if not header:
            return
        if len(set(header)) != len(header):
            raise DataError(f"{path}:1: repeated column names in the header {header}")
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataError(f"{path}:{reader.line_num}: {len(cells)} values for {len(header)} columns "
                                f"({', '.join(header)}); quote values that contain '{delimiter}'")
            yield f"{path}:{reader.line_num}", dict(zip(header, cells, strict=True))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def _table_rows(source: str | Path, load, kind: str) -> Iterator[tuple[str, dict]]:
    import datasets

    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # it logs the error it raises; we report it once
    try:
        ds = load(datasets)
    except InputError:
        raise
    except Exception as e:  # pyarrow, fsspec and datasets raise many types for one cause: an unreadable file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{source}: not a readable {kind} ({first})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{source}: a DatasetDict without a 'train' split (has {list(ds)}); name the split "
                            f"as {source}:<split> or save one split")
        ds = ds["train"]
    for i, row in enumerate(ds):
        yield f"{source}:row {i}", row


def _dataset_dir_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """A `save_to_disk` directory, or a directory of data files that `datasets` recognises."""
    saved = any((path / name).exists() for name in ("state.json", "dataset_dict.json", "dataset_info.json"))
    if saved:
        yield from _table_rows(path, lambda d: d.load_from_disk(str(path)), "saved data set (save_to_disk)")
    else:
        yield from _table_rows(path, lambda d: d.load_dataset(str(path), split="train"), "data-set directory")


def _hub_rows(name: str) -> Iterator[tuple[str, dict]]:
    """A Hub data set, `owner/name` or `owner/name:split` (default train), where the network allows."""
    repo, _, split = name.partition(":")
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
    except OSError as e:
        raise DataError(f"{name}: not a local file, and the Hugging Face Hub is not reachable from here "
                        f"({e.strerror or e}); download the data set elsewhere and give its local path") from None
    yield from _table_rows(name, lambda d: d.load_dataset(repo, split=split or "train"), "Hub data set")
