"""SFT and the reward model stop when their held-out measure stops improving and keep the best epoch's
weights (rlhf/early_stopping.py, rlhf/epochs.py); each switch (patience, keep_best, select) is tested
against the run without it."""

from __future__ import annotations

import random

import pytest

from launcher.worker_group import LocalGroup
from models.config import ModelConfig
from models.tokenizer import build_word_tokenizer
from parallel.engine import OptimConfig
from parallel.host import ModelSource
from rlhf.data import Comparison, SFTRecord
from rlhf.early_stopping import EarlyStopping
from rlhf.epochs import BEST_STATE
from rlhf.reward_model import RMConfig, encode_rankings, evaluate_rm, train_reward_model
from rlhf.reward_model import total_steps as rm_steps
from rlhf.sft import SFTConfig, encode_all, evaluate_nll, total_steps, train_sft
from rlhf.task import WORDS
from rlhf.workers import PolicyWorker, RewardModelWorker

DIGITS = [w for w in WORDS if w.isdigit()]


def test_early_stopping_by_hand():
    s = EarlyStopping("eval/loss", "min", patience=2)
    assert [s.update(e, v) for e, v in [(1, 3.0), (2, 2.5), (3, 2.6), (4, 2.5)]] == [True, True, False, False]
    assert s.best == 2.5 and s.best_epoch == 2 and s.should_stop  # a tie is no improvement
    assert "stopped after epoch 4 of at most 9: 2 epoch(s) in a row" in s.reason(4, 9)
    s = EarlyStopping("eval/accuracy", "max", patience=None)
    for e, v in enumerate([0.6, 0.7, 0.65, 0.64, 0.63], start=1):
        s.update(e, v)
    assert not s.should_stop and s.best_epoch == 2 and s.reason(5, 5).startswith("ran all 5 epoch(s); highest")
    s = EarlyStopping("eval/loss", "min", patience=1)
    s.update(1, 2.0)
    s.update(2, 1.0)
    assert not s.should_stop  # an improvement resets the count
    s.update(3, float("nan"))
    assert s.should_stop
    s = EarlyStopping("eval/accuracy", "max", patience=2, min_epochs=5)
    for e, v in enumerate([0.71, 0.6, 0.65, 0.62], start=1):
        s.update(e, v)
        assert not s.should_stop  # a chance peak after epoch 1 does not end training before epoch 5
    s.update(5, 0.70)
    assert s.should_stop and s.best_epoch == 1 and "patience 2, at least 5 epochs" in s.reason(5, 20)


