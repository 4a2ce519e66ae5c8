"""`instructrl` command line: one config system shared by every subcommand.

Every command reads and checks all its inputs (launcher/preflight.py) before it writes anything or
starts a process. A user's mistake ends as one paragraph on stderr and exit status 2; with
--verbose, workers' output and every library's log reach the terminal too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from launcher.config import ConfigError, dump_config, load_config
from launcher.reference import config_reference
from models.errors import InputError
from rlhf.reward_model import RMConfig

EXIT_AWAITING_LABELS = 3  # rm.labeller=human: a round's samples wait for people (not a failure, not a requeue)
QUIET = ("DeepSpeed", "deepspeed", "megatron", "ray", "transformers", "datasets", "wandb", "torch.distributed",
         "urllib3", "filelock", "fsspec", "matplotlib", "PIL")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="instructrl", description="RLHF the InstructGPT way: SFT → RM → PPO.")
    sub = p.add_subparsers(dest="command", required=True)
    help_cfg = "preset name in configs/ or a YAML file"
    for name, text in [("demo", "the pipeline on the embedded default task (config 'demo')"),
                       ("pipeline", "SFT → reward model → PPO (the steps the config has data for)"),
                       ("sft", "step 1: supervised fine-tuning"),
                       ("rm", "step 2: reward model on ranked comparisons"),
                       ("ppo", "step 3: PPO against the reward model and reward functions"),
                       ("dpo", "DPO (or IPO, dpo.loss=ipo) on the ranked comparisons, from the SFT model"),
                       ("check", "read and check every input of the pipeline; run nothing"),
                       ("sample", "K responses per prompt from policy checkpoints (sample.*), as a file to label"),
                       ("data", "write the embedded task's data sets as JSONL")]:
        s = sub.add_parser(name, help=text)
        s.add_argument("--config", default="demo" if name == "demo" else None, help=help_cfg)
        s.add_argument("--ray-address", default=None,
                       help="join this Ray cluster (same as run.ray_address=...; else RAY_ADDRESS, else start one)")
        s.add_argument("-v", "--verbose", action="store_true",
                       help="show every rank's output and every library's log (else: in <run>/logs/)")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sft.batch_size=16")
    lab = sub.add_parser("label", help="rank a file to label: on a local web page, or by a labeller function")
    lab.add_argument("file", help="a file written by `instructrl sample`")
    lab.add_argument("--labeller", default=None,
                       help="'file.py:fn' or 'module:fn' ranks every prompt (else: serve the labelling page)")
    lab.add_argument("--returns", choices=["scores", "ranking"], default="scores",
                       help="what the labeller function returns per prompt: K scores, or indices best first")
    lab.add_argument("--out", default=None, help="the comparisons file (default: FILE's name + .comparisons.jsonl)")
    lab.add_argument("--host", default="127.0.0.1", help="the page's address (beyond loopback only with --token)")
    lab.add_argument("--port", type=int, default=8377, help="the page's port (0: any free one)")
    lab.add_argument("--token", default=None, help="the secret every request must carry (required off loopback)")
    plan = sub.add_parser("plan", help="bytes per device of every PPO role under a layout; layouts that fit")
    plan.add_argument("--model", default="llama-7b", help="a preset (llama-1b, llama-7b, llama-70b, ...) or an HF dir")
    plan.add_argument("--zero", type=int, choices=[0, 1, 2, 3], default=3)
    plan.add_argument("--tp", type=int, default=1)
    plan.add_argument("--dp", type=int, default=8)
    plan.add_argument("--offload", action="store_true", help="optimizer state (and, at ZeRO-3, weights) on the host")
    plan.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    plan.add_argument("--seq", type=int, default=1024, help="prompt + response tokens")
    plan.add_argument("--micro-batch", type=int, default=4, help="training sequences per micro-batch per DP rank")
    plan.add_argument("--gen-batch", type=int, default=64, help="sequences generated at once per DP rank")
    plan.add_argument("--reward-models", type=int, default=RMConfig().ensemble,
                      help="reward models the reward role holds (rm.ensemble; default: its default)")
    plan.add_argument("--no-flash", action="store_true", help="attention that keeps its s × s matrix")
    plan.add_argument("--device-gb", type=float, default=80.0, help="memory of one device, GiB")
    plan.add_argument("--devices", type=int, default=None, help="list every colocated layout that fits this many")
    show = sub.add_parser("config", help="print a resolved config").add_subparsers(dest="action", required=True)
    s = show.add_parser("show", help="print the resolved config of a preset")
    s.add_argument("config", nargs="?", default=None, help=help_cfg)
    s.add_argument("overrides", nargs="*")
    show.add_parser("reference", help="print the config reference (Markdown) generated from the config tree")
    return p


def configure_logging(verbose: bool) -> None:
    """Our progress at INFO; other libraries' at WARNING unless --verbose."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:
        os.environ["INSTRUCTRL_VERBOSE"] = "1"
        logging.getLogger().setLevel(logging.DEBUG)
        return
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Megatron-core's notice that it uses its own kernels: harmless, and said once per process.
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    try:
        if args.command == "config" and args.action == "reference":
            print(config_reference(), end="")
            return 0
        if args.command == "label":
            return label(args)
        if args.command == "plan":
            from launcher.planning import run_plan

            print(run_plan(args))
            return 0
        overrides = list(args.overrides)
        if getattr(args, "ray_address", None):
            overrides.append(f"run.ray_address={args.ray_address}")
        cfg = load_config(args.config, overrides)
        if args.command == "config":
            print(dump_config(cfg), end="")
            return 0
        return run(args.command, cfg)
    except InputError as e:
        print(f"instructrl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("instructrl: interrupted", file=sys.stderr)
        return 130
    return 0


def run(command: str, cfg) -> int:
    """Run a command; its exit status: 0, or EXIT_PREEMPTED after a stop signal (the sbatch script
    requeues the job), or 1 when a worker was lost more often than run.max_restarts allows."""
    from launcher.rounds import AwaitingLabels
    from launcher.signals import EXIT_PREEMPTED, STOP
    from launcher.worker_group import WorkerLost
    from rlhf.coordinator import Preempted

    try:
        with STOP.installed():
            _run(command, cfg)
    except Preempted as e:
        print(f"instructrl: preempted: {e}. Continue with the same command and run.resume=true.", file=sys.stderr)
        return EXIT_PREEMPTED
    except WorkerLost as e:
        print(f"instructrl: error: {e}", file=sys.stderr)
        return 1
    except AwaitingLabels as e:
        print(f"instructrl: paused: {e}", file=sys.stderr)
        return EXIT_AWAITING_LABELS
    return 0


def _run(command: str, cfg) -> None:
    # Heavy imports only once the config is known to be valid.
    from launcher import pipeline, preflight, run_setup, summary
    from rlhf.task import EmbeddedTask

    if command == "rm" and cfg.rm.labeller is not None:
        raise ConfigError("rm.labeller labels the policy's samples in `instructrl pipeline` (run.rounds); for a file "
                          "to label use `instructrl label FILE --labeller fn`, then `instructrl rm` on its comparisons")
    if command == "demo" and not cfg.uses_embedded_task:
        raise ConfigError("the demo runs on the embedded task; use `instructrl pipeline` for your data")
    if command == "sample":
        from launcher.sampling import run_sample

        print(f"to label: {run_sample(cfg)}")
        return
    if command == "data":
        if not cfg.uses_embedded_task:
            raise ConfigError("`instructrl data` writes the embedded task; your config names your own files "
                              "(check them with `instructrl check`)")
        for name, path in EmbeddedTask(cfg.task).write(cfg.run.dir / "data").items():
            print(f"{name}: {path}")
        return
    stage_list = preflight.stages_of("pipeline" if command == "check" else command, cfg)
    inputs = preflight.check_inputs(cfg, stage_list)
    if command == "check":
        print(describe(cfg, inputs, stage_list))
        return
    run_setup.prepare_run(cfg, inputs, stage_list)
    if command in ("demo", "pipeline"):
        pipeline.run_pipeline(cfg, inputs, stage_list)
    elif command in ("ppo", "dpo"):
        result = pipeline.run_stage(cfg, command, inputs)
        summary.print_summary(summary.summarize(cfg, result, stage=command))
    else:
        out = pipeline.run_stage(cfg, command, inputs)
        print("\n".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in out.items()))


