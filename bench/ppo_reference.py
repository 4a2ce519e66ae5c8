"""The PPO throughput reference configuration (issue #5), one definition for both benchmarks:
`ppo_throughput.py` (ours) and `trl_ppo.py` (Hugging Face TRL) run these models and prompts.

GPT-2-style models of 4 layers, width 256, 4 heads, vocabulary 512, fp32, random weights, saved in
HF format; 4096 prompts of 17-31 words; per step 32 of them, 32 new tokens, one PPO epoch of
4 minibatches.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

ROLLOUTS, NEW_TOKENS, MINIBATCHES = 32, 32, 4


def reference_setup(directory: str | Path):
    """(tokenizer, prompt texts, policy/reference checkpoint, reward/critic checkpoint) under directory."""
    from models.config import ModelConfig
    from models.heads import CausalLM, ScoreModel
    from models.hf import save_pretrained
    from models.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer([f"w{i}" for i in range(509)])  # 3 special tokens + 509 words = 512
    assert len(tok) == 512
    cfg = ModelConfig(arch="gpt2", vocab_size=512, max_seq_len=128, d_model=256, n_layers=4, n_heads=4,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    rng = random.Random(0)
    prompts = [" ".join(f"w{rng.randrange(509)}" for _ in range(rng.randint(17, 31))) for _ in range(4096)]
    lm, rm = Path(directory) / "lm", Path(directory) / "rm"
    torch.manual_seed(0)
    save_pretrained(CausalLM(cfg), lm)
    save_pretrained(ScoreModel(cfg), rm)
    return tok, prompts, lm, rm


def boost_eos(lm_dir: str | Path, tok, texts: list[str], gap: float) -> None:
    """Make responses end early, at varied lengths, as a trained policy's do: shift the checkpoint's
    EOS embedding row (tied to the LM head) along the mean final hidden state of the prompts, so that
    EOS's logit sits about `gap` above the average logit (p(EOS) ≈ e^gap / 512 per token)."""
    from transformers import GPT2LMHeadModel

    from models.generation import collate_prompts
    from rlhf.batching import encode_prompt

    hf = GPT2LMHeadModel.from_pretrained(lm_dir).eval()
    ids, mask = collate_prompts([encode_prompt(tok, t, 31) for t in texts[:ROLLOUTS]], tok.pad_token_id)
    with torch.no_grad():
        h = hf.transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state[mask]  # (n, d)
        m = h.mean(0)
        hf.transformer.wte.weight[tok.eos_token_id] += gap * m / float((h @ m).mean())
    hf.save_pretrained(lm_dir)


def peer_args(doc: str, unit: str):
    """--steps, --warmup and --threads of a peer harness (bench/trl_*.py), parsed; the threads set and
    the peer's warnings silenced. `unit`: what one step is there."""
    import argparse
    import os
    import warnings

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help=f"{unit}s to run")
    ap.add_argument("--warmup", type=int, default=2, help=f"{unit}s left out of the measurement")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    return args
