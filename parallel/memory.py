"""Bytes per device of each role under a layout, worked out before anything is built: what
`instructrl plan` prints. Pure arithmetic on the model's shape; imports no torch.

Model state follows ZeRO (Rajbhandari et al. 2020, §3.1): with Ψ parameters, a mixed-precision Adam
rank holds 2Ψ of bf16 weights, 2Ψ of gradients and 12Ψ of optimizer state (the fp32 master copy and
two moments); stage 1 divides the optimizer state by the data-parallel size, stage 2 the gradients
too, stage 3 the weights too; tensor parallelism divides all of them first. In fp32 (this project's
CPU runs) weights and gradients are 4Ψ each and ZeRO's state still 12Ψ; stage 0 is plain AdamW, whose
two moments share the weights' precision (8Ψ in fp32, 4Ψ in bf16) and which keeps no master copy.
Offload moves the optimizer state (and, at stage 3, the weights) to host memory.

Activations are an estimate: a training micro-batch keeps, per layer, s·b·d·(34 + 5·a·s/d) bytes in
16-bit (Korthikanti et al. 2022, eq. 2; the TP-divided form of their eq. 3), without the attention
matrix (5·a·s/d) where a fused attention kernel never stores it, plus the logits. Generation keeps
the KV cache, 2 · layers · batch · length · kv heads · head dim values.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.config import ModelConfig

GIB = 1024**3
ROLES = ("policy", "critic", "reference", "reward")


@dataclass(frozen=True)
class Layout:
    zero_stage: int = 0
    tp: int = 1
    dp: int = 1
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: str = "bf16"  # "bf16" or "fp32"


@dataclass(frozen=True)
class Work:
    seq_len: int = 1024  # prompt + response tokens
    micro_batch: int = 4  # sequences per training micro-batch on one data-parallel rank
    gen_batch: int = 64  # sequences generated at once on one data-parallel rank
    flash_attention: bool = True  # a fused kernel: no s × s attention matrix kept
    reward_models: int = 1  # reward models the reward role holds (rm.ensemble), scoring one after another


def model_state_bytes(n_params: int, layout: Layout, trains: bool) -> dict[str, float]:
    """Weights, gradients and optimizer state one device holds (bytes)."""
    w = 2 if layout.precision == "bf16" else 4
    shard = n_params / layout.tp
    stage, dp = layout.zero_stage, layout.dp
    params = 0.0 if stage == 3 and layout.offload_params else w * shard / (dp if stage == 3 else 1)
    if not trains:
        return {"params": params, "grads": 0.0, "optimizer": 0.0}
    grads = w * shard / (dp if stage >= 2 else 1)
    optimizer = 2 * w * shard if stage == 0 else 0.0 if layout.offload_optimizer else 12 * shard / dp
    return {"params": params, "grads": grads, "optimizer": optimizer}


def activation_bytes(cfg: ModelConfig, layout: Layout, work: Work) -> float:
    """One training micro-batch's activations on one device (Korthikanti et al. 2022), and its logits."""
    s, b, d, a, t = work.seq_len, work.micro_batch, cfg.d_model, cfg.n_heads, layout.tp
    scale = 1 if layout.precision == "bf16" else 2  # their counts are for 16-bit activations
    per_layer = s * b * d * (10 + 24 / t + (0 if work.flash_attention else 5 * a * s / (d * t)))
    logits = 4 * s * b * cfg.vocab_size / t  # fp32 log-softmax over the vocabulary shard
    return scale * per_layer * cfg.n_layers + logits


def kv_cache_bytes(cfg: ModelConfig, layout: Layout, work: Work) -> float:
    w = 2 if layout.precision == "bf16" else 4
    return 2 * cfg.n_layers * work.gen_batch * work.seq_len * cfg.kv_heads * cfg.head_dim * w / layout.tp


def role_bytes(cfg: ModelConfig, role: str, layout: Layout, work: Work) -> dict[str, float]:
    """A PPO role's bytes per device: the policy trains and generates, the critic trains (a value head
    for the LM head), the reference and reward model only score (one micro-batch's logits or values);
    the reward role holds work.reward_models of them."""
    trains = role in ("policy", "critic")
    n = cfg.num_params() - (cfg.vocab_size * cfg.d_model * (not cfg.tied) if role in ("critic", "reward") else 0)
    out = model_state_bytes(n, layout, trains)
    if role == "reward":  # every member's weights resident; they score in turn, so one working set
        out = {k: v * work.reward_models for k, v in out.items()}
    out["activations"] = activation_bytes(cfg, layout, work) if trains else \
        4 * work.seq_len * work.micro_batch * (cfg.vocab_size / layout.tp if role == "reference" else 1)
    out["kv_cache"] = kv_cache_bytes(cfg, layout, work) if role == "policy" else 0.0
    out["total"] = sum(out.values())
    return out


def colocated_bytes(cfg: ModelConfig, layout: Layout, work: Work, roles: tuple[str, ...] = ROLES) -> float:
    """Bytes per device with every role on the same devices, one phase at a time: every role's model
    state resident, and the largest working set of one phase (a role's activations or the KV cache)."""
    parts = [role_bytes(cfg, role, layout, work) for role in roles]
    state = sum(p["params"] + p["grads"] + p["optimizer"] for p in parts)
    return state + max(max(p["activations"], p["kv_cache"]) for p in parts)


def turns_bytes(cfg: ModelConfig, layout: Layout, work: Work, roles: tuple[str, ...] = ROLES) -> float | None:
    """Bytes per device under ppo.schedule=colocated: one role's state and working set at a time, the
    others' state in host memory. None where that schedule is not offered (ZeRO-3, optimizer offload)."""
    if layout.zero_stage == 3 or layout.offload_optimizer:
        return None
    return max(role_bytes(cfg, role, layout, work)["total"] for role in roles)


def layouts_that_fit(cfg: ModelConfig, devices: int, device_bytes: float, work: Work) -> list[tuple[Layout, float]]:
    """Layouts with every role over all `devices` (dp = devices / tp) whose bytes per device fit, with them;
    without offload first, then by TP degree and ZeRO stage."""
    fits = []
    for tp in (t for t in (1, 2, 4, 8) if devices % t == 0 and cfg.n_heads % t == 0 and cfg.kv_heads % t == 0):
        for stage in (0, 1, 2, 3):
            for offload in (False, True):
                if offload and stage == 0:
                    continue
                layout = Layout(stage, tp, devices // tp, offload, offload and stage == 3)
                total = colocated_bytes(cfg, layout, work)
                if total <= device_bytes:
                    fits.append((layout, total))
    return sorted(fits, key=lambda x: (x[0].offload_optimizer, x[0].tp, x[0].zero_stage))
