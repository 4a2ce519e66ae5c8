"""Comparisons from the policies being trained (InstructGPT §3.3: labellers rank K outputs of the
models; "steps 2 and 3 can be iterated"): the file of K sampled responses per prompt that a person
or a labeller function ranks, the checks on what a labeller function returns, and the ranked
comparisons written from a ranking. Must not import ray, deepspeed or megatron.

The file to label has one record per prompt:
    {"id": "17", "prompt": str | [messages], "responses": [str, ...],
     "sources": [{"model": path, "step": int | null}, ...], "seed": int, "fields": {...}}
`responses` in the order shown (dealt at random among the models); `fields` are the prompt record's
other fields (a labeller function receives them as keyword lists, as reward functions do).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import math
import numbers
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rlhf.files import DataError, read_rows
from rlhf.functions import FunctionError, FunctionRef, call_with_timeout, excerpt, load_function


class PolicyShare(BaseModel):
    """A policy checkpoint and its share of the sampled responses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # an HF checkpoint directory (an SFT stage's, a PPO stage's policy/)
    share: float = Field(1.0, gt=0)  # its share of all responses (shares are normalised to sum to 1)


class SampleConfig(BaseModel):
    """`instructrl sample`: K responses per prompt to label, from one policy or several in stated shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: list[PolicyShare] = []  # who writes the responses; rounds use the current policy and the SFT one
    prompts: str | None = None  # prompts (or comparisons, whose prompts serve); None: rm.train_data's
    limit: int | None = Field(None, ge=1)  # the first this many prompts (rounds: per round); None: all (÷ rounds)
    k: int = Field(4, ge=2)  # responses per prompt (InstructGPT: 4–9)
    max_new_tokens: int | None = Field(None, ge=1)  # None: evaluation.max_new_tokens
    temperature: float = Field(1.0, gt=0)  # sampling temperature
    seed: int = 0  # the same seed, policies and prompts write the same file
    # Rounds (run.rounds): the share of each round's responses the SFT policy writes beside the current
    # policy (InstructGPT: "most of our comparison data comes from our supervised policies").
    sft_share: float = Field(0.25, ge=0, lt=1)
    out: str | None = None  # the file to label; None: <run>/sample/to_label.jsonl


class LabellerSpec(FunctionRef):
    """A labeller function: fn(prompts, responses, **fields) -> per prompt K scores (higher is better)
    or a ranking (indices of its K responses, best first), as `returns` says."""

    returns: Literal["scores", "ranking"] = "scores"
    # Equal scores are no preference: "drop" keeps one of the tied responses (chosen by seed) and leaves
    # the others out of that prompt's ranking; "random" orders them at random (a coin-flip label).
    ties: Literal["drop", "random"] = "drop"


@dataclass(frozen=True)
class LabelItem:
    """One prompt of a file to label."""

    id: str
    prompt: str | tuple[dict[str, str], ...]  # the text, or a conversation ending on a user turn
    responses: tuple[str, ...]  # as shown, in the dealt order
    sources: tuple[dict, ...]  # per response: {"model": path, "step": int | None}
    seed: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # file and line

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else "\n".join(m["content"] for m in self.prompt)

    def as_record(self) -> dict:
        prompt = self.prompt if isinstance(self.prompt, str) else [dict(m) for m in self.prompt]
        return {"id": self.id, "prompt": prompt, "responses": list(self.responses),
                "sources": [dict(s) for s in self.sources], "seed": self.seed, "fields": self.fields}


def allocate(n_prompts: int, k: int, shares: list[float], seed: int) -> list[list[int]]:
    """Which policy writes each of the K responses of each prompt: the n·k responses split among the
    policies by largest remainder (each policy's count within one of its share), then dealt at random,
    so a prompt's K responses mix the policies and the order shown says nothing of who wrote them."""
    total = n_prompts * k
    quotas = [total * s / sum(shares) for s in shares]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(shares)), key=lambda i: (counts[i] - quotas[i], i))
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    slots = [m for m, c in enumerate(counts) for _ in range(c)]
    random.Random(seed).shuffle(slots)
    return [slots[i * k:(i + 1) * k] for i in range(n_prompts)]