def label(args) -> int:
    """`instructrl label FILE`: by a labeller function, or by people on the labelling page."""
    from rlhf.data import write_jsonl
    from rlhf.labelling import Labeller, LabellerSpec, label_items, load_items

    items = load_items(args.file)
    out = Path(args.out) if args.out else Path(args.file).with_suffix(".comparisons.jsonl")
    if args.labeller is None:
        from labelpage.server import serve

        serve(args.file, items, out, host=args.host, port=args.port, token=args.token)
        return 0
    try:
        spec = LabellerSpec(function=args.labeller, returns=args.returns)
    except ValueError as e:  # pydantic's ValidationError is one
        raise InputError(f"--labeller {args.labeller}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    labeller = Labeller(spec.resolved(Path.cwd()), Path.cwd())
    records, left_out = label_items(labeller, items)
    write_jsonl(out, records)
    print(f"{len(records)} comparisons ({labeller.identity['name']}, version {labeller.identity['version']}): {out}"
          + (f"; {len(left_out)} prompts left out (fewer than two different responses after ties)" if left_out else ""))
    return 0


def describe(cfg, inputs, stage_list: tuple[str, ...]) -> str:
    """What `instructrl check` found: the steps, the data, the models, the functions."""
    lines = [f"all inputs are readable and consistent; `instructrl pipeline` would run: {' → '.join(stage_list)}"]
    if inputs.sft:
        lines.append(f"  SFT: {len(inputs.sft[0])} train / {len(inputs.sft[1])} held-out demonstrations")
    if inputs.rm:
        lines.append(f"  RM: {len(inputs.rm[0])} train / {len(inputs.rm[1])} held-out rankings")
    if inputs.label_pool:
        who = "people, on the labelling page" if cfg.rm.labeller == "human" else cfg.rm.labeller.function
        lines.append(f"  rounds: {cfg.run.rounds} × (sample {len(inputs.label_pool) // cfg.run.rounds} prompts × "
                     f"{cfg.sample.k} responses, ranked by {who}; reward model on every comparison so far; PPO "
                     f"{cfg.ppo.steps // cfg.run.rounds} steps)")
    if inputs.prompts is not None:
        fields = sorted({k for p in inputs.prompts for k in p.fields})
        held = "held-out" if cfg.ppo.eval_prompts else "held out from them for"
        lines.append(f"  PPO: {len(inputs.prompts)} prompts (fields: {', '.join(fields) or 'none'}), "
                     f"{len(inputs.eval_prompts)} {held} evaluation")
    ppo_roles = ("policy", "critic") if cfg.ppo.uses_critic else ("policy",)
    roles = {"sft": ("sft_init",), "rm": ("rm_init",), "ppo": ppo_roles, "dpo": ("dpo_init",)}
    for role in dict.fromkeys(r for stage in stage_list for r in roles[stage]):
        path = inputs.models[role]
        lines.append(f"  {role} starts from: {path or f'a fresh {cfg.model.preset!r} model'}")
    if "ppo" in stage_list:
        functions = [f"{f.function} (× {f.weight:g})" for f in cfg.ppo.reward_functions]
        reward = inputs.models["reward"]
        parts = ([f"reward model {reward} (× {cfg.ppo.reward_model_weight:g})"] if reward else []) + functions
        lines.append(f"  PPO score: {' + '.join(parts)}; advantages: {cfg.ppo.advantage_estimator}")
    if "dpo" in stage_list:
        lines.append(f"  DPO: {cfg.dpo.loss}, β = {cfg.dpo.beta:g}, against the frozen start policy")
    gold = cfg.evaluation.gold_function
    lines.append(f"  gold function: {gold.function if gold else 'none (no gold score)'}")
    source = cfg.model.tokenizer or cfg.model.pretrained or (
        f"a byte-level BPE trained on the data (model.bpe_vocab={cfg.model.bpe_vocab})" if cfg.model.bpe_vocab
        else "the embedded task's words")
    lines.append(f"  tokenizer: {source}, {len(inputs.tok)} tokens")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