def model_cfg(tok) -> ModelConfig:
    return ModelConfig(vocab_size=len(tok), max_seq_len=24, d_model=48, n_layers=2, n_heads=4,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


def noise_demonstrations(n: int, seed: int) -> list[SFTRecord]:
    """Responses unrelated to their prompts: a model learns their word frequencies (the held-out loss
    falls) and then memorises the training set (it rises): a held-out minimum in the middle."""
    rng = random.Random(seed)
    return [SFTRecord(prompt="copy : " + " ".join(rng.choices(DIGITS, k=3)) + " =",
                      response=" ".join(rng.choices(DIGITS, k=6))) for _ in range(n)]


def run_sft(tmp_path, select_fn=None, **overrides):
    """SFT on noise demonstrations; (its result, the held-out loss at each epoch's end, the held-out loss
    of the weights the group holds after training, that of the exported checkpoint)."""
    tok = build_word_tokenizer(WORDS)
    train, evals = noise_demonstrations(48, 0), noise_demonstrations(64, 1)
    cfg = SFTConfig(**{"max_len": 16, "batch_size": 8, "epochs": 14, "eval_every": 10_000,
                       "optim": OptimConfig(lr=3e-3, warmup_steps=0, min_lr_ratio=1.0), **overrides})
    group = LocalGroup(PolicyWorker, ModelSource(config=model_cfg(tok), seed=0), cfg.engine, cfg.optim,
                       total_steps(len(train), cfg))
    logged = []
    result = train_sft(group, tok, train, evals, cfg, tmp_path / "sft", lambda m, s: logged.append((s, m)),
                       select=select_fn)
    epoch_losses = [m["eval/loss"] for s, m in logged if "eval/loss" in m and s > 0]  # eval_every: epoch ends only
    held = evaluate_nll(group, encode_all(tok, evals, 16)[0], tok.pad_token_id, 64)["eval/loss"]
    exported = LocalGroup(PolicyWorker, ModelSource(path=str(tmp_path / "sft")), cfg.engine)
    held_exported = evaluate_nll(exported, encode_all(tok, evals, 16)[0], tok.pad_token_id, 64)["eval/loss"]
    return result, epoch_losses, held, held_exported


def test_sft_stops_at_patience_and_keeps_the_best_epoch(tmp_path):
    result, losses, held, exported = run_sft(tmp_path, patience=2)
    assert len(losses) == result["epochs"] < 14  # stopped early …
    best = min(range(len(losses)), key=losses.__getitem__) + 1
    assert result["best_epoch"] == result["kept_epoch"] == best and result["epochs"] == best + 2  # … 2 epochs on
    assert losses[-1] > losses[best - 1]  # the run went past its best …
    assert held == pytest.approx(losses[best - 1], abs=1e-6)  # … and the group holds the best epoch's weights
    assert exported == pytest.approx(held, abs=1e-5) and result["eval/loss"] == pytest.approx(held, abs=1e-6)
    assert "stopped after epoch" in result["stop_reason"] and f"kept epoch {best}" in result["stop_reason"]
    assert not (tmp_path / "sft" / BEST_STATE).exists()  # the best epoch's state is gone once exported


def test_sft_runs_its_minimum_epochs_and_still_keeps_its_best(tmp_path):
    stopped, before, _, _ = run_sft(tmp_path / "a", patience=2)
    result, losses, held, _ = run_sft(tmp_path / "b", patience=2, min_epochs=stopped["epochs"] + 2)
    assert result["epochs"] == len(losses) >= stopped["epochs"] + 2 and losses[:len(before)] == pytest.approx(before)
    assert result["kept_epoch"] == min(range(len(losses)), key=losses.__getitem__) + 1  # the best, not the last
    assert held == pytest.approx(min(losses), abs=1e-6)


def test_sft_without_patience_runs_every_epoch_and_without_keep_best_keeps_the_last(tmp_path):
    result, losses, held, exported = run_sft(tmp_path, patience=None, keep_best=False)
    assert result["epochs"] == len(losses) == 14 and result["kept_epoch"] == 14
    assert min(losses) < losses[-1]  # the last epoch is not the best …
    assert held == pytest.approx(losses[-1], abs=1e-6) and exported == pytest.approx(held, abs=1e-5)  # … kept anyway


def test_sft_select_reward_keeps_the_epoch_the_reward_prefers(tmp_path):
    """sft.select=reward: the `select` score decides, not the loss (here it prefers the second epoch)."""
    calls = []

    def score(step: int) -> dict[str, float]:
        calls.append(step)
        return {"select/score": 1.0 if len(calls) == 2 else 0.0}

    result, losses, held, exported = run_sft(tmp_path, score, epochs=6, patience=3, select="reward")
    assert calls == [6, 12, 18, 24, 30] and result["epochs"] == len(losses) == 5 and result["kept_epoch"] == 2
    assert result["eval/loss"] == pytest.approx(losses[1]) and result["select/score"] == 1.0
    assert held == pytest.approx(losses[1], abs=1e-6) and exported == pytest.approx(held, abs=1e-5)


def noisy_rankings(n: int, seed: int) -> list[Comparison]:
    """Rankings by a rule (more 7s first) with half of them reversed: an RM fits the training set's noise."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = (" ".join(rng.choices(DIGITS, k=4)) for _ in range(2))
        if a == b:
            continue
        first, second = sorted((a, b), key=lambda r: -r.count("7"))
        out.append(Comparison("copy : 1 2 =", (first, second) if rng.random() < 0.6 else (second, first)))
    return out


def run_rm(tmp_path, **overrides):
    """A reward model trained on noisy rankings; (its result, the held-out accuracy at each epoch's end,
    the held-out accuracy of the weights the group holds after training)."""
    tok = build_word_tokenizer(WORDS)
    train, evals = noisy_rankings(64, 0), noisy_rankings(64, 1)
    cfg = RMConfig(**{"max_len": 16, "batch_size": 8, "epochs": 8, "eval_every": 10_000, "min_epochs": 1,
                      "optim": OptimConfig(lr=2e-3, warmup_steps=0, min_lr_ratio=1.0), **overrides})
    group = LocalGroup(RewardModelWorker, ModelSource(config=model_cfg(tok), seed=0), cfg.engine, cfg.optim,
                       rm_steps(len(train), cfg))
    logged = []
    result = train_reward_model(group, tok, train, evals, cfg, tmp_path / "rm", lambda m, s: logged.append((s, m)))
    accs = [m["eval/accuracy"] for s, m in logged if "eval/accuracy" in m and s > 0]
    held = evaluate_rm(group, encode_rankings(tok, evals, 16), tok.pad_token_id, 8)[0]["eval/accuracy"]
    return result, accs, held


@pytest.mark.parametrize("keep_best", [True, False])
def test_reward_model_keeps_its_best_held_out_accuracy(tmp_path, keep_best):
    result, accs, held = run_rm(tmp_path, patience=None, keep_best=keep_best)
    assert len(accs) == result["epochs"] == 8
    best = max(range(8), key=accs.__getitem__)
    assert accs[best] > accs[-1]  # the setting over-fits: the last epoch is not the best
    assert held == pytest.approx(accs[best] if keep_best else accs[-1])
    assert result["eval/accuracy"] == pytest.approx(held) and result["kept_epoch"] == (best + 1 if keep_best else 8)


def test_reward_model_stops_after_patience(tmp_path):
    result, accs, _ = run_rm(tmp_path, patience=1)
    assert result["epochs"] == len(accs) < 8 and accs[-1] <= max(accs[:-1])  # the first epoch without a new best
    assert all(a < b for a, b in zip(accs[:-2], accs[1:-1], strict=True))  # each before it was one


def test_reward_model_runs_its_minimum_epochs_whatever_the_patience(tmp_path):
    stopped, before, _ = run_rm(tmp_path / "a", patience=1)
    n = stopped["epochs"]
    assert n < 8
    result, accs, _ = run_rm(tmp_path / "b", patience=1, min_epochs=n + 1)
    assert result["epochs"] == len(accs) > n and accs[:n] == pytest.approx(before)  # the same run, longer


def test_reward_model_by_default_runs_until_its_cosine_has_ended(tmp_path):
    """rm.min_epochs unset: patience acts only once the learning rate's decay (rm.decay_epochs) is over."""
    stopped, before, _ = run_rm(tmp_path / "a", patience=1)
    n = stopped["epochs"]
    result, accs, _ = run_rm(tmp_path / "b", patience=1, min_epochs=None, decay_epochs=n + 2)
    assert result["epochs"] == len(accs) >= n + 2 and accs[:n] == pytest.approx(before)  # the same run, longer
    assert RMConfig().floor_epochs == 10 and RMConfig(decay_epochs=None).floor_epochs == 20
    assert RMConfig(epochs=3).floor_epochs == 3 and RMConfig(min_epochs=5).floor_epochs == 5


def test_the_decay_spans_decay_epochs_at_most_the_bound():
    from rlhf.epochs import decay_steps

    # 10 rankings in batches of 4: 3 steps an epoch
    assert decay_steps(10, RMConfig(batch_size=4)) == 3 * 10  # the default: 10 of its 20 epochs
    assert decay_steps(10, RMConfig(batch_size=4, epochs=3)) == 3 * 3  # a lower bound ends the decay with it
    assert decay_steps(10, RMConfig(batch_size=4, decay_epochs=None)) == 3 * 20
    assert decay_steps(10, SFTConfig(batch_size=4)) == 3 * 20  # SFT's spans its bound
