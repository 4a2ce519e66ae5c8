"""Conversations: chat records checked turn by turn, HH-RLHF transcripts split into turns, and a
conversation rendered by a chat template into tokens with the assistant turns marked for the loss.

A conversation is a list of {"role", "content"} messages, as data sets on the Hub write them. The
text a model reads is exactly what transformers' `apply_chat_template` renders (the tokenizer's own
template, or DEFAULT_TEMPLATE for a fresh model). Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

from jinja2 import TemplateError

from models.errors import InputError
from rlhf.files import DataError

ROLES = ("system", "user", "assistant")
# The named default for fresh models (the tokenizers instructrl trains): one marker token per role, and
# the tokenizer's EOS ends every turn, so a sampled reply stops where its turn ends.
DEFAULT_TEMPLATE_NAME = "instructrl"
ROLE_TOKENS = tuple(f"<|{role}|>" for role in ROLES)
DEFAULT_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
                    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")

Message = dict[str, str]
log = logging.getLogger(__name__)


def check_messages(where: str, field: str, value) -> tuple[Message, ...]:
    """The conversation in `value`, checked: a non-empty list of messages, each a known role with text,
    a system message first if at all, and user and assistant turns alternating from a user turn."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}': expected a conversation, a non-empty list of "
                        f"{{\"role\", \"content\"}} messages; got {_kind(value)}")
    out: list[Message] = []
    for i, m in enumerate(value):
        at = f"{where}: field '{field}.{i}"
        if not isinstance(m, dict):
            raise DataError(f"{at}': expected a message {{\"role\", \"content\"}}; got {_kind(m)}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"{at}.role': {'missing' if role is None else repr(role)}; a role is one of "
                            f"{', '.join(ROLES)}")
        if not isinstance(content, str):
            got = "missing" if content is None else f"expected text, got {_kind(content)}"
            raise DataError(f"{at}.content': {got}")
        if not content.strip():
            raise DataError(f"{at}.content': empty; every turn needs text")
        if role == "system":
            if i:
                raise DataError(f"{at}.role': a system message comes first in a conversation, not at turn {i}")
            out.append({"role": role, "content": content})
            continue
        previous = out[-1]["role"] if out else "system"
        expected = "user" if previous in ("system", "assistant") else "assistant"
        if role != expected:
            raise DataError(f"{at}.role': '{role}' after {'the start' if not out else repr(previous)}; user and "
                            f"assistant turns alternate, starting with a user turn")
        out.append({"role": role, "content": content})
    return tuple(out)


def check_dialogue(where: str, field: str, messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """A demonstration: something for the assistant to learn, and nothing after its last turn."""
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: field '{field}': no assistant turn to learn; a demonstration needs at least one")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{field}.{len(messages) - 1}': the conversation ends on a "
                        f"{messages[-1]['role']} turn; a demonstration ends on the assistant's turn "
                        f"(drop the last turn, or add the reply)")
    return messages