def load_items(path: str | Path) -> list[LabelItem]:
    """A file to label, every record checked; errors name the file, line and field."""
    items, seen = [], {}
    for where, row in read_rows(path):
        def bad(field_name: str, what: str, where: str = where) -> DataError:
            return DataError(f"{where}: field '{field_name}': {what}")

        for key in ("id", "prompt", "responses"):
            if key not in row:
                raise bad(key, "missing (a file to label is written by `instructrl sample`)")
        item_id = str(row["id"])
        if item_id in seen:
            raise bad("id", f"{item_id!r} is also the id at {seen[item_id]}")
        seen[item_id] = where
        prompt = row["prompt"]
        if isinstance(prompt, list):
            if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt):
                raise bad("prompt", "a conversation is a list of {role, content} messages")
            prompt = tuple({"role": str(m.get("role")), "content": m["content"]} for m in prompt)
        elif not isinstance(prompt, str):
            raise bad("prompt", f"expected text or a list of messages, got {type(prompt).__name__}")
        responses = row["responses"]
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise bad("responses", "expected a list of K >= 2 texts")
        sources = row.get("sources") or [{"model": None, "step": None}] * len(responses)
        if not isinstance(sources, list) or len(sources) != len(responses):
            raise bad("sources", f"expected one {{model, step}} per response ({len(responses)})")
        fields = row.get("fields") or {}
        if not isinstance(fields, dict):
            raise bad("fields", "expected an object of the prompt's other fields")
        items.append(LabelItem(item_id, prompt, tuple(responses), tuple(sources), int(row.get("seed", 0)),
                               fields, where))
    if not items:
        raise DataError(f"{path}: no records to label")
    return items


def check_ranking(order, k: int) -> list[int] | None:
    """`order` as a list of K indices, best first, or None when it is not a permutation of 0..K-1."""
    if not isinstance(order, list | tuple) or len(order) != k:
        return None
    if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in order):
        return None
    return [int(i) for i in order] if sorted(int(i) for i in order) == list(range(k)) else None


def order_by_scores(scores: list[float], ties: str, rng: random.Random) -> list[int]:
    """Indices best first. Equal scores state no preference: under "drop" one of each tied group (chosen
    by `rng`) stays and the others leave the ranking; under "random" the group is shuffled."""
    groups: dict[float, list[int]] = {}
    for i, s in enumerate(scores):
        groups.setdefault(s, []).append(i)
    order = []
    for s in sorted(groups, reverse=True):
        members = groups[s]
        if ties == "drop":
            order.append(rng.choice(members))
        else:
            order += rng.sample(members, len(members))
    return order


def ranked_record(item: LabelItem, order: list[int], labeller: dict) -> dict | None:
    """A comparison in the project's ranked format (best first) from `order`, the indices of `item`'s
    responses best first; a response that repeats an earlier one's text keeps its best place only.
    None when fewer than two different responses remain (nothing to rank)."""
    kept, texts = [], set()
    for i in order:
        text = item.responses[i].strip()
        if text and text not in texts:
            texts.add(text)
            kept.append(i)
    if len(kept) < 2:
        return None
    replies = [item.responses[i] for i in kept]
    if isinstance(item.prompt, str):
        prompt, responses = item.prompt, replies
    else:
        prompt = [dict(m) for m in item.prompt]
        responses = [[{"role": "assistant", "content": r}] for r in replies]
    return {"prompt": prompt, "responses": responses, "id": item.id, "labeller": labeller,
            "sources": [item.sources[i] for i in kept]}


def pair_agreement(a: list[int], b: list[int]) -> tuple[int, int]:
    """(pairs ordered alike, pairs both rankings order) of two rankings of one prompt's responses."""
    pos_a, pos_b = {r: i for i, r in enumerate(a)}, {r: i for i, r in enumerate(b)}
    shared = [r for r in a if r in pos_b]
    alike = sum((pos_a[x] < pos_a[y]) == (pos_b[x] < pos_b[y]) for x, y in itertools.combinations(shared, 2))
    return alike, math.comb(len(shared), 2)


def function_version(fn) -> str:
    """Its `__version__` (or its module's), else the first 12 hex digits of its source file's SHA-256: a
    comparison names the labeller that made it, and which edit of it."""
    module = inspect.getmodule(fn)
    version = getattr(fn, "__version__", None) or getattr(module, "__version__", None)
    if version:
        return str(version)
    try:
        return "sha256:" + hashlib.sha256(Path(inspect.getsourcefile(fn)).read_bytes()).hexdigest()[:12]
    except (TypeError, OSError):
        return "unknown"


