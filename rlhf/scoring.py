"""The PPO reward role: what it scores (ScoreBatch: token sequences and their text, row for row) and the
worker that scores it (RewardWorker: a reward model, its ensemble members, a validation reward model and
the task's reward functions, on one rank). Must not import ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.generation import Generation
from parallel.engine import EngineConfig
from parallel.host import ModelSource
from parallel.mesh import Mesh
from rlhf.algo.ppo import ensemble_scores
from rlhf.algo.rollout import Rollout
from rlhf.batching import decode_responses
from rlhf.data import Prompt, fields_of
from rlhf.functions import FunctionSpec, TaskFunction
from rlhf.workers import RewardModelWorker


@dataclass
class ScoreBatch:
    """What the reward role scores: the token sequences (for the reward model) and their text (for the
    reward functions), row for row. Split by data-parallel rank like any batch."""

    rollout: Rollout  # sequences, masks
    prompts: list  # (B,) each row's prompt as in the data file (a conversation: its messages)
    responses: list[str]  # (B,) each row's decoded response, without EOS
    fields: dict[str, list] = field(default_factory=dict)  # name → (B,) the prompt records' other fields

    def select(self, index: torch.Tensor) -> ScoreBatch:
        """Rows `index` of every field."""
        pick = [int(i) for i in index]
        rows = lambda values: [values[i] for i in pick] if values else values  # noqa: E731 (no texts: empty)
        return ScoreBatch(self.rollout.select(index), rows(self.prompts), rows(self.responses),
                          {k: rows(v) for k, v in self.fields.items()})

    @classmethod
    def of(cls, tok, gen: Generation, prompts: list[Prompt], with_text: bool = True) -> ScoreBatch:
        """From sampled responses to `prompts` (one per row); with_text=False leaves the texts out (no
        reward function to read them: the reward model reads tokens)."""
        r = Rollout(gen.sequences, gen.attention_mask, gen.response_mask, gen.prompt_len, gen_logprobs=gen.logprobs)
        if not with_text:
            return cls(r, [], [])
        return cls(r, [p.judged for p in prompts], decode_responses(tok, gen.responses, gen.response_mask),
                   fields_of(prompts))


class RewardWorker:
    """The PPO reward role: an optional reward model and the task's reward functions, each scoring
    every sequence; the coordinator weighs and sums the parts. Without a reward model the rank holds
    no weights and only runs the functions, on its share of the batch. The reward model's ensemble
    members, where given, score beside it, and their scores reduce to one (rlhf.algo.ppo.ensemble_scores,
    member_stats: the reward model's first). A validation reward model, where given, scores only held-out
    evaluations (validation_scores): PPO never trains against it."""

    def __init__(self, mesh: Mesh, source: ModelSource | None, engine: EngineConfig,
                 functions: tuple[FunctionSpec, ...] = (), search_path: str | None = None,
                 validation: ModelSource | None = None, members: list[ModelSource] = (),
                 member_stats: list[dict[str, float]] = (), reduce: str = "min"):
        self.mesh = mesh
        self.rm = RewardModelWorker(mesh, source, engine) if source is not None else None
        self.members = [RewardModelWorker(mesh, m, engine) for m in members]
        self.member_stats, self.reduce = list(member_stats), reduce
        self.validation = RewardModelWorker(mesh, validation, engine) if validation is not None else None
        self.functions = [TaskFunction(spec, search_path) for spec in functions]

    def _move(self, how: str) -> dict:
        """Every model of the rank moved (to_host / to_device): the bytes and seconds summed."""
        moved = [getattr(m, how)() for m in (self.rm, *self.members, self.validation) if m is not None]
        return {"bytes": sum(m["bytes"] for m in moved), "seconds": sum(m["seconds"] for m in moved),
                "allocated": moved[-1]["allocated"] if moved else None}

    def to_host(self) -> dict:
        return self._move("to_host")

    def to_device(self) -> dict:
        return self._move("to_device")

    def validation_scores(self, batch: ScoreBatch) -> torch.Tensor:
        """The validation reward model's raw scores (B,), read as the reward model's are."""
        return self.validation.scores(batch.rollout)

    def scores(self, batch: ScoreBatch) -> dict[str, torch.Tensor]:
        """{"rm": (B,), "<function name>": (B,), ...}: every component of the score, unweighted."""
        out = {}
        if self.rm is not None:
            out["rm"] = self.rm.scores(batch.rollout)
            if self.members:
                every = torch.stack([out["rm"], *(m.scores(batch.rollout) for m in self.members)])
                out["rm"] = ensemble_scores(every, self.member_stats, self.reduce)
        for fn in self.functions:
            out[fn.name] = torch.tensor(fn(batch.prompts, batch.responses, batch.fields), dtype=torch.float32)
        return out