def check_context(where: str, field: str, messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """A prompt: the conversation so far, ending on the user turn the policy answers."""
    if messages[-1]["role"] != "user":
        role = messages[-1]["role"]
        raise DataError(f"{where}: field '{field}.{len(messages) - 1}': the prompt ends on "
                        f"{'an' if role == 'assistant' else 'a'} {role} turn; a prompt ends on the user turn to answer")
    return messages


def check_reply(where: str, field: str, value) -> str:
    """A ranked reply in a chat comparison: a list holding one assistant message; its text."""
    if value is None:
        raise DataError(f"{where}: field '{field}': missing")
    if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant"):
        raise DataError(f"{where}: field '{field}': expected the reply as a list of one assistant message "
                        f"[{{\"role\": \"assistant\", \"content\": ...}}]; got {_kind(value)}"
                        + (f" of {len(value)}" if isinstance(value, list) else ""))
    content = value[0].get("content")
    if not isinstance(content, str) or not content.strip():
        raise DataError(f"{where}: field '{field}.0.content': {'empty' if isinstance(content, str) else 'not text'}; "
                        f"a reply needs text")
    return content


def split_reply(where: str, field: str, messages: tuple[Message, ...]) -> tuple[tuple[Message, ...], str]:
    """(context, the last assistant turn's text) of a whole conversation."""
    check_dialogue(where, field, messages)
    return messages[:-1], messages[-1]["content"]


def hh_messages(text: str) -> tuple[Message, ...]:
    """An Anthropic HH-RLHF transcript ("\\n\\nHuman: ... \\n\\nAssistant: ...") as its turns; an empty
    last assistant turn (the transcript's opening for the reply) is left out, and two turns of one
    speaker in a row (the public data has a few) are one turn, their texts joined by a blank line."""
    parts = re.split(r"\n\n(Human|Assistant):", text)
    roles = {"Human": "user", "Assistant": "assistant"}
    messages: list[Message] = []
    for r, c in zip(parts[1::2], parts[2::2], strict=True):
        if messages and messages[-1]["role"] == roles[r]:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{c.strip()}".strip()
        else:
            messages.append({"role": roles[r], "content": c.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return tuple(messages)


def chat_prompt(tok, prompt: str) -> str:
    """A text prompt as the chat template renders a user turn plus the assistant's opening; an HH-RLHF
    transcript becomes its turns (data.chat_template on text records)."""
    messages = hh_messages(prompt) if prompt.startswith("\n\nHuman:") else ()
    return render(tok, messages or ({"role": "user", "content": prompt},), generation_prompt=True)


def hh_context(where: str, field: str, prompt: str) -> tuple[dict[str, str], ...] | None:
    """An HH-RLHF dialogue up to its last assistant turn as a conversation ending on the user's turn;
    None (logged) where its turns do not make one."""
    try:
        return check_context(where, field, check_messages(where, field, list(hh_messages(prompt))))
    except DataError as e:
        log.warning("%s; skipped", e)
        return None


def render_prompts(tok, prompts: list) -> list:
    """Prompts with what the policy reads filled in: a conversation rendered with the generation prompt
    (text prompts as they are)."""
    return [replace(p, query=render(tok, p.messages, generation_prompt=True)) if p.messages is not None else p
            for p in prompts]


def render(tok, messages, generation_prompt: bool = False) -> str:
    """The conversation as the tokenizer's chat template writes it (transformers renders it)."""
    try:
        return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as e:
        raise InputError(f"the chat template refused a conversation ({e}); its first turn: "
                         f"{messages[0]['content'][:60]!r}") from None


def assistant_spans(tok, messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn: its text and whatever
    the template writes to end the turn (the end-of-turn token), never the generation prompt before it.
    Each span is found by rendering the conversation up to the turn with the generation prompt, and up
    to and including it; a template that does not render a conversation as the sum of its turns (one
    that rewrites earlier turns) is refused, since the loss would cover text the model never reads."""
    full = render(tok, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(tok, messages[:i], True), render(tok, messages[:i + 1])
        if not (upto.startswith(before) and full.startswith(upto)):
            raise InputError("the chat template renders a turn differently once later turns follow it, so the "
                             "assistant turns cannot be marked for the loss; use a template that renders each "
                             "turn on its own (data.chat_template)")
        spans.append((len(before), len(upto)))
    return full, spans


def turn_end(tok) -> str | None:
    """The special token the template writes right after an assistant reply's text (its end of turn),
    or None where it writes none."""
    probe = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "fine"})
    text, [(start, end)] = assistant_spans(tok, probe)
    tail = text[start:end]
    after = tail[tail.index("fine") + len("fine"):]
    ids = tok(after, add_special_tokens=False)["input_ids"] if after else []
    first = tok.convert_ids_to_tokens(ids[:1])
    return first[0] if first and first[0] in tok.all_special_tokens else None


def stop_at_turn_end(tok) -> str | None:
    """Make the template's end of turn the tokenizer's EOS, where they differ, so that a sampled reply
    stops where its turn ends (samples stop at EOS) and the saved tokenizer says so, as chat
    checkpoints do (Qwen2's base tokenizer ends text with <|endoftext|>, its template a turn with
    <|im_end|>). Returns the EOS it replaced, or None. A template that writes the EOS itself cannot be
    changed so: refused."""
    end = turn_end(tok)
    if end is None or end == tok.eos_token:
        return None
    probe = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "fine"})
    before, old = render(tok, probe), tok.eos_token
    tok.eos_token = end
    if render(tok, probe) != before:
        tok.eos_token = old
        raise InputError(f"the chat template ends an assistant turn with {end!r} and also writes the tokenizer's "
                         f"EOS {old!r}, so samples cannot stop where a turn ends; give a template that ends a turn "
                         f"with the EOS")
    return old


def encode_dialogue(tok, messages) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation (exactly `apply_chat_template(messages, tokenize=True)`'s)
    and, per token, whether the loss covers it: tokens starting inside an assistant turn."""
    text, spans = assistant_spans(tok, messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = [any(s <= start < e for s, e in spans) for start, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), trained


def transcript(messages) -> str:
    """A conversation as readable text, a turn a line ("user: ..."), for tables and logs."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _kind(value) -> str:
    return {str: "text", list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
