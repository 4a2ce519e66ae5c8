"""The embedded default task: list instructions with a programmatic labeller that knows the gold answer.

A prompt reads "reverse : 3 7 1 =" and the ideal response is "1 7 3". The labeller scores any
response in [0, 1]; it ranks K candidates for the reward model (with label noise) and measures
the policy's true quality during PPO. Everything is generated from a seed: no file, no download.

Deliberate departure from InstructGPT: demonstrations are written by a *noisy* labeller (a share of
them contain one mistake), so the SFT policy is imperfect and PPO has something to fix — the role
the gap between demonstration quality and preference signal plays in the paper.
Must not import ray, deepspeed or megatron.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlhf.data import write_jsonl

OPS = ("copy", "reverse", "sort")
ITEMS = tuple(str(d) for d in range(10))
WORDS = [*OPS, ":", "=", *ITEMS]


class TaskConfig(BaseModel):
    """Sizes and noise of the generated data sets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0  # seed of the generated data sets
    ops: tuple[Literal["copy", "reverse", "sort"], ...] = OPS  # instructions the prompts draw from
    min_items: int = Field(3, ge=1)  # shortest list in a prompt
    max_items: int = Field(6, ge=1)  # longest list in a prompt
    n_sft: int = Field(4000, ge=1)  # demonstrations
    n_comparisons: int = Field(3000, ge=1)  # prompts ranked for the reward model
    n_ppo: int = Field(2000, ge=1)  # PPO prompts
    n_eval: int = Field(200, ge=1)  # held out, for each of SFT, comparisons and PPO
    k_responses: int = Field(4, ge=2)  # responses ranked per comparison prompt (K; InstructGPT used 4–9)
    demo_error_rate: float = Field(0.3, ge=0, le=1)  # share of SFT demonstrations with one mistake
    label_noise: float = Field(0.05, ge=0)  # std of Gaussian noise on the labeller's scores when ranking
    # Where the reward model's candidates come from: "policy" samples K responses per prompt from the
    # SFT policy (InstructGPT §3.3: labellers rank model outputs); "synthetic" corrupts the answer.
    rm_candidates: Literal["policy", "synthetic"] = "policy"

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if not self.ops:
            raise ValueError("ops must name at least one instruction")
        if self.min_items > self.max_items:
            raise ValueError(f"min_items={self.min_items} > max_items={self.max_items}")
        return self


def target(op: str, items: list[str]) -> list[str]:
    if op == "copy":
        return list(items)
    if op == "reverse":
        return items[::-1]
    if op == "sort":
        return sorted(items)
    raise ValueError(f"unknown op {op!r}")


def make_prompt(op: str, items: list[str]) -> str:
    return f"{op} : {' '.join(items)} ="


def parse_prompt(prompt: str) -> tuple[str, list[str]]:
    words = prompt.split()
    if len(words) < 3 or words[1] != ":" or words[-1] != "=" or words[0] not in OPS:
        raise ValueError(f"not a task prompt: {prompt!r}")
    return words[0], words[2:-1]


def gold_score(prompt: str, response: str) -> float:
    """The labeller's score: position-wise agreement with the ideal answer, in [0, 1].

    Matches at each position over the longer of response and answer, so a missing, extra or wrong
    item each costs the same share, and an empty or run-on response scores low.
    """
    op, items = parse_prompt(prompt)
    want, got = target(op, items), response.split()
    hits = sum(a == b for a, b in zip(want, got, strict=False))
    return hits / max(len(want), len(got))


def gold_scores(prompts: list[str], responses: list[str], **fields) -> list[float]:
    """The embedded task as a gold function (`evaluation.gold_function: rlhf.task:gold_scores`)."""
    return [gold_score(p, r) for p, r in zip(prompts, responses, strict=True)]


def corrupt(answer: list[str], rng: random.Random, n_edits: int) -> list[str]:
    """Apply n random edits (substitute, delete, insert, swap neighbours) — a policy's typical slips."""
    out = list(answer)
    for _ in range(n_edits):
        kind = rng.choice(("sub", "del", "ins", "swap"))
        i = rng.randrange(len(out)) if out else 0
        if kind == "sub" and out:
            out[i] = rng.choice([x for x in ITEMS if x != out[i]])
        elif kind == "del" and len(out) > 1:
            del out[i]
        elif kind == "swap" and len(out) > 1:
            j = min(i + 1, len(out) - 1) if i + 1 < len(out) else i - 1
            out[i], out[j] = out[j], out[i]
        else:
            out.insert(i, rng.choice(ITEMS))
    return out


