"""Packed (varlen) rows against padded batches: the PPO step's scoring and training forwards on one
fixed rollout, timed with `engine.packing` on and off.

The reference configuration's models (bench/ppo_reference.py) and 32 prompts; the responses are
sampled once from the policy with EOS made likely (ppo_reference.boost_eos, `--eos-gap`), so they
end at varied lengths as a trained policy's do (`--eos-gap 0`: nearly all run the full 32 tokens).
Then, for each setting, the median over `--repeats` of: the four scoring forwards (policy and
reference log-probs, critic values, reward) and one training pass (policy PPO step and critic value
step on the whole rollout, as one minibatch). Prints the share of padded slots that hold real
tokens, the packed rows' fill, the times and the speed-up.

    python bench/packing.py [--eos-gap 4] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch


def fixed_rollout(policy, prompts, tok):
    """One sampled rollout with every field a PPO update reads (advantages random, weights token-mean)."""
    from ppo_reference import NEW_TOKENS

    from models.generation import SamplingParams
    from rlhf.algo.ppo import loss_weights
    from rlhf.algo.rollout import Rollout
    from rlhf.workers import PolicyWorker

    gen = policy.map(PolicyWorker.generate, prompts, 31, SamplingParams(NEW_TOKENS, 1.0), tok.eos_token_id,
                     tok.pad_token_id, 0).get()
    zeros = torch.zeros_like(gen.logprobs)
    return Rollout(gen.sequences, gen.attention_mask, gen.response_mask, gen.prompt_len, old_logprobs=gen.logprobs,
                   gen_logprobs=gen.logprobs, ref_logprobs=gen.logprobs, values=zeros, returns=zeros,
                   advantages=torch.randn(zeros.shape, generator=torch.Generator().manual_seed(0)),
                   loss_weights=loss_weights(gen.response_mask, "token_mean", NEW_TOKENS))


def time_phases(groups, rollout, repeats: int) -> dict[str, float]:
    """Median seconds of the four scoring forwards and of one policy + critic update on `rollout`."""
    from rlhf.workers import CriticWorker, PolicyStep, PolicyWorker, ReferenceWorker, RewardModelWorker

    policy, reference, critic, reward = groups
    hp = PolicyStep(clip_eps=0.2, entropy_coef=0.0, ptx_coef=0.0, temperature=1.0)
    phases = {"score": [(policy, PolicyWorker.logprobs, (1.0,)), (reference, ReferenceWorker.logprobs, (1.0,)),
                        (critic, CriticWorker.values, ()), (reward, RewardModelWorker.scores, ())],
              "train": [(policy, PolicyWorker.ppo_step, (hp,)), (critic, CriticWorker.value_step, (None,))]}
    times = {phase: [] for phase in phases}
    for i in range(repeats + 1):  # the first is a warm-up
        for phase, calls in phases.items():
            start = time.perf_counter()
            for group, method, args in calls:
                batch = {"rollout": rollout, "ptx": None} if method is PolicyWorker.ppo_step else rollout
                group.map(method, batch, *args).get()
            if i:
                times[phase].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eos-gap", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    from ppo_reference import NEW_TOKENS, ROLLOUTS, boost_eos, reference_setup

    from launcher.worker_group import LocalGroup
    from models.packing import pack_rows
    from parallel.engine import EngineConfig, OptimConfig
    from parallel.host import ModelSource
    from rlhf.batching import encode_prompt
    from rlhf.workers import CriticWorker, PolicyWorker, ReferenceWorker, RewardModelWorker

    with tempfile.TemporaryDirectory() as tmp:
        tok, texts, lm_dir, rm_dir = reference_setup(tmp)
        if args.eos_gap:
            boost_eos(lm_dir, tok, texts, args.eos_gap)
        lm, rm = ModelSource(path=str(lm_dir)), ModelSource(path=str(rm_dir))
        prompts = [encode_prompt(tok, t, 31) for t in texts[:ROLLOUTS]]
        optim = OptimConfig(lr=1e-9, warmup_steps=0, min_lr_ratio=1.0)  # the weights stay (almost) put
        rollout, results = None, {}
        for packing in (True, False):
            engine = EngineConfig(packing=packing)
            groups = (LocalGroup(PolicyWorker, lm, engine, optim, 10**6, 8), LocalGroup(ReferenceWorker, lm, engine),
                      LocalGroup(CriticWorker, rm, engine, optim, 10**6, 8), LocalGroup(RewardModelWorker, rm, engine))
            rollout = rollout or fixed_rollout(groups[0], prompts, tok)
            results[packing] = time_phases(groups, rollout, args.repeats)
            for g in groups:
                g.shutdown()
        packed = pack_rows(rollout.sequences, rollout.attention_mask)
        real = int(rollout.attention_mask.sum())
        print(f"# {ROLLOUTS} rollouts, {NEW_TOKENS} new tokens, eos_gap {args.eos_gap}, {args.threads} threads, "
              f"torch {torch.__version__}")
        print(f"# mean response {float(rollout.response_mask.sum(-1).float().mean()):.1f} tokens; padded batch "
              f"{tuple(rollout.sequences.shape)} is {100 * real / rollout.sequences.numel():.0f}% real tokens; "
              f"packed {tuple(packed.input_ids.shape)}, {100 * packed.fill:.0f}% real")
        print("| phase | padded | packed | speed-up |")
        print("| --- | --- | --- | --- |")
        for phase in ("score", "train"):
            a, b = results[False][phase], results[True][phase]
            print(f"| {phase} (median of {args.repeats}) | {a:.3f} s | {b:.3f} s | {a / b:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