class Labeller:
    """A loaded labeller function with the checks every call goes through."""

    def __init__(self, spec: LabellerSpec, search_path: str | Path | None = None):
        self.spec, self.fn = spec, load_function(spec, search_path)
        self.identity = {"name": spec.function, "version": function_version(self.fn)}

    def __call__(self, items: list[LabelItem]) -> list[list[int]]:
        """Per item, its response indices best first (ties handled by spec.ties, seeded by the item)."""
        prompts = [i.prompt if isinstance(i.prompt, str) else [dict(m) for m in i.prompt] for i in items]
        responses = [list(i.responses) for i in items]
        names = list(dict.fromkeys(k for i in items for k in i.fields))
        fields = {k: [i.fields.get(k) for i in items] for k in names}
        name, n = self.spec.function, len(items)
        first = excerpt(items[0].prompt_text, items[0].responses[0])
        finished, out = call_with_timeout(self.fn, (prompts, responses), fields, self.spec.timeout_s)
        if not finished:
            raise FunctionError(f"{name} did not return within {self.spec.timeout_s:g} s on {n} prompts (first: "
                                f"{first}); make it faster or raise its timeout_s")
        if isinstance(out, BaseException):
            raise self._locate_failure(items, prompts, responses, fields, out)
        if not isinstance(out, list | tuple) or len(out) != n:
            got = f"{len(out)} values" if isinstance(out, list | tuple) else f"a {type(out).__name__}"
            raise FunctionError(f"{name} returned {got} for {n} prompts; it must return one entry per prompt "
                                f"({'K scores' if self.spec.returns == 'scores' else 'a ranking of its K responses'})")
        return [self._order(item, value) for item, value in zip(items, out, strict=True)]

    def _locate_failure(self, items, prompts, responses, fields, error: BaseException) -> FunctionError:
        """Re-run one prompt at a time to name the prompt that makes it fail."""
        for i, item in enumerate(items):
            one = {k: v[i:i + 1] for k, v in fields.items()}
            finished, out = call_with_timeout(self.fn, (prompts[i:i + 1], responses[i:i + 1]), one, self.spec.timeout_s)
            if finished and isinstance(out, BaseException):
                return FunctionError(f"{self.spec.function} raised {type(out).__name__}: {out} on prompt "
                                     f"{item.prompt_text[:200]!r} ({item.where}) with responses "
                                     f"{[r[:80] for r in item.responses]}")
        return FunctionError(f"{self.spec.function} raised {type(error).__name__}: {error} on {len(items)} prompts "
                             f"(first: {excerpt(items[0].prompt_text, items[0].responses[0])}); no single "
                             f"prompt of them fails alone")

    def _order(self, item: LabelItem, value) -> list[int]:
        k, name = len(item.responses), self.spec.function
        if self.spec.returns == "ranking":
            order = check_ranking(value, k)
            if order is None:
                raise FunctionError(f"{name} returned {value!r} for prompt {item.prompt_text[:200]!r} ({item.where}): "
                                    f"a ranking is a permutation of 0..{k - 1}, the indices of its {k} responses "
                                    f"best first")
            return order
        if not isinstance(value, list | tuple) or len(value) != k:
            raise FunctionError(f"{name} returned {value!r} for prompt {item.prompt_text[:200]!r} ({item.where}): "
                                f"expected {k} scores, one per response")
        scores = []
        for j, v in enumerate(value):
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
            if not ok or not math.isfinite(float(v)):
                raise FunctionError(f"{name} returned {v!r}, not a finite number, for "
                                    f"{excerpt(item.prompt_text, item.responses[j])} ({item.where})")
            scores.append(float(v))
        return order_by_scores(scores, self.spec.ties, random.Random(f"{item.seed}:{item.id}"))


def label_items(labeller: Labeller, items: list[LabelItem], batch_size: int = 64) -> tuple[list[dict], list[str]]:
    """Ranked comparisons of `items` by a labeller function, and the ids of items left out (fewer than two
    different responses after ties and repeats: nothing to rank)."""
    records, left_out = [], []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        for item, order in zip(chunk, labeller(chunk), strict=True):
            record = ranked_record(item, order, labeller.identity)
            if record is None:
                left_out.append(item.id)
            else:
                records.append(record)
    return records, left_out
