"""Wall time from asking for a PPO stage's four role groups to all ranks ready, on a local Ray cluster.

Each repeat builds the policy, reference, critic and reward groups of the demo config (one rank each,
no tensor parallelism; a tiny model, so that starting, not loading, is what is timed) and shuts them
down; the cluster stays up between repeats, as it does between a run's stages. Every rank is a fresh
process: it imports torch, DeepSpeed and the workers, joins its gloo group and builds its engine.
Prints each repeat's seconds and their median.

    python bench/group_start.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from launcher.cluster import init_ray, shutdown_ray
    from launcher.config import load_config
    from launcher.pipeline import role_specs, start_roles
    from models.config import ModelConfig
    from models.heads import CausalLM, ScoreModel
    from models.hf import save_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cfg = load_config("demo", [f"run.out_dir={out}", "wandb.mode=disabled"])
        small = ModelConfig(vocab_size=32, max_seq_len=16, d_model=16, n_layers=1, n_heads=2)
        save_pretrained(CausalLM(small), out / "lm")
        save_pretrained(ScoreModel(small), out / "rm")
        models = {"policy": out / "lm", "reference": out / "lm", "reward": out / "rm", "critic": out / "rm"}
        init_ray(num_cpus=8)
        try:
            seconds = []
            for k in range(args.repeats):
                start = time.perf_counter()
                with start_roles(cfg, role_specs(cfg, models, 1)):
                    seconds.append(time.perf_counter() - start)
                print(f"repeat {k}: {seconds[-1]:.1f} s to four ready groups", flush=True)
        finally:
            shutdown_ray()
    print(f"median {statistics.median(seconds):.1f} s over {len(seconds)} repeats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
