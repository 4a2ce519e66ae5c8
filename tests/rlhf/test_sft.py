"""SFT: the loss covers response tokens only (checked against a per-token loop); training improves it."""

from __future__ import annotations

import math

import torch

from launcher.worker_group import LocalGroup
from models.config import ModelConfig
from models.tokenizer import build_word_tokenizer
from parallel.host import ModelSource
from rlhf.batching import Encoded, collate_lm, encode_pair
from rlhf.data import load_sft
from rlhf.logprobs import sft_loss
from rlhf.sft import SFTConfig, evaluate_nll, total_steps, train_sft
from rlhf.task import WORDS, EmbeddedTask, TaskConfig
from rlhf.workers import PolicyWorker


def test_loss_is_response_only_mean_nll():
    examples = [Encoded([5, 6, 7], [8, 9, 1], False), Encoded([5], [6, 1], False)]
    batch = collate_lm(examples, pad_id=0)
    logits = torch.randn(2, batch.input_ids.shape[1], 12)
    loss, n = sft_loss(logits, batch)
    # naive: for each example, predict each response token from the position before it
    terms = []
    for b, e in enumerate(examples):
        start = len(e.prompt)
        for t in range(start, start + len(e.response)):
            terms.append(-logits[b, t - 1].log_softmax(-1)[batch.input_ids[b, t]])
    assert int(n) == len(terms) == 5
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    # changing prompt tokens' *targets* cannot matter: only logits at response-predicting steps do
    logits2 = logits.clone()
    logits2[0, 2:, :] = logits[0, 2:, :]  # the prediction of prompt token 2 from position 1 …
    logits2[0, 0, :] += 5.0  # … and of prompt token 1 from position 0 are outside the loss
    torch.testing.assert_close(sft_loss(logits2, batch)[0], loss)


def test_encode_pair_truncates_prompt_from_the_left():
    tok = build_word_tokenizer(WORDS)
    e = encode_pair(tok, "copy : 1 2 3 4 5 =", "1 2 3 4 5", max_len=9)
    assert e.truncated and len(e.prompt) + len(e.response) == 9
    assert tok.decode(e.prompt) == "4 5 =" and e.response[-1] == tok.eos_token_id


def test_sft_improves_held_out_loss(tmp_path):
    tok = build_word_tokenizer(WORDS)
    files = EmbeddedTask(TaskConfig(n_sft=1200, n_eval=50)).write(tmp_path / "data")
    train, evals = load_sft(files["sft_train"]), load_sft(files["sft_eval"])
    cfg = ModelConfig(vocab_size=len(tok), max_seq_len=32, d_model=64, n_layers=2, n_heads=4)
    sft_cfg = SFTConfig(max_len=32, batch_size=16, epochs=3, eval_every=1000)
    group = LocalGroup(PolicyWorker, ModelSource(config=cfg), sft_cfg.engine, sft_cfg.optim,
                       total_steps(len(train), sft_cfg))
    encoded = [encode_pair(tok, r.prompt, r.response, 32) for r in evals]
    before = evaluate_nll(group, encoded, tok.pad_token_id, 64)["eval/loss"]
    logged = []
    after = train_sft(group, tok, train, evals, sft_cfg, tmp_path / "out", lambda m, s: logged.append((s, m)))
    assert after["eval/loss"] < 0.5 * before, (before, after)
    assert math.isclose(after["eval/perplexity"], math.exp(after["eval/loss"]), rel_tol=1e-9)
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "tokenizer.json").exists()
    assert any("train/loss" in m for _, m in logged)
