"""PPO throughput on the reference configuration (issue #5):

GPT-2-style policy, critic, reward and reference models of 4 layers, width 256, 4 heads, vocabulary
512, fp32; 32 prompts of 17-31 tokens per step; 32 new tokens at temperature 1.0; one PPO epoch of 4
minibatches; 2 CPU threads. Prints samples/s and generated tokens/s at the median step, the
phase split (generate, score, train, sync), and each phase's model FLOPs and their utilisation (MFU)
of the machine's measured fp32 matmul peak (bench/matmul_peak.py).

    python bench/ppo_throughput.py [--steps 8] [--backend local|ray] [--no-packing] [--eos-gap 4] [--ppo-epochs 4]
                                   [--schedule sync|async|colocated]

--eos-gap makes responses end early at varied lengths, as a trained policy's do (ppo_reference.boost_eos);
--no-packing scores and trains on the padded batches (engine.packing false) instead of packed rows.
--schedule async samples in a fifth group, the generator, while the policy trains (ppo.schedule); on Ray
every group gets an equal share of the --threads CPUs. --schedule colocated puts every group on the
policy's bundle and moves each role's state to host memory while another role works; it prints the
peak state bytes on the device against every role's together, and the seconds the moves took.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    ap.add_argument("--backend", choices=("local", "ray"), default="local")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recompute-every", type=int, default=1,
                    help="ppo.recompute_logprobs_every: the policy re-scores its samples every this many steps")
    ap.add_argument("--no-packing", action="store_true", help="engine.packing false for every role")
    ap.add_argument("--eos-gap", type=float, default=0.0, help="> 0: EOS logit this far above the mean")
    ap.add_argument("--estimator", choices=("gae", "grpo", "rloo", "reinforce_pp"), default="gae",
                    help="ppo.advantage_estimator; without gae no critic group runs")
    ap.add_argument("--ppo-epochs", type=int, default=1, help="ppo.ppo_epochs (the reference configuration's 1)")
    ap.add_argument("--schedule", choices=("sync", "async", "colocated"), default="sync", help="ppo.schedule")
    ap.add_argument("--samples-per-prompt", type=int, default=None,
                    help="ppo.samples_per_prompt (default: 1 with gae, 4 otherwise)")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)

    from matmul_peak import matmul_peak
    from ppo_reference import MINIBATCHES, NEW_TOKENS, ROLLOUTS, boost_eos, reference_setup

    from models.hf import read_hf_config
    from parallel.engine import EngineConfig
    from parallel.host import ModelSource
    from parallel.mesh import GroupSpec
    from rlhf.batching import encode_prompt
    from rlhf.coordinator import Roles, prompt_batch
    from rlhf.data import Prompt
    from rlhf.ppo_config import PPOConfig
    from rlhf.schedules import train_ppo
    from rlhf.scoring import RewardWorker
    from rlhf.workers import CriticWorker, PolicyWorker, ReferenceWorker

    samples = args.samples_per_prompt or (1 if args.estimator == "gae" else 4)
    ppo = PPOConfig(steps=args.steps, prompts_per_step=ROLLOUTS, max_new_tokens=NEW_TOKENS, max_prompt_len=31,
                    temperature=1.0, ppo_epochs=args.ppo_epochs, minibatches=MINIBATCHES, normalize_scores=False,
                    eval_every=10**9,
                    recompute_logprobs_every=args.recompute_every, advantage_estimator=args.estimator,
                    samples_per_prompt=samples, score_baseline="none", critic_warmup_steps=0, missing_eos_score=None,
                    schedule=args.schedule)
    with tempfile.TemporaryDirectory() as tmp:
        tok, texts, lm_dir, rm_dir = reference_setup(tmp)
        if args.eos_gap:
            boost_eos(lm_dir, tok, texts, args.eos_gap)
        engine = EngineConfig(packing=not args.no_packing)
        prompts = [Prompt(t) for t in texts]
        model = read_hf_config(lm_dir)
        widths = [len(encode_prompt(tok, t, ppo.max_prompt_len)) for t in texts]
        lm, rm = ModelSource(path=str(lm_dir)), ModelSource(path=str(rm_dir))
        n_updates = args.steps * ppo.minibatches
        specs = {"policy": (PolicyWorker, (lm, engine, ppo.policy.optim, n_updates, 8)),
                 "reference": (ReferenceWorker, (lm, engine)),
                 "critic": (CriticWorker, (rm, engine, ppo.critic.optim, n_updates, 8)),
                 "reward": (RewardWorker, (rm, engine))}
        if not ppo.uses_critic:
            del specs["critic"]
        if ppo.schedule == "async":
            specs["generator"] = (PolicyWorker, (lm, engine))
        logged: dict[int, dict] = {}
        if args.backend == "local":
            from launcher.worker_group import LocalGroup

            roles = Roles(**{"critic": None, **{r: LocalGroup(cls, *a) for r, (cls, a) in specs.items()}})
            train_ppo(roles, tok, prompts, ppo, lambda m, s: logged.__setitem__(s, m), None, lambda s: None,
                      lambda s, st: None)
        else:
            from launcher.cluster import init_ray, shutdown_ray
            from launcher.pipeline import colocated
            from launcher.worker_group import build_groups, shutdown_groups

            init_ray(num_cpus=args.threads)
            # an equal share of the CPUs, and of the one GPU where there is one
            spec = GroupSpec(ranks=1, cpus_per_rank=args.threads / len(specs),
                             gpus_per_rank=1 / len(specs) if torch.cuda.is_available() else 0.0)
            layout = {r: (cls, spec, a, {}) for r, (cls, a) in specs.items()}
            groups = build_groups(colocated(layout) if ppo.schedule == "colocated" else layout)
            try:
                train_ppo(Roles(**{"critic": None, **groups}), tok, prompts, ppo,
                          lambda m, s: logged.__setitem__(s, m), None, lambda s: None, lambda s, st: None)
            finally:
                shutdown_groups(groups)
                shutdown_ray()
    steps = [logged[s] for s in sorted(logged)][args.warmup:]
    by_speed = sorted(steps, key=lambda m: m["perf/samples_per_s"])
    median = by_speed[len(by_speed) // 2]
    step = next(s for s in sorted(logged) if logged[s] is median) - 1
    n = ROLLOUTS // ppo.samples_per_prompt
    width = max(widths[i] for i in prompt_batch(len(texts), step, n, ppo.seed, ppo.samples_per_prompt))
    flops = phase_flops(model, ROLLOUTS, width, NEW_TOKENS, ppo.ppo_epochs, step % args.recompute_every == 0,
                        ppo.uses_critic)
    # The yardstick of the dtype the engines train in: fp32 on CPU, bf16 on a GPU (precision "auto").
    peak = matmul_peak(torch.bfloat16, "cuda", sizes=(4096, 8192)) if torch.cuda.is_available() else matmul_peak()
    phases = ("generate", "score", "train", "sync")
    total = sum(median[f"time/{p}"] for p in phases)
    print(f"backend={args.backend} threads={args.threads} steps={len(steps)} (after {args.warmup} warm-up) "
          f"packing={not args.no_packing} eos_gap={args.eos_gap} estimator={args.estimator} "
          f"samples_per_prompt={ppo.samples_per_prompt} recompute_every={args.recompute_every} "
          f"schedule={ppo.schedule}")
    print(f"median step: {median['perf/samples_per_s']:.2f} samples/s, {median['perf/tokens_per_s']:.1f} "
          f"generated tokens/s, {total:.2f} s/step, {median['response/length']:.1f} tokens/response")
    print("phase split: " + ", ".join(f"{p} {median[f'time/{p}']:.2f} s ({100 * median[f'time/{p}'] / total:.0f}%)"
                                      for p in phases))
    if ppo.schedule == "colocated":
        mib = lambda k: median[k] / 2**20  # noqa: E731
        print(f"state on the shared device: peak {mib('memory/device_peak_bytes'):.1f} MiB (one role at a time), "
              f"every role's together {mib('memory/all_roles_bytes'):.1f} MiB, the largest role's "
              f"{mib('memory/largest_role_bytes'):.1f} MiB; moving state {median['time/moves']:.3f} s/step "
              f"(the driver waited {median['time/moves_wait']:.3f} s, the ranks' queued work included)"
              + (f"; allocated peak {mib('memory/device_allocated_peak_bytes'):.1f} MiB"
                 if "memory/device_allocated_peak_bytes" in median else ""))
    print(f"samples/s over all measured steps: mean {statistics.mean(m['perf/samples_per_s'] for m in steps):.2f}")
    print(f"matmul peak ({'bf16 GPU' if torch.cuda.is_available() else f'fp32, {args.threads} threads'}): "
          f"{peak / 1e9:.1f} GFLOP/s; model FLOPs and MFU per phase "
          f"(prompt width {width}, {NEW_TOKENS} new tokens):")
    mfu = {}
    for p, f in flops.items():
        rate = f / median[f"time/{p}"]
        mfu[p] = rate / peak
        print(f"  {p:<8} {f / 1e9:7.2f} GFLOP  {rate / 1e9:6.1f} GFLOP/s  MFU {100 * rate / peak:4.0f}%")
    # One line for scripts (bench/targets.py).
    memory = {k.removeprefix("memory/"): v for k, v in median.items() if k.startswith("memory/")}
    moves = {"memory": memory, "moves_s": median["time/moves"], "moves_wait_s": median["time/moves_wait"]} \
        if memory else {}
    print("RESULT " + json.dumps({"samples_per_s": median["perf/samples_per_s"], "mfu": mfu, "peak": peak, **moves}))
    return 0


def phase_flops(model, rollouts: int, width: int, new_tokens: int, epochs: int, recomputed: bool = True,
                critic: bool = True) -> dict[str, float]:
    """Model FLOPs of one PPO step's phases (ModelConfig.forward_flops; a backward is 2 forwards):
    generation is a prefill of the prompts and one token per row per decoding step against the
    growing KV cache (the LM head on the last position only); scoring is four full forwards (policy
    and reference with the LM head on every position, critic and reward with a scalar head); training
    is forward + backward of policy and critic on every rollout, `epochs` times. Without `recomputed`
    the policy's scoring forward is skipped (ppo.recompute_logprobs_every); without `critic` (a
    critic-free estimator) the critic's forward and update are."""
    B, P, R = rollouts, width, new_tokens
    T = P + R
    generate = model.forward_flops(B * P, P, B) + sum(model.forward_flops(B, P + t, B) for t in range(1, R))
    lm, score = model.forward_flops(B * T, T, B * T), model.forward_flops(B * T, T, 0)
    return {"generate": generate, "score": (1 + recomputed) * lm + (1 + critic) * score,
            "train": 3 * epochs * (lm + critic * score)}


if __name__ == "__main__":
    sys.exit(main())
