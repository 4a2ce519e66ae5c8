"""InstructGPT step 2: the reward model, trained on K-way rankings with the pairwise ranking loss.

Why a prompt's K responses are one batch element (Ouyang et al. 2022, §3.5): the C(K, 2) pairs of one
prompt are highly correlated. Shuffled into the data set as independent pairs, each response would
be seen in K-1 separate gradient steps per epoch, and the reward model overfits within one epoch.
Kept together, each response is forwarded once per batch and all its pairs share that forward
pass: one forward per response instead of K-1, and one gradient step per ranking.
Must not import ray: `group` is any worker group with map/broadcast.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from parallel.engine import EngineConfig, OptimConfig
from parallel.mesh import GroupSpec
from rlhf.algo.ranking import length_bias
from rlhf.batching import Encoded, count_steps, encode_response
from rlhf.data import Comparison
from rlhf.early_stopping import EarlyStopping
from rlhf.epochs import Loop, decay_span, train_epochs
from rlhf.labelling import LabellerSpec
from rlhf.workers import RewardModelWorker

LogFn = Callable[[dict[str, float], int], None]
STATS_FILE = "reward_stats.json"
VALIDATION = "validation"  # <rm>/validation: the second reward model (RMConfig.validation)
ENSEMBLE = "ensemble"  # <rm>/ensemble/<k>: the ensemble's further members (RMConfig.ensemble)
log = logging.getLogger("instructrl")


class RMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_data: str | None = None  # None: the embedded task's ranked comparisons
    eval_data: str | None = None  # held-out comparisons; None: the last 5% of train_data
    init: str | None = None  # HF checkpoint to start from; None: the SFT model of this run (§3.5)
    max_len: int = Field(64, ge=2)  # tokens per prompt + response
    batch_size: int = Field(16, ge=1)  # prompts (rankings) per step, each with all its K responses
    # At most this many passes over the rankings. InstructGPT trains its RM a single epoch because more
    # over-fits; here the held-out pair accuracy at each epoch's end stops training (`patience`) and
    # picks the epoch kept, so a task whose RM needs more epochs gets them and one that over-fits stops.
    epochs: int = Field(20, ge=1)
    patience: int | None = Field(2, ge=1)  # epochs in a row without a better held-out accuracy; null: all epochs
    # Never stop before this many epochs (at most `epochs`); the best epoch is still the one kept. null: not
    # before the learning rate's cosine has ended (`decay_epochs`; all `epochs` without it). An accuracy
    # measured while the rate is still high is noisy, and two epochs of it without a new best stopped 40 of
    # the suite's 54 reward models mid-schedule: sorting's worst draw after epoch 6 (kept epoch 4, 0.915;
    # PPO against it 38% of the gap), which trained to the cosine's end kept epoch 8 (0.928; PPO 49%), and on
    # the nine tasks no task lost more than a point (docs/results.md, "A reward model that finishes its
    # schedule"). Earlier, a floor of 5 had kept arithmetic's reward model of seed 1 from stopping after 3 on a
    # chance peak of its first plateau (PPO against it: 18% of the gap, then 81%).
    min_epochs: int | None = Field(None, ge=1)
    keep_best: bool = True  # export the epoch of the best held-out accuracy; false: the last epoch's
    # The learning rate's cosine decay spans this many epochs (at most `epochs`) and then stays at its floor
    # (optim.min_lr_ratio), so the upper bound on epochs does not stretch the schedule; null: all `epochs`. A
    # cosine over a bound of 20 kept the rate high for longer, and patience stopped arithmetic's reward
    # model after three epochs at 0.651 held-out accuracy (0.859 under 10); docs/results.md, seventh round.
    decay_epochs: int | None = Field(10, ge=1)
    eval_every: int = Field(50, ge=1)  # steps between held-out evaluations (besides each epoch's end)
    # Weight of the off-prompt pairs' loss beside the ranking loss: in each batch, every ranking's best response
    # against another ranking's best response put after this one's prompt (RRM, Liu et al. 2024). Rankings of
    # replies to one prompt never show a reply that ignores it, so a reward model can score what replies share
    # (a polite frame, a mood) and not whether they answer; PPO then finds that. 0: the ranking loss alone.
    # Either way the held-out evaluation reports eval/off_prompt_accuracy, how often the reward model ranks
    # them right.
    off_prompt_weight: float = Field(0.0, ge=0.0)
    seed: int = 0  # shuffling seed
    # Reward models trained on the same rankings, each from its own seeds (run.seed + k, seed + k for member k):
    # the first is <rm> itself, the others <rm>/ensemble/<k>. PPO trains against all of them together
    # (ppo.reward_ensemble: by default the worst case, Coste et al. 2023), so that a response one member
    # over-rates earns only what the others grant it. Each member costs the stage one more training.
    ensemble: int = Field(1, ge=1)
    # Also train a second reward model on the same rankings from the next seeds (run.seed + ensemble,
    # seed + ensemble: run.seed + 1, seed + 1 without an ensemble) into <rm>/validation. PPO never trains
    # against it; ppo.export judges the held-out evaluations with it, since the reward model PPO optimises
    # over-rates what PPO found (docs/ppo.md, "Which policy is exported"; on
    # #27's notes task it took the export from 32% to 57% of the gap, and on the suite's keywords task, seed 0,
    # from 0.998 to 0.993: not the default, docs/results.md). It doubles the stage's training time.
    validation: bool = False
    # Who ranks the samples of each round (`instructrl pipeline`, run.rounds): a function "file.py:fn" or
    # {function, returns: scores|ranking, ties: drop|random, timeout_s}, or "human" (the labelling page:
    # the run stops after writing the file to label and goes on with run.resume=true). None: rm.train_data.
    labeller: LabellerSpec | Literal["human"] | None = None
    # The reward model of rounds after the first: "fresh" from rm.init (the SFT model) on every comparison
    # so far, or "continue" from the previous round's, on the same comparisons.
    rounds_init: Literal["fresh", "continue"] = "fresh"
    optim: OptimConfig = OptimConfig(lr=1e-4, warmup_steps=10, weight_decay=0.0)  # optimizer and schedule
    engine: EngineConfig = EngineConfig()  # ZeRO stage, offload, precision
    group: GroupSpec = GroupSpec()  # ranks, TP, placement

    @property
    def floor_epochs(self) -> int:
        """The epochs the stage runs whatever its patience: `min_epochs`, else the cosine's, at most `epochs`."""
        return min(self.min_epochs, self.epochs) if self.min_epochs else decay_span(self)


