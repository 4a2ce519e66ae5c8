"""`instructrl` command line: one config system shared by every subcommand."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from launcher.config import ConfigError, dump_config, load_config
from launcher.reference import config_reference
from models.errors import InputError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="instructrl", description="RLHF the InstructGPT way: SFT → RM → PPO.")
    sub = p.add_subparsers(dest="command", required=True)
    help_cfg = "preset name in configs/ or a YAML file"
    for name, text in [("demo", "the pipeline on the embedded default task (config 'demo')"),
                       ("pipeline", "SFT → reward model → PPO"),
                       ("sft", "step 1: supervised fine-tuning"),
                       ("rm", "step 2: reward model on ranked comparisons"),
                       ("ppo", "step 3: PPO against the reward model"),
                       ("data", "write the embedded task's data sets as JSONL")]:
        s = sub.add_parser(name, help=text)
        s.add_argument("--config", default="demo" if name == "demo" else None, help=help_cfg)
        s.add_argument("--ray-address", default=None,
                       help="join this Ray cluster (same as run.ray_address=...; else RAY_ADDRESS, else start one)")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sft.batch_size=16")
    show = sub.add_parser("config", help="print a resolved config").add_subparsers(dest="action", required=True)
    s = show.add_parser("show", help="print the resolved config of a preset")
    s.add_argument("config", nargs="?", default=None, help=help_cfg)
    s.add_argument("overrides", nargs="*")
    show.add_parser("reference", help="print the config reference (Markdown) generated from the config tree")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "config" and args.action == "reference":
            print(config_reference(), end="")
            return 0
        overrides = list(args.overrides)
        if getattr(args, "ray_address", None):
            overrides.append(f"run.ray_address={args.ray_address}")
        cfg = load_config(args.config, overrides)
        if args.command == "config":
            print(dump_config(cfg), end="")
            return 0
        from launcher import pipeline, stages  # heavy imports only once the config is known to be valid

        if args.command in ("demo", "pipeline"):
            if args.command == "demo" and not cfg.uses_embedded_task:
                raise ConfigError("the demo runs on the embedded task; use `instructrl pipeline` for your data")
            pipeline.run_pipeline(cfg)
        elif args.command == "ppo":
            pipeline.run_ppo(cfg)
        elif args.command == "sft":
            print(stages.run_sft(cfg))
        elif args.command == "rm":
            print(stages.run_rm(cfg))
        elif args.command == "data":
            for name, path in stages.prepare_data(cfg).items():
                print(f"{name}: {path}")
    except (InputError, FileNotFoundError) as e:
        print(f"instructrl: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
