"""Sampling speed: our batched KV-cache generation against transformers' `generate`, same weights.

The reference configuration's policy (bench/ppo_reference.py: GPT-2 style, 4 layers, width 256,
vocabulary 512, fp32) loaded twice from one HF checkpoint — as `GPT2LMHeadModel` and as our
`CausalLM` — then both sample the same 32 prompts (17-31 tokens, left-padded) for 32 new tokens at
temperature 1, no top-k/top-p. Prints the median wall time of each, the generated tokens per second
and the ratio. Two cases:

- `full`: random weights, nearly every response runs the full 32 tokens;
- `early-eos`: EOS made likely (ppo_reference.boost_eos), so responses end at different steps (mean
  length printed), as a trained policy's do; here our generator drops finished rows.

Where vLLM is installed (`make vllm`), a last column times its engine (models/vllm_sampler.py, the
`ppo.rollout: vllm` path) on the same weights and prompts.

    python bench/generation.py [--repeats 7] [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch


def timed(fn, repeats: int, device: str) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def hf_generate(hf, ids, mask, tok):
    from ppo_reference import NEW_TOKENS

    torch.manual_seed(0)  # transformers samples from the global generator
    with torch.no_grad():
        return hf.generate(input_ids=ids, attention_mask=mask.long(), do_sample=True, top_k=0, temperature=1.0,
                           max_new_tokens=NEW_TOKENS, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def our_generate(model, ids, mask, tok):
    from ppo_reference import NEW_TOKENS

    from models.generation import SamplingParams, generate

    g = torch.Generator(device=ids.device).manual_seed(0)
    return generate(model, ids, mask, SamplingParams(NEW_TOKENS, 1.0), tok.eos_token_id, tok.pad_token_id, g)


def vllm_generate(sampler, prompts, tok):
    from ppo_reference import NEW_TOKENS

    from models.generation import SamplingParams

    return sampler.generate(prompts, 31, SamplingParams(NEW_TOKENS, 1.0), tok.eos_token_id, tok.pad_token_id, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--eos-gap", type=float, default=4.0, help="early-eos case: EOS logit above the mean")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    from ppo_reference import NEW_TOKENS, ROLLOUTS, boost_eos, reference_setup
    from transformers import GPT2LMHeadModel

    from models.generation import collate_prompts
    from models.hf import load_pretrained, read_hf_weights
    from models.vllm_sampler import VLLMSampler, vllm_available
    from rlhf.batching import encode_prompt

    device = torch.device(args.device)
    print(f"# {ROLLOUTS} prompts × {NEW_TOKENS} new tokens, temperature 1, {args.device}, "
          f"{args.threads} threads, torch {torch.__version__}")
    with_vllm = vllm_available() and args.device == "cpu"
    print("| case | mean response tokens | transformers generate | ours | ratio (tokens/s) |"
          + (" vLLM (ppo.rollout: vllm) |" if with_vllm else ""))
    print("| --- | --- | --- | --- | --- |" + (" --- |" if with_vllm else ""))
    with tempfile.TemporaryDirectory() as tmp:
        tok, texts, lm_dir, _ = reference_setup(tmp)
        prompts = [encode_prompt(tok, t, 31) for t in texts[:ROLLOUTS]]
        ids, mask = collate_prompts(prompts, tok.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        results = {}
        for case in ("full", "early-eos"):
            if case == "early-eos":
                boost_eos(lm_dir, tok, texts, args.eos_gap)
            hf = GPT2LMHeadModel.from_pretrained(lm_dir, attn_implementation="sdpa").to(device).eval()
            ours = load_pretrained(lm_dir).to(device).eval()

            t_hf, seqs = timed(lambda m=hf: hf_generate(m, ids, mask, tok), args.repeats, args.device)
            t_ours, out = timed(lambda m=ours: our_generate(m, ids, mask, tok), args.repeats, args.device)
            # Their response tokens: up to and including each row's first EOS.
            resp = seqs[:, ids.shape[1]:]
            after_eos = (resp == tok.eos_token_id).long().cumsum(-1) - (resp == tok.eos_token_id).long()
            hf_tokens = float((after_eos == 0).sum())
            tokens = float(out.response_mask.sum())
            row = (f"| {case} | ours {tokens / ROLLOUTS:.1f}, theirs {hf_tokens / ROLLOUTS:.1f} | "
                   f"{t_hf:.3f} s ({hf_tokens / t_hf:.0f} tok/s) | {t_ours:.3f} s ({tokens / t_ours:.0f} tok/s) | "
                   f"{(tokens / t_ours) / (hf_tokens / t_hf):.2f}× |")
            if with_vllm:
                sampler = VLLMSampler(ours.cfg, read_hf_weights(lm_dir), 0, ours.cfg.max_seq_len)
                t_vllm, v = timed(lambda s=sampler: vllm_generate(s, prompts, tok), args.repeats, args.device)
                v_tokens = float(v.response_mask.sum())
                row += f" {t_vllm:.3f} s ({v_tokens / t_vllm:.0f} tok/s, {v_tokens / ROLLOUTS:.1f} per response) |"
            print(row)
            results[case] = (tokens / t_ours) / (hf_tokens / t_hf)
    print("RESULT " + json.dumps({"ratio": results}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
