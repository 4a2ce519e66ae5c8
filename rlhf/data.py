"""The records of the three InstructGPT data sets and the pretraining mix, and their loaders.

Records (field names are mapped by DataConfig, e.g. `data.prompt_key=question`):
  SFT          {"prompt": str, "response": str}
               {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}  (rlhf/chat.py:
               every assistant turn is learned; a file holds one kind of record or the other)
  comparisons  {"prompt": str, "responses": [best, ..., worst]}  (K >= 2, ranked, all different)
               {"prompt": str, "chosen": str, "rejected": str}    (the K = 2 case)
               {"chosen": str, "rejected": str}                   (Anthropic HH-RLHF dialogues)
  PPO prompts  {"prompt": str, ...}: every other field travels with the prompt to reward functions
               (an HH-RLHF pair also serves: its dialogue up to the last assistant turn)
  pretraining  plain text (.txt or .txt.gz)
Files: JSONL, JSON, CSV/TSV, Parquet, `datasets` directories, Hub names (rlhf/files.py). A bad record
raises DataError naming the file, the line (or row) and the field. Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlhf.chat import check_context, check_dialogue, check_messages, check_reply, hh_context, hh_messages, split_reply
from rlhf.files import DataError, read_rows, read_text

__all__ = ["DataError", "DataConfig", "Prompt", "Comparison", "SFTRecord", "load_sft", "load_comparisons",
           "load_prompts", "load_text", "write_jsonl", "split_hh_dialogue", "fields_of"]

log = logging.getLogger(__name__)

HH_ASSISTANT = "\n\nAssistant:"
RESERVED_FIELDS = ("prompts", "responses")  # the reward functions' own arguments


class DataConfig(BaseModel):
    """How records are read from user files: which field holds what, and the chat template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_key: str = "prompt"  # field with the prompt (SFT, comparisons, PPO prompts)
    response_key: str = "response"  # field with the demonstration (SFT)
    responses_key: str = "responses"  # field with the ranked responses, best first (comparisons)
    chosen_key: str = "chosen"  # field with the preferred response (pairwise comparisons, HH-RLHF)
    rejected_key: str = "rejected"  # field with the other response (pairwise comparisons, HH-RLHF)
    messages_key: str = "messages"  # field with a whole conversation (SFT chat records)
    # Wrap every prompt in the tokenizer's chat template as a user turn (an HH-RLHF transcript as
    # its turns), with the generation prompt; reward and gold functions still see the plain prompt.
    chat_template: bool = False

    def names(self) -> dict[str, str]:
        """Our field name → the user's."""
        return {"prompt": self.prompt_key, "response": self.response_key, "responses": self.responses_key,
                "chosen": self.chosen_key, "rejected": self.rejected_key, "messages": self.messages_key}


