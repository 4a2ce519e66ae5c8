"""The checkpoints a command's stages start from, checked before any process starts: read from their
headers (no weights loaded), against their roles, the tokenizer and every configured length. Part of
launcher/preflight.py's checks; every problem is an InputError or ConfigError naming the key.
"""

from __future__ import annotations

from pathlib import Path

from launcher.config import Config, ConfigError
from models.errors import InputError
from models.hf import inspect_checkpoint


def check_models(cfg: Config, stages: tuple[str, ...], paths: dict[str, Path | None], tok) -> None:
    """Every checkpoint a stage starts from (`paths`: launcher.preflight.model_paths), read from its
    headers: config, tensor names and shapes, the right head for its role, a vocabulary that covers
    the tokenizer `tok`, positions for every length."""
    run = cfg.run.dir
    produced = {run / "sft"} if "sft" in stages else set()
    produced |= {run / "rm"} if "rm" in stages else set()
    needed = {"sft": [("sft_init", "model.pretrained"), ("select_reward", "ppo.reward_model")],
              "rm": [("rm_init", "rm.init")],
              "dpo": [("dpo_init", "dpo.init")],
              "ppo": [("policy", "ppo.policy_init"), ("reward", "ppo.reward_model")]
              + ([("critic", "ppo.critic_init")] if cfg.ppo.uses_critic else [])}
    shapes = [cfg.model.fresh_config()] if "sft" in stages and paths["sft_init"] is None else []
    for stage in stages:
        for role, key in needed[stage]:
            path = paths[role]
            if role in ("reward", "sft_init", "select_reward") and path is None:
                continue  # no reward model (functions only); a fresh model (its shape is checked above)
            if path is None:
                raise ConfigError(f"{key}: no model to start from; set {key} or model.pretrained (or give SFT data, "
                                  f"sft.train_data, so this run trains one)")
            if path in produced:
                continue
            earlier = {run / "sft": ("SFT", "sft"), run / "rm": ("reward", "rm")}.get(path)
            if earlier and not path.exists():
                raise InputError(f"{path}: this run's {earlier[0]} model does not exist yet; run `instructrl "
                                 f"{earlier[1]}` (or `instructrl pipeline`) first, or set {key}")
            where = f"{key}={path}" if path not in (run / "sft", run / "rm") else f"{path} (this run's model)"
            try:
                model, heads = inspect_checkpoint(path)
            except InputError as e:
                raise type(e)(f"{where}: {e}") from None
            is_lm = "lm_head.weight" in heads or model.tied
            if role in ("sft_init", "policy", "dpo_init") and ("score.weight" in heads or not is_lm):
                raise InputError(f"{where}: a scalar (reward or value) model, not a causal LM: it has no LM head "
                                 f"to generate with")
            if role in ("reward", "select_reward") and "score.weight" not in heads:
                raise InputError(f"{where}: a causal LM, not a reward model: it has no scalar score head, so its "
                                 f"scores would be random. Train one with `instructrl rm` (ppo.reward_model=auto) "
                                 f"or give a *ForSequenceClassification checkpoint.")
            if len(tok) > model.vocab_size:
                raise InputError(f"{where}: its vocabulary ({model.vocab_size}) is smaller than the tokenizer's "
                                 f"({len(tok)}); use the tokenizer the model was trained with")
            shapes.append(model)
    for model in shapes:
        check_lengths(cfg, stages, model.max_seq_len)


def check_lengths(cfg: Config, stages: tuple[str, ...], positions: int) -> None:
    """Every configured sequence length fits the model's positions (else an index error deep in torch)."""
    lengths = {"sft": [("sft.max_len", cfg.sft.max_len)], "rm": [("rm.max_len", cfg.rm.max_len)],
               "dpo": [("dpo.max_len", cfg.dpo.max_len)],
               "ppo": [("ppo.max_prompt_len + ppo.max_new_tokens", cfg.ppo.max_prompt_len + cfg.ppo.max_new_tokens),
                       ("ppo.ptx_max_len", cfg.ppo.ptx_max_len if cfg.ppo.ptx_coef else 0)]}
    evals = ("evaluation.max_prompt_len + evaluation.max_new_tokens",
             cfg.evaluation.max_prompt_len + cfg.evaluation.max_new_tokens)
    for stage in stages:
        for key, value in lengths[stage] + ([evals] if stage in ("sft", "ppo", "dpo") else []):
            if value > positions:
                raise ConfigError(f"{key} = {value} is longer than the model's {positions} positions "
                                  f"(max_seq_len / max_position_embeddings); lower it")
