"""Parameter and optimizer-state bytes per rank under ZeRO, at one and two data-parallel ranks.

A policy group (Ray, gloo, fp32 on CPU) holds the reference configuration's model
(bench/ppo_reference.py, width 256) or, with --width, a wider one; it takes one SFT step so that
Adam's moments exist, then each rank reports the bytes it holds (`PolicyWorker.describe`): its
parameters (under ZeRO-3 its partition) and its optimizer state (ZeRO's fp32 master partitions and
the Adam moments), every buffer counted once. Prints, per stage, the largest rank's bytes at DP=1
and DP=2 and their ratio. ZeRO-3 keeps parameters under `engine.param_persistence_threshold`
elements whole on every rank: DeepSpeed's default (1e5) and 0 (partition everything) are both shown.

    python bench/zero_memory.py [--width 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile


def measure(source, engine, batch, ranks: int, threads: int) -> list[dict]:
    """describe() of every rank of a `ranks`-rank policy group after one SFT step."""
    from launcher.worker_group import build_groups, shutdown_groups
    from parallel.engine import OptimConfig
    from parallel.mesh import GroupSpec
    from rlhf.workers import PolicyWorker

    spec = GroupSpec(ranks=ranks, cpus_per_rank=threads / 2)
    group = build_groups({"policy": (PolicyWorker, spec, (source, engine, OptimConfig(), 10, 1), {})})["policy"]
    try:
        group.map(PolicyWorker.sft_step, batch).get()
        return group.broadcast(PolicyWorker.describe).get()
    finally:
        shutdown_groups({"policy": group})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=256, help="d_model (4 layers, vocabulary 512)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    from ppo_reference import reference_setup

    from launcher.cluster import init_ray, shutdown_ray
    from models.config import ModelConfig
    from models.heads import CausalLM
    from models.hf import save_pretrained
    from parallel.engine import EngineConfig
    from parallel.host import ModelSource
    from rlhf.batching import Encoded, collate_lm

    with tempfile.TemporaryDirectory() as tmp:
        tok, _, lm_dir, _ = reference_setup(tmp)
        cfg = ModelConfig(arch="gpt2", vocab_size=512, max_seq_len=128, d_model=args.width, n_layers=4,
                          n_heads=max(1, args.width // 64), pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id)
        model = CausalLM(cfg)
        save_pretrained(model, lm_dir)
        params = sum(p.numel() for p in model.parameters())
        source = ModelSource(path=str(lm_dir))
        batch = collate_lm([Encoded([5, 6, 7], [8, 9, tok.eos_token_id], False)] * 4, tok.pad_token_id)
        init_ray(num_cpus=args.threads)
        rows = []
        try:
            for stage, threshold in ((0, None), (1, None), (2, None), (3, None), (3, 0)):
                engine = EngineConfig(zero_stage=stage, param_persistence_threshold=threshold)
                one, two = (measure(source, engine, batch, ranks, args.threads) for ranks in (1, 2))
                total = lambda info: max(i["param_bytes"] + i["optimizer_bytes"] for i in info)  # noqa: E731
                rows.append((stage, threshold, total(one), total(two), two[0]))
        finally:
            shutdown_ray()
    print(f"# width {args.width}, 4 layers, vocabulary 512 ({params / 1e6:.2f} M parameters), fp32, AdamW; "
          f"torch {torch.__version__}")
    print("| ZeRO stage | persistence threshold | DP=1 bytes/rank | DP=2 bytes/rank (params + optimizer) "
          "| DP=2 / DP=1 |")
    print("| --- | --- | --- | --- | --- |")
    for stage, threshold, one, two, rank0 in rows:
        label = "–" if stage < 3 else ("default (1e5)" if threshold is None else str(threshold))
        print(f"| {stage} | {label} | {one / 2**20:.1f} MiB | {two / 2**20:.1f} MiB "
              f"({rank0['param_bytes'] / 2**20:.1f} + {rank0['optimizer_bytes'] / 2**20:.1f}) | {two / one:.3f} |")
    print("RESULT " + json.dumps({"ratio": {f"zero{stage}" + ("" if threshold is None else f"_threshold{threshold}"):
                                            two / one for stage, threshold, one, two, _ in rows}}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