DEFAULT_KEYS = DataConfig()  # frozen: safe as a shared default


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Text = Annotated[str, Field(strict=True), AfterValidator(_non_blank)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SFTRecord(_Record):
    prompt: Text  # a conversation's: the text of its turns before the last reply, one a line
    response: Text  # a conversation's: its last reply
    # The record's other fields, by name: what a gold function reads to score the demonstration itself
    fields: dict[str, Any] = {}
    messages: tuple[dict[str, str], ...] | None = None  # a chat record's conversation (rlhf/chat.py)
    where: str = ""  # a chat record's file and line, for errors found once its template is known

    def as_prompt(self) -> Prompt:
        """The demonstration's prompt (a conversation's turns before its last reply), with its fields."""
        return Prompt(self.prompt, dict(self.fields), messages=self.messages[:-1] if self.messages else None,
                      where=self.where)


def dialogue_record(where: str, field: str, value, fields: dict) -> SFTRecord:
    """A chat record's demonstration: the whole conversation, checked."""
    messages = check_dialogue(where, field, check_messages(where, field, value))
    context, reply = split_reply(where, field, messages)
    return SFTRecord(prompt="\n".join(m["content"] for m in context), response=reply, fields=fields,
                     messages=messages, where=where)


class RankedRecord(_Record):
    prompt: Text
    responses: list[Text] = Field(min_length=2)

    @model_validator(mode="after")
    def _distinct(self) -> RankedRecord:
        seen: dict[str, int] = {}
        for i, r in enumerate(self.responses):
            if r.strip() in seen:
                raise ValueError(f"responses.{i}: the same text as responses.{seen[r.strip()]}; a ranking "
                                 f"orders different responses (remove the repeat)")
            seen[r.strip()] = i
        return self


class PairRecord(_Record):
    prompt: Text
    chosen: Text
    rejected: Text

    @model_validator(mode="after")
    def _distinct(self) -> PairRecord:
        if self.chosen.strip() == self.rejected.strip():
            raise ValueError("rejected: the same text as chosen; a pair needs two different responses")
        return self


class HHRecord(_Record):
    chosen: Text
    rejected: Text


@dataclass(frozen=True)
class Comparison:
    """One prompt with K >= 2 responses ranked best first: one batch element of the ranking loss."""

    prompt: str  # a conversation's: the text of its turns, one a line
    responses: tuple[str, ...]
    context: tuple[dict[str, str], ...] | None = None  # a chat comparison's conversation before the replies
    where: str = ""  # a chat comparison's file and line

    def as_prompt(self) -> Prompt:
        return Prompt(self.prompt, messages=self.context, where=self.where)


@dataclass(frozen=True)
class Prompt:
    """A PPO or evaluation prompt with the rest of its record."""

    text: str  # the prompt as in the file (a conversation's: the text of its turns, one a line)
    fields: dict[str, Any] = field(default_factory=dict)  # the record's other fields, by name
    query: str = ""  # what the policy reads (chat template applied); "" means `text`
    messages: tuple[dict[str, str], ...] | None = None  # a chat prompt's conversation, ending on a user turn
    where: str = ""  # a chat prompt's file and line

    @property
    def model_text(self) -> str:
        return self.query or self.text

    @property
    def judged(self) -> str | list[dict[str, str]]:
        """What reward and gold functions receive as the prompt: the text, or the conversation's messages."""
        return [dict(m) for m in self.messages] if self.messages is not None else self.text


def fields_of(prompts: list[Prompt]) -> dict[str, list]:
    """Column view of the prompts' extra fields: name → one value per prompt (None where a record lacks it)."""
    names = dict.fromkeys(k for p in prompts for k in p.fields)
    return {k: [p.fields.get(k) for p in prompts] for k in names}


def _validate(model: type[_Record], where: str, row: dict, cfg: DataConfig) -> _Record:
    """Validate a row under our field names; errors name the user's field."""
    names = cfg.names()
    ours = {k: row[v] for k, v in names.items() if v in row}
    try:
        return model.model_validate(ours)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if not loc and ": " in msg:  # a record-level check names its field first
            head, msg = msg.split(": ", 1)
            loc = head.split(".")
        if loc:
            loc[0] = names.get(loc[0], loc[0])
        field_name = ".".join(loc) or "(record)"
        msg = "missing" if err["type"] == "missing" else msg
        raise DataError(f"{where}: field '{field_name}': {msg}") from None


Source = str | Path | list[tuple[str, dict]]  # a file, or records in memory as (where, row)


def _records(source: Source, kind: str) -> list[tuple[str, dict]]:
    rows = source if isinstance(source, list) else list(read_rows(source))
    if not rows:
        raise DataError(f"{source}: no records (an empty or blank file); expected {kind}")
    return rows


def load_sft(path: Source, cfg: DataConfig = DEFAULT_KEYS) -> list[SFTRecord]:
    """Demonstrations. A comparisons file also serves: each ranking's best response (the `chosen` one)
    becomes the demonstration, as when SFT runs on HH-RLHF's chosen dialogues; with
    `data.chat_template`, an HH-RLHF dialogue is read as its turns and every assistant turn is learned."""
    out, kinds = [], RecordKinds()
    for where, row in _records(path, f"demonstrations with '{cfg.prompt_key}' and '{cfg.response_key}', or "
                                     f"conversations in '{cfg.messages_key}'"):
        fields = {k: v for k, v in row.items() if k not in cfg.names().values()}
        if cfg.messages_key in row:
            kinds.see(where, "a conversation ('" + cfg.messages_key + "')")
            out.append(dialogue_record(where, cfg.messages_key, row[cfg.messages_key], fields))
            continue
        kinds.see(where, f"a '{cfg.prompt_key}'/'{cfg.response_key}' record" if cfg.response_key in row
                  else "a comparison" if {cfg.responses_key, cfg.chosen_key} & set(row) else "a text record")
        if cfg.response_key in row or not ({cfg.responses_key, cfg.chosen_key} & set(row)):
            out.append(_validate(SFTRecord, where, row, cfg).model_copy(update={"fields": fields}))
        elif cfg.chat_template and cfg.prompt_key not in row and cfg.chosen_key in row:
            # an HH-RLHF dialogue read through a chat template: the whole chosen conversation, every
            # assistant turn a target (unusable ones skipped and logged, as for comparisons)
            try:
                text = _validate(HHRecord, where, row, cfg).chosen
                out.append(dialogue_record(where, cfg.chosen_key, list(hh_messages(text)), fields))
            except DataError as e:
                log.warning("%s; skipped", e)
        else:
            c = comparison_from_row(where, row, cfg)
            if c is not None:
                out.append(SFTRecord(prompt=c.prompt, response=c.responses[0], fields=fields))
    return out


class RecordKinds:
    """A file holds records of one kind: conversations or text. The first record sets the kind."""

    def __init__(self):
        self.first: tuple[str, bool] | None = None

    def see(self, where: str, kind: str) -> None:
        chat = kind.startswith("a conversation")
        if self.first is None:
            self.first = (where, chat)
        elif self.first[1] != chat:
            raise DataError(f"{where}: {kind}, in a file whose first record ({self.first[0]}) is "
                            f"{'a conversation' if self.first[1] else 'text'}; a file holds one kind of record "
                            f"(split it in two, or convert one kind)")


def load_prompts(path: Source, cfg: DataConfig = DEFAULT_KEYS) -> list[Prompt]:
    """Prompts, each with its record's other fields (e.g. the `answer` a reward function checks)."""
    out, kinds = [], RecordKinds()
    for where, row in _records(path, f"prompts in a '{cfg.prompt_key}' field"):
        messages = None
        if isinstance(row.get(cfg.prompt_key), list) or (cfg.prompt_key not in row and
                                                          isinstance(row.get(cfg.chosen_key), list)):
            kinds.see(where, "a conversation")
            if cfg.prompt_key in row:
                messages = check_messages(where, cfg.prompt_key, row[cfg.prompt_key])
            else:  # a comparison of whole conversations: the conversation before its replies
                messages = split_reply(where, cfg.chosen_key, check_messages(where, cfg.chosen_key,
                                                                             row[cfg.chosen_key]))[0]
            check_context(where, cfg.prompt_key if cfg.prompt_key in row else cfg.chosen_key, messages)
            prompt = "\n".join(m["content"] for m in messages)
            fields = {k: v for k, v in row.items() if k not in (cfg.prompt_key, cfg.chosen_key, cfg.rejected_key,
                                                                cfg.responses_key)}
        elif cfg.prompt_key not in row and cfg.chosen_key in row:  # an HH-RLHF pair: its dialogue so far
            kinds.see(where, "a text prompt")
            prompt = split_hh_dialogue(_validate(HHRecord, where, row, cfg).chosen, where, cfg.chosen_key)[0]
            fields = {k: v for k, v in row.items() if k not in (cfg.chosen_key, cfg.rejected_key)}
            if cfg.chat_template:  # read through a chat template: as its turns
                messages = hh_context(where, cfg.chosen_key, prompt)
                if messages is None:
                    continue
                prompt = "\n".join(m["content"] for m in messages)
        else:
            kinds.see(where, "a text prompt")
            prompt = _validate(PromptRecord, where, row, cfg).prompt
            fields = {k: v for k, v in row.items() if k != cfg.prompt_key}
        clash = [k for k in RESERVED_FIELDS if k in fields]
        if clash:
            raise DataError(f"{where}: field '{clash[0]}' has the name of a reward function's own argument "
                            f"(fn(prompts, responses, **fields)); rename the field")
        out.append(Prompt(prompt, fields, messages=messages, where=where if messages else ""))
    return out


class PromptRecord(_Record):
    prompt: Text


def split_hh_dialogue(text: str, where: str, field_name: str) -> tuple[str, str]:
    """Split an HH-RLHF dialogue after its last "\\n\\nAssistant:" into (prompt, response)."""
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(f"{where}: field '{field_name}': no '\\n\\nAssistant:' turn to split at (an HH-RLHF "
                        f"dialogue; for plain pairs give a '{'prompt'}' field too)")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:]


