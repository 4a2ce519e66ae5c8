"""Stage runners behind the CLI: resolve data, tokenizer and models from the config, run, report.

Each stage reads only its own sub-config and writes into <run.out_dir>/<run.name>/<stage>.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from launcher.config import Config, save_config
from launcher.tracking import Tracker
from models.config import preset
from models.generation import SamplingParams
from models.heads import CausalLM
from models.hf import load_pretrained
from models.tokenizer import build_word_tokenizer, load_tokenizer
from rlhf.data import load_prompts, load_sft
from rlhf.evaluate import gold_eval
from rlhf.sft import train_sft
from rlhf.task import WORDS, EmbeddedTask, gold_score

log = logging.getLogger("instructrl")


def prepare_data(cfg: Config) -> dict[str, Path]:
    """Paths of the data sets: the embedded task's (written once per run) or the user's."""
    if cfg.uses_embedded_task:
        data_dir = cfg.run.dir / "data"
        return EmbeddedTask(cfg.task).write(data_dir)
    paths = {"sft_train": Path(cfg.sft.train_data)}
    if cfg.sft.eval_data:
        paths["sft_eval"] = Path(cfg.sft.eval_data)
    return paths


def build_tokenizer(cfg: Config):
    if cfg.model.tokenizer:
        return load_tokenizer(cfg.model.tokenizer)
    if cfg.model.pretrained:
        return load_tokenizer(cfg.model.pretrained)
    return build_word_tokenizer(WORDS)


def build_policy(cfg: Config, tok) -> CausalLM:
    torch.manual_seed(cfg.run.seed)
    if cfg.model.pretrained:
        return load_pretrained(cfg.model.pretrained, "lm")
    shape = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
             **cfg.model.shape}
    return CausalLM(preset(cfg.model.preset, **shape))


@dataclass
class SFTResult:
    model: CausalLM
    tokenizer: object
    out_dir: Path
    metrics: dict[str, float]


def run_sft(cfg: Config, data: dict[str, Path] | None = None) -> SFTResult:
    data = data or prepare_data(cfg)
    save_config(cfg, cfg.run.dir)
    tok = build_tokenizer(cfg)
    model = build_policy(cfg, tok)
    train = load_sft(data["sft_train"])
    evals = load_sft(data["sft_eval"]) if "sft_eval" in data else train[-max(1, len(train) // 20):]
    if "sft_eval" not in data:
        train = train[: len(train) - len(evals)]  # hold out the last 5% when no eval file is given
    out_dir = cfg.run.dir / "sft"
    tracker = Tracker(out_dir, f"{cfg.run.name}-sft", cfg.wandb, cfg.model_dump(mode="json"), "sft")
    log.info("SFT: %d train / %d eval demonstrations, %.2fM parameters", len(train), len(evals),
             sum(p.numel() for p in model.parameters()) / 1e6)
    metrics = train_sft(model, tok, train, evals, cfg.sft, out_dir, tracker.log)
    tracker.finish()
    return SFTResult(model, tok, out_dir, metrics)


def evaluate_gold(cfg: Config, model: CausalLM, tok, prompts_path: Path) -> tuple[float, list]:
    """Held-out gold score of a policy on the embedded task (sampled at the eval temperature)."""
    ev = cfg.evaluation
    params = SamplingParams(max_new_tokens=ev.max_new_tokens, temperature=ev.temperature)
    return gold_eval(model, tok, load_prompts(prompts_path), gold_score, params, ev.max_prompt_len, cfg.run.seed)


def run_demo(cfg: Config) -> dict:
    """What `make demo` runs: embedded data → SFT → held-out gold score of the SFT policy."""
    if not cfg.uses_embedded_task:
        raise ValueError("the demo runs on the embedded task; use `instructrl sft` for user data")
    data = prepare_data(cfg)
    sft = run_sft(cfg, data)
    gold, rows = evaluate_gold(cfg, sft.model, sft.tokenizer, data["ppo_eval"])
    summary = {"sft_eval_loss": sft.metrics["eval/loss"], "sft_gold_score": gold,
               "n_eval_prompts": len(rows), "sft_model": str(sft.out_dir),
               "metrics": str(sft.out_dir / "metrics.jsonl")}
    (cfg.run.dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, rows[:5])
    return summary


def print_summary(summary: dict, samples: list[tuple[str, str, float]]) -> None:
    print("\n== instructrl demo summary ==")
    for prompt, response, score in samples:
        print(f"  {prompt!r:36} -> {response!r:24} gold {score:.2f}")
    print(f"SFT policy gold score on {summary['n_eval_prompts']} held-out prompts: {summary['sft_gold_score']:.3f}")
    print(f"SFT eval loss: {summary['sft_eval_loss']:.3f}")
    print(f"model (HF format): {summary['sft_model']}\nmetrics: {summary['metrics']}")