def total_steps(n_rankings: int, cfg: RMConfig) -> int:
    return count_steps(n_rankings, cfg.batch_size, cfg.optim.grad_accum, cfg.epochs)



def encode_rankings(tok, comparisons: list[Comparison], max_len: int) -> list[list[Encoded]]:
    return [[encode_response(tok, c, r, max_len) for r in c.responses] for c in comparisons]


def evaluate_rm(group, rankings: list[list[Encoded]], pad_id: int, batch_size: int,
                max_len: int = 0) -> tuple[dict, torch.Tensor]:
    """Held-out ranking loss, pair accuracy, mean margin, and the rewards of every response; with a
    max_len, also the off-prompt pairs' accuracy (off_prompt_examples, fitted to max_len)."""
    sums = {"loss_sum": 0.0, "accuracy_sum": 0.0, "margin_sum": 0.0, "prompts": 0.0, "off_prompt_correct": 0.0,
            "off_prompt_pairs": 0.0}
    rewards = []
    for i in range(0, len(rankings), batch_size):
        out = group.map(RewardModelWorker.rm_eval, rankings[i:i + batch_size], pad_id, max_len).get()
        for k in sums:
            sums[k] += out[k]  # averages over ranks: ratios of sums stay exact
        rewards.append(out["rewards"])
    r = torch.cat(rewards)
    n = sums["prompts"]
    lengths = torch.tensor([len(e.response) for g in rankings for e in g])
    bias = length_bias(r, lengths, [len(g) for g in rankings])
    off = {"eval/off_prompt_accuracy": sums["off_prompt_correct"] / sums["off_prompt_pairs"]} \
        if sums["off_prompt_pairs"] else {}
    return {**off, "eval/loss": sums["loss_sum"] / n, "eval/accuracy": sums["accuracy_sum"] / n,
            "eval/margin": sums["margin_sum"] / n, "eval/reward_mean": float(r.mean()),
            "eval/reward_std": float(r.std()),
            **{f"eval/length/{k}": v for k, v in bias.items() if k != "pairs"}}, r