def is_chat_comparison(row: dict, cfg: DataConfig) -> bool:
    """A comparison of conversations: its prompt, replies or dialogues are lists of messages."""
    ranked = row.get(cfg.responses_key)
    return any(isinstance(row.get(k), list) for k in (cfg.prompt_key, cfg.chosen_key, cfg.rejected_key)) or \
        (isinstance(ranked, list) and bool(ranked) and isinstance(ranked[0], list))


def chat_comparison(where: str, row: dict, cfg: DataConfig) -> Comparison:
    """A ranking of replies to one conversation: {prompt: [messages], responses: [[reply], ...]} best
    first, {prompt, chosen: [reply], rejected: [reply]}, or {chosen, rejected} as whole conversations
    that share everything before their last reply."""
    if cfg.prompt_key in row:
        context = check_context(where, cfg.prompt_key, check_messages(where, cfg.prompt_key, row[cfg.prompt_key]))
        if cfg.responses_key in row:
            ranked = row[cfg.responses_key]
            if not isinstance(ranked, list) or len(ranked) < 2:
                raise DataError(f"{where}: field '{cfg.responses_key}': expected K >= 2 replies, best first, each a "
                                f"list of one assistant message")
            replies = [check_reply(where, f"{cfg.responses_key}.{i}", r) for i, r in enumerate(ranked)]
        else:
            replies = [check_reply(where, k, row.get(k)) for k in (cfg.chosen_key, cfg.rejected_key)]
    else:
        (context, chosen), (other, rejected) = (split_reply(where, k, check_messages(where, k, row.get(k)))
                                                for k in (cfg.chosen_key, cfg.rejected_key))
        if context != other:
            turn = next((i for i, (a, b) in enumerate(zip(context, other, strict=False)) if a != b),
                        min(len(context), len(other)))
            raise DataError(f"{where}: field '{cfg.rejected_key}.{turn}': differs from '{cfg.chosen_key}' before the "
                            f"reply; a comparison ranks replies to one conversation")
        check_context(where, cfg.chosen_key, context)
        replies = [chosen, rejected]
    for i, r in enumerate(replies):
        if r.strip() in (x.strip() for x in replies[:i]):
            raise DataError(f"{where}: reply {i + 1} has the same text as an earlier one; a ranking orders "
                            f"different replies (remove the repeat)")
    return Comparison("\n".join(m["content"] for m in context), tuple(replies), context, where)


