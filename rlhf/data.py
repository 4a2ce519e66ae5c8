"""User data formats and loaders for the three InstructGPT data sets and the pretraining mix.

Formats (one JSON object a line in .jsonl / .jsonl.gz, a row in .parquet, or a `datasets` directory
saved with `save_to_disk`):
  SFT          {"prompt": str, "response": str}
  comparisons  {"prompt": str, "responses": [best, ..., worst]}  (K >= 2, ranked)
               {"prompt": str, "chosen": str, "rejected": str}    (the K = 2 case)
               {"chosen": str, "rejected": str}                   (Anthropic HH-RLHF dialogues)
  PPO prompts  {"prompt": str}
  pretraining  plain text (.txt or .txt.gz)
A bad record raises DataError naming the file, the line (or row) and the field.
Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from models.errors import InputError

log = logging.getLogger(__name__)

HH_ASSISTANT = "\n\nAssistant:"


class DataError(InputError):
    """A user's data file is malformed; the message names file, line and field."""


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Text = Annotated[str, Field(strict=True), AfterValidator(_non_blank)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SFTRecord(_Record):
    prompt: Text
    response: Text


class RankedRecord(_Record):
    prompt: Text
    responses: list[Text] = Field(min_length=2)


class PairRecord(_Record):
    prompt: Text
    chosen: Text
    rejected: Text


class HHRecord(_Record):
    chosen: Text
    rejected: Text


class PromptRecord(_Record):
    prompt: Text


@dataclass(frozen=True)
class Comparison:
    """One prompt with K >= 2 responses ranked best first: one batch element of the ranking loss."""

    prompt: str
    responses: tuple[str, ...]


def read_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(where, row) for every record: where is "file:line" for JSONL, "file:row N" otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix == ".parquet":
        yield from _read_table(path)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{line_no}", row


def _read_table(path: Path) -> Iterator[tuple[str, dict]]:
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{path}: a DatasetDict without a 'train' split (has {list(ds)})")
            ds = ds["train"]
    else:
        ds = datasets.Dataset.from_parquet(str(path))
    for i, row in enumerate(ds):
        yield f"{path}:row {i}", row


def _validate(model: type[_Record], where: str, row: dict) -> _Record:
    try:
        return model.model_validate(row)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(record)"
        msg = "missing" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
        raise DataError(f"{where}: field '{field}': {msg}") from None


def load_sft(path: str | Path) -> list[SFTRecord]:
    """Demonstrations. A comparisons file also serves: each ranking's best response (the `chosen` one)
    becomes the demonstration, as when SFT runs on HH-RLHF's chosen dialogues."""
    out = []
    for where, row in read_rows(path):
        if "response" in row or not ({"responses", "chosen"} & set(row)):
            out.append(_validate(SFTRecord, where, row))
        else:
            c = comparison_from_row(where, row)
            if c is not None:
                out.append(SFTRecord(prompt=c.prompt, response=c.responses[0]))
    return out


def load_prompts(path: str | Path) -> list[str]:
    return [_validate(PromptRecord, where, row).prompt for where, row in read_rows(path)]


def split_hh_dialogue(text: str, where: str, field: str) -> tuple[str, str]:
    """Split an HH-RLHF dialogue after its last "\\n\\nAssistant:" into (prompt, response)."""
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(f"{where}: field '{field}': no '\\n\\nAssistant:' turn to split at")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:]


def comparison_from_row(where: str, row: dict) -> Comparison | None:
    """One record in any comparison format; None (logged) for an unusable HH-RLHF pair."""
    if "responses" in row:
        rec = _validate(RankedRecord, where, row)
        return Comparison(rec.prompt, tuple(rec.responses))
    if "prompt" in row:
        rec = _validate(PairRecord, where, row)
        return Comparison(rec.prompt, (rec.chosen, rec.rejected))
    rec = _validate(HHRecord, where, row)
    prompt, chosen = split_hh_dialogue(rec.chosen, where, "chosen")
    prompt_r, rejected = split_hh_dialogue(rec.rejected, where, "rejected")
    if prompt != prompt_r:
        log.warning("%s: skipped: 'chosen' and 'rejected' differ before the last assistant turn", where)
    elif not chosen.strip() or not rejected.strip():
        log.warning("%s: skipped: an empty final assistant turn", where)
    else:
        return Comparison(prompt, (chosen, rejected))
    return None


def load_comparisons(path: str | Path) -> list[Comparison]:
    """Any of the three comparison formats, detected per record.

    HH-RLHF pairs whose two dialogues differ before the final assistant turn (answers to different
    prompts) or whose final assistant turn is empty cannot train a ranking; the public data has a
    few of each, so they are skipped and each is logged with its line and reason.
    """
    out = [c for where, row in read_rows(path) if (c := comparison_from_row(where, row)) is not None]
    if not out:
        raise DataError(f"{path}: no usable comparisons")
    return out


def load_text(path: str | Path) -> str:
    """Plain text for the pretraining mix (PPO-ptx)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise DataError(f"{path}: empty text file")
    return text


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
