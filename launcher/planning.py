"""`instructrl plan`: the bytes per device of every PPO role under a layout (parallel/memory.py), and
whether they fit a device; or, with --devices, every colocated layout that fits."""

from __future__ import annotations

from pathlib import Path

from models.config import PRESETS, ModelConfig, preset
from models.errors import InputError
from parallel.memory import GIB, ROLES, Layout, Work, colocated_bytes, layouts_that_fit, role_bytes, turns_bytes

PARTS = ("params", "grads", "optimizer", "activations", "kv_cache", "total")


def model_shape(name: str) -> ModelConfig:
    if name in PRESETS:
        return preset(name)
    if (Path(name) / "config.json").is_file():
        from models.hf import read_hf_config

        return read_hf_config(name)
    raise InputError(f"--model {name}: neither a preset ({', '.join(sorted(PRESETS))}) nor an HF checkpoint "
                     f"directory with a config.json")


def describe_layout(layout: Layout) -> str:
    offload = " + offload" + (" (optimizer, weights)" if layout.offload_params else " (optimizer)") \
        if layout.offload_optimizer else ""
    return f"ZeRO-{layout.zero_stage}, TP {layout.tp} × DP {layout.dp}, {layout.precision}{offload}"


def plan_table(cfg: ModelConfig, layout: Layout, work: Work, device_gib: float) -> str:
    rows = {role: role_bytes(cfg, role, layout, work) for role in ROLES}
    lines = [f"{cfg.num_params() / 1e9:.2f} B parameters; {describe_layout(layout)}; sequences of {work.seq_len} "
             f"tokens, training micro-batch {work.micro_batch}, generation batch {work.gen_batch} per DP rank; "
             f"{work.reward_models} reward model(s)",
             f"{'role':<10}" + "".join(f"{p:>13}" for p in PARTS) + "   (GiB per device)"]
    for role, parts in rows.items():
        fits = "fits" if parts["total"] <= device_gib * GIB else f"does not fit {device_gib:g} GiB"
        lines.append(f"{role:<10}" + "".join(f"{parts[p] / GIB:>13.2f}" for p in PARTS) + f"   {fits}")
    both = colocated_bytes(cfg, layout, work)
    verdict = "fits" if both <= device_gib * GIB else "does not fit"
    lines.append(f"all four roles on the same devices, one phase at a time: {both / GIB:.2f} GiB per device: "
                 f"{verdict} {device_gib:g} GiB")
    turns = turns_bytes(cfg, layout, work)
    if turns is None:
        lines.append("ppo.schedule=colocated (one role's state on the device at a time): not offered with ZeRO-3 or "
                     "optimizer offload")
    else:
        verdict = "fits" if turns <= device_gib * GIB else "does not fit"
        lines.append(f"ppo.schedule=colocated, one role's state on the device at a time (the others' in host "
                     f"memory): {turns / GIB:.2f} GiB per device: {verdict} {device_gib:g} GiB")
    return "\n".join(lines)


def fitting_layouts(cfg: ModelConfig, devices: int, device_gib: float, work: Work) -> str:
    fits = layouts_that_fit(cfg, devices, device_gib * GIB, work)
    head = (f"{cfg.num_params() / 1e9:.2f} B parameters on {devices} × {device_gib:g} GiB, all four PPO roles on every "
            f"device, one phase at a time (seq {work.seq_len}, micro-batch {work.micro_batch}, generation batch "
            f"{work.gen_batch}):")
    if not fits:
        return head + "\n  no layout fits: shorter sequences, smaller batches, or more devices"
    return "\n".join([head] + [f"  {describe_layout(layout):<55} {total / GIB:8.2f} GiB per device"
                               for layout, total in fits])


def run_plan(args) -> str:
    cfg = model_shape(args.model)
    work = Work(args.seq, args.micro_batch, args.gen_batch, not args.no_flash, args.reward_models)
    if args.devices:
        return fitting_layouts(cfg, args.devices, args.device_gb, work)
    if cfg.n_heads % args.tp or cfg.kv_heads % args.tp:
        raise InputError(f"--tp {args.tp}: the model's {cfg.n_heads} heads ({cfg.kv_heads} KV heads) do not divide")
    layout = Layout(args.zero, args.tp, args.dp, args.offload and args.zero > 0, args.offload and args.zero == 3,
                    args.precision)
    return plan_table(cfg, layout, work, args.device_gb)