def comparison_from_row(where: str, row: dict, cfg: DataConfig = DEFAULT_KEYS) -> Comparison | None:
    """One record in any comparison format; None (logged) for an unusable HH-RLHF pair."""
    if is_chat_comparison(row, cfg):
        return chat_comparison(where, row, cfg)
    if cfg.responses_key in row:
        rec = _validate(RankedRecord, where, row, cfg)
        return Comparison(rec.prompt, tuple(rec.responses))
    if cfg.prompt_key in row:
        rec = _validate(PairRecord, where, row, cfg)
        return Comparison(rec.prompt, (rec.chosen, rec.rejected))
    rec = _validate(HHRecord, where, row, cfg)
    prompt, chosen = split_hh_dialogue(rec.chosen, where, cfg.chosen_key)
    prompt_r, rejected = split_hh_dialogue(rec.rejected, where, cfg.rejected_key)
    if prompt != prompt_r:
        log.warning("%s: skipped: 'chosen' and 'rejected' differ before the last assistant turn", where)
    elif not chosen.strip() or not rejected.strip():
        log.warning("%s: skipped: an empty final assistant turn", where)
    elif chosen.strip() == rejected.strip():
        log.warning("%s: skipped: 'chosen' and 'rejected' end in the same assistant turn", where)
    elif cfg.chat_template:  # read through a chat template: the dialogue so far as its turns
        context = hh_context(where, cfg.chosen_key, prompt)
        if context is not None:
            return Comparison("\n".join(m["content"] for m in context), (chosen.strip(), rejected.strip()), context,
                              where)
    else:
        return Comparison(prompt, (chosen, rejected))
    return None


def load_comparisons(path: Source, cfg: DataConfig = DEFAULT_KEYS) -> list[Comparison]:
    """Any of the three comparison formats, detected per record.

    HH-RLHF pairs whose two dialogues differ before the final assistant turn (answers to different
    prompts), or whose final turns are empty or the same, cannot train a ranking; the public data has
    a few, so they are skipped and each is logged with its line and reason.
    """
    rows, kinds = _records(path, "ranked comparisons"), RecordKinds()
    for where, row in rows:
        kinds.see(where, "a conversation" if is_chat_comparison(row, cfg) else "a text comparison")
    out = [c for where, row in rows if (c := comparison_from_row(where, row, cfg)) is not None]
    if not out:
        raise DataError(f"{path}: none of its {len(rows)} records is a usable comparison (see the warnings)")
    return out


def load_text(path: str | Path, min_chars: int = 1) -> str:
    """Plain text for the pretraining mix (PPO-ptx)."""
    text = read_text(path)
    if len(text.strip()) < min_chars:
        raise DataError(f"{path}: {'empty' if not text.strip() else f'only {len(text.strip())} characters of'} "
                        f"text; the pretraining mix needs at least {min_chars}")
    return text


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """One JSON object per line, the file replaced whole (written beside it, then renamed): never half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path