def train_reward_model(group, tok, train: list[Comparison], evals: list[Comparison], cfg: RMConfig,
                       out_dir: str | Path, log: LogFn, max_bad_steps: int = 3) -> dict:
    """Train the reward group's model until its held-out pair accuracy stops improving (or cfg.epochs);
    writes the kept epoch's HF sequence-classification checkpoint with reward_stats.json (mean and std
    of its held-out rewards, for PPO's reward normalisation). Returns its held-out metrics and how the
    stage ended (epochs, best_epoch, kept_epoch, stop_reason)."""
    out_dir = Path(out_dir)
    train_r = encode_rankings(tok, train, cfg.max_len)
    eval_r = encode_rankings(tok, evals, cfg.max_len)

    def evaluate(step: int, epoch_end: bool) -> dict[str, float]:
        metrics = evaluate_rm(group, eval_r, tok.pad_token_id, cfg.batch_size, cfg.max_len)[0]
        log(metrics, step)
        return metrics

    def update(batch: list[list[Encoded]]) -> dict[str, float]:
        out = group.map(RewardModelWorker.rm_step, batch, tok.pad_token_id, cfg.off_prompt_weight, cfg.max_len).get()
        pairs = out.pop("off_prompt_pairs")
        correct = out.pop("off_prompt_correct")
        return out | ({"off_prompt_accuracy": correct / pairs} if pairs else {})

    evaluate(0, False)
    off_prompt = ("ranking_loss", "off_prompt_accuracy") if cfg.off_prompt_weight else ()
    loop = Loop(RewardModelWorker, update, evaluate,
                ("loss", "accuracy", "margin", "reward_mean", "lr", "grad_norm", *off_prompt), "reward-model",
                "rm.optim.lr")
    stopper = EarlyStopping("eval/accuracy", "max", cfg.patience, cfg.floor_epochs)
    outcome = train_epochs(group, train_r, cfg, stopper, out_dir, loop, log, max_bad_steps,
                           total_steps(len(train_r), cfg))
    metrics, rewards = evaluate_rm(group, eval_r, tok.pad_token_id, cfg.batch_size, cfg.max_len)  # the kept weights
    warn_length_bias(metrics)
    group.broadcast(RewardModelWorker.export, str(out_dir)).get()
    tok.save_pretrained(out_dir)
    write_reward_stats(out_dir, rewards)
    return {**metrics, **outcome.record()}


def warn_length_bias(metrics: dict[str, float], tolerance: float = 0.1) -> None:
    """A warning when the reward model prefers the longer of two held-out responses more often than
    the labels do by over `tolerance`: PPO against it will lengthen responses for their own sake."""
    rm, labels = metrics.get("eval/length/rm_prefers_longer"), metrics.get("eval/length/labels_prefer_longer")
    if rm is not None and labels is not None and rm - labels > tolerance:
        log.warning("the reward model prefers the longer of two held-out responses %.0f%% of the time, its labels "
                    "%.0f%%: it rewards length beyond the labels; watch eval/response_length in PPO",
                    100 * rm, 100 * labels)


def write_reward_stats(out_dir: Path, rewards: torch.Tensor) -> None:
    stats = {"mean": float(rewards.mean()), "std": float(rewards.std()), "n": int(rewards.numel())}
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2))


def validation_model(model_dir: str | Path | None) -> Path | None:
    """The validation reward model trained beside the reward model in `model_dir`, if there is one."""
    path = Path(model_dir) / VALIDATION if model_dir is not None else None
    return path if path is not None and (path / STATS_FILE).exists() else None


def ensemble_members(model_dir: str | Path | None) -> list[Path]:
    """The ensemble's further members trained beside the reward model in `model_dir` (<rm>/ensemble/<k>, in
    the order of k); none without an ensemble. Each is used, so one without its statistics is an error
    where they are read (launcher.stages.ensemble_of), not a member left out."""
    root = Path(model_dir) / ENSEMBLE if model_dir is not None else None
    if root is None or not root.is_dir():
        return []
    return sorted((d for d in root.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))


def read_reward_stats(model_dir: str | Path) -> dict[str, float] | None:
    path = Path(model_dir) / STATS_FILE
    return json.loads(path.read_text()) if path.exists() else None