class EmbeddedTask:
    """Deterministic generator of the three InstructGPT data sets plus held-out splits."""

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    def _prompts(self, rng: random.Random, n: int, exclude: set[str]) -> list[tuple[str, list[str]]]:
        out: list[tuple[str, list[str]]] = []
        while len(out) < n:
            op = rng.choice(self.cfg.ops)
            items = [rng.choice(ITEMS) for _ in range(rng.randint(self.cfg.min_items, self.cfg.max_items))]
            if make_prompt(op, items) not in exclude:
                out.append((op, items))
        return out

    def _demonstration(self, rng: random.Random, op: str, items: list[str]) -> str:
        answer = target(op, items)
        if rng.random() < self.cfg.demo_error_rate:
            answer = corrupt(answer, rng, 1)
        return " ".join(answer)

    def _ranked(self, rng: random.Random, op: str, items: list[str]) -> list[str]:
        """K distinct candidates from a mix of correct, slightly and badly wrong answers, ranked."""
        prompt, answer = make_prompt(op, items), target(op, items)
        candidates: set[str] = set()
        while len(candidates) < self.cfg.k_responses:
            source = rng.choice((answer, answer, target(rng.choice(OPS), items)))  # a wrong op sometimes
            candidates.add(" ".join(corrupt(source, rng, rng.choice((0, 1, 1, 2, 3)))) or items[0])
        return self.rank(prompt, sorted(candidates), rng)

    def rank(self, prompt: str, candidates: list[str], rng: random.Random) -> list[str]:
        """The simulated labeller's ranking, best first: gold score plus Gaussian label noise."""
        noisy = {c: gold_score(prompt, c) + rng.gauss(0, self.cfg.label_noise) for c in candidates}
        return sorted(noisy, key=noisy.get, reverse=True)

    def label(self, prompts: list[str], samples: list[list[str]], seed: int) -> list[dict]:
        """Ranked comparisons of model samples: distinct responses per prompt, prompts with fewer than
        two distinct responses left out (nothing to rank), at most k_responses each."""
        rng = random.Random(seed)
        rows = []
        for prompt, responses in zip(prompts, samples, strict=True):
            distinct = list(dict.fromkeys(r for r in responses if r.strip()))[: self.cfg.k_responses]
            if len(distinct) >= 2:
                rows.append({"prompt": prompt, "responses": self.rank(prompt, distinct, rng)})
        return rows

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write all data sets as JSONL under out_dir; returns their paths by name."""
        return {name: write_jsonl(Path(out_dir) / f"{name}.jsonl", rows) for name, rows in self.generate().items()}

    def generate(self) -> dict[str, list[dict]]:
        """All data sets as records, by name (sft_train, sft_eval, comparisons_train, ..., ppo_eval)."""
        cfg = self.cfg
        rng = random.Random(cfg.seed)
        # Held-out prompts first, then training prompts that avoid them.
        held_out = self._prompts(rng, 3 * cfg.n_eval, set())
        seen = {make_prompt(op, items) for op, items in held_out}
        ev_sft, ev_cmp, ev_ppo = (held_out[i * cfg.n_eval:(i + 1) * cfg.n_eval] for i in range(3))
        sft = self._prompts(rng, cfg.n_sft, seen)
        cmp = self._prompts(rng, cfg.n_comparisons, seen)
        ppo = self._prompts(rng, cfg.n_ppo, seen)

        def sft_rows(ps, noisy):
            return [{"prompt": make_prompt(op, it),
                     "response": self._demonstration(rng, op, it) if noisy else " ".join(target(op, it))}
                    for op, it in ps]

        def cmp_rows(ps):
            return [{"prompt": make_prompt(op, it), "responses": self._ranked(rng, op, it)} for op, it in ps]

        return {
            "sft_train": sft_rows(sft, True), "sft_eval": sft_rows(ev_sft, False),
            "comparisons_train": cmp_rows(cmp), "comparisons_eval": cmp_rows(ev_cmp),
            "ppo_train": [{"prompt": make_prompt(op, it)} for op, it in ppo],
            "ppo_eval": [{"prompt": make_prompt(op, it)} for op, it in ev_ppo],
        }
