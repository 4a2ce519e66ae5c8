"""rm.off_prompt_weight: each ranking's best response against another ranking's best response put after
this ranking's prompt (RRM, Liu et al. 2024; rlhf.batching.off_prompt_examples), so that a reward model
learns what depends on the prompt where its rankings never show it."""

from __future__ import annotations

import random

import pytest
import torch

from launcher.worker_group import LocalGroup
from models.config import ModelConfig
from models.tokenizer import build_word_tokenizer
from parallel.engine import OptimConfig
from parallel.host import ModelSource
from rlhf.algo.ranking import ranking_loss
from rlhf.batching import Encoded, off_prompt_examples
from rlhf.data import Comparison
from rlhf.reward_model import RMConfig, encode_rankings, evaluate_rm, train_reward_model
from rlhf.reward_model import total_steps as rm_steps
from rlhf.task import WORDS
from rlhf.workers import RewardModelWorker


def enc(prompt: list[int], response: list[int]) -> Encoded:
    return Encoded(prompt, response, False)


def test_each_rankings_best_meets_the_next_rankings_best_after_its_own_prompt():
    groups = [[enc([1, 2], [10, 0]), enc([1, 2], [11, 0])],
              [enc([3], [20, 0]), enc([3], [21, 0]), enc([3], [22, 0])],
              [enc([4, 5, 6], [30, 31, 0]), enc([4, 5, 6], [32, 0])]]
    own, off = off_prompt_examples(groups, max_len=16)
    assert own == [0, 2, 5]  # each ranking's first (best) response in the flat batch of 7
    assert [(e.prompt, e.response, e.truncated) for e in off] == [
        ([1, 2], [20, 0], False), ([3], [30, 31, 0], False), ([4, 5, 6], [10, 0], False)]
    # fitted to max_len as any example: the prompt's oldest tokens go first
    assert [(e.prompt, e.response, e.truncated) for e in off_prompt_examples(groups, max_len=4)[1]][2] == \
        ([5, 6], [10, 0], True)


def test_no_pair_within_one_ranking_or_between_the_same_prompt_or_response():
    one = [[enc([1], [10, 0]), enc([1], [11, 0])]]
    assert off_prompt_examples(one, 16) == ([], [])
    same_prompt = [[enc([1], [10, 0])], [enc([1], [12, 0])], [enc([2], [12, 0])]]
    own, off = off_prompt_examples(same_prompt, 16)
    # 0 → 1: the same prompt; 1 → 2: the same response; 2 → 0 is a pair
    assert own == [2] and [(e.prompt, e.response) for e in off] == [([2], [10, 0])]


def test_the_step_adds_the_weighted_off_prompt_loss_to_the_ranking_loss():
    tok = build_word_tokenizer(WORDS)
    group = LocalGroup(RewardModelWorker, ModelSource(config=model_cfg(tok), seed=0), RMConfig().engine,
                       OptimConfig(lr=1e-3, warmup_steps=0), 10)
    groups = encode_rankings(tok, [Comparison(f"copy : {d}", (f"{d} 7", d)) for d in "123"], 16)
    worker = group._rank.worker
    with torch.no_grad():
        flat = worker._rewards(groups, tok.pad_token_id)[0]
        own, off = off_prompt_examples(groups, 16)
        off_r = worker._rewards([[e] for e in off], tok.pad_token_id)[0]
    # a naive sum: the ranking loss over each prompt's pairs, and the mean of −log σ(own − off)
    naive_ranking = torch.stack([-torch.nn.functional.logsigmoid(flat[i] - flat[i + 1]) for i in (0, 2, 4)]).mean()
    assert own == [0, 2, 4]
    pairs = list(zip(own, off_r, strict=True))
    naive_off = torch.stack([-torch.nn.functional.logsigmoid(flat[i] - o) for i, o in pairs]).mean()
    assert ranking_loss(flat, [2, 2, 2])[0] == pytest.approx(float(naive_ranking), rel=1e-5)
    out = worker.rm_step(groups, tok.pad_token_id, 0.5, 16)  # the losses before its update
    assert out["ranking_loss"] == pytest.approx(float(naive_ranking), rel=1e-4)
    assert out["loss"] == pytest.approx(float(naive_ranking + 0.5 * naive_off), rel=1e-4)
    assert out["off_prompt_pairs"] == 3
    assert out["off_prompt_correct"] == pytest.approx(float(sum(flat[i] > o for i, o in pairs)))
    assert worker.rm_step(groups, tok.pad_token_id, 0.0, 16)["off_prompt_pairs"] == 0  # off: no extra forward


def model_cfg(tok) -> ModelConfig:
    return ModelConfig(vocab_size=len(tok), max_seq_len=24, d_model=48, n_layers=2, n_heads=4,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


DIGITS = [w for w in WORDS if w.isdigit() and w != "7"]


def copy_rankings(n: int, seed: int) -> list[Comparison]:
    """"copy : 3" → "3 7 7" ranked above "3 7": both copy the right digit, and the rule ignores the prompt
    (more 7s first). Nothing in the rankings says the digit matters: a reward model that reads the
    response alone ranks them perfectly, and scores another prompt's reply ("5 7 7") as high as the right one."""
    rng = random.Random(seed)
    return [Comparison(f"copy : {d}", (f"{d} 7 7", f"{d} 7")) for d in rng.choices(DIGITS, k=n)]


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_the_reward_model_learns_the_prompt_only_with_off_prompt_pairs(tmp_path, weight):
    tok = build_word_tokenizer(WORDS)
    train, evals = copy_rankings(320, 0), copy_rankings(64, 1)
    cfg = RMConfig(max_len=16, batch_size=8, epochs=8, patience=None, keep_best=False, eval_every=10_000,
                   off_prompt_weight=weight,
                   optim=OptimConfig(lr=2e-3, warmup_steps=0, min_lr_ratio=1.0))
    group = LocalGroup(RewardModelWorker, ModelSource(config=model_cfg(tok), seed=0), cfg.engine, cfg.optim,
                       rm_steps(len(train), cfg))
    logged = []
    result = train_reward_model(group, tok, train, evals, cfg, tmp_path / "rm", lambda m, s: logged.append((s, m)))
    assert result["eval/accuracy"] > 0.9  # the rankings themselves are learnt either way
    off = evaluate_rm(group, encode_rankings(tok, evals, 16), tok.pad_token_id, 8, 16)[0]["eval/off_prompt_accuracy"]
    assert off == pytest.approx(result["eval/off_prompt_accuracy"])  # the stage reports it
    trained = [m for _, m in logged if "train/off_prompt_accuracy" in m]
    if weight:
        assert off > 0.9 and trained
    else:
        assert off < 0.75 and not trained
