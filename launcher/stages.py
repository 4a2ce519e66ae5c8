"""Stage runners behind the CLI: resolve data, tokenizer and models from the config, start the
worker groups, run, report. Each stage writes into <run.out_dir>/<run.name>/<stage>.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

from launcher.config import Config, save_config
from launcher.tracking import Tracker
from launcher.worker_group import LocalGroup, build_groups, shutdown_groups
from models.config import preset
from models.generation import SamplingParams
from models.tokenizer import build_word_tokenizer, load_tokenizer, train_bpe_tokenizer
from parallel.host import ModelSource
from parallel.mesh import GroupSpec
from rlhf.data import load_comparisons, load_prompts, load_sft, write_jsonl
from rlhf.evaluate import GoldEval, decode_responses, gold_eval, sample
from rlhf.reward_model import read_reward_stats, train_reward_model
from rlhf.reward_model import total_steps as rm_total_steps
from rlhf.sft import total_steps, train_sft
from rlhf.task import WORDS, EmbeddedTask, gold_score
from rlhf.workers import PolicyWorker, RewardWorker

log = logging.getLogger("instructrl")


def prepare_data(cfg: Config) -> dict[str, Path]:
    """Data set paths by name: the user's where given, the embedded task's (written once) otherwise."""
    paths = EmbeddedTask(cfg.task).write(cfg.run.dir / "data") if cfg.uses_embedded_task else {}
    for key, value in [("sft_train", cfg.sft.train_data), ("sft_eval", cfg.sft.eval_data),
                       ("comparisons_train", cfg.rm.train_data), ("comparisons_eval", cfg.rm.eval_data),
                       ("ppo_train", cfg.ppo.prompts), ("ppo_eval", cfg.ppo.eval_prompts)]:
        if value:
            paths[key] = Path(value)
    return paths


def build_tokenizer(cfg: Config, data: dict[str, Path]):
    """The tokenizer, saved under the run directory so every stage reuses the same one."""
    saved = cfg.run.dir / "tokenizer"
    if cfg.model.tokenizer or cfg.model.pretrained:
        tok = load_tokenizer(cfg.model.tokenizer or cfg.model.pretrained)
    elif cfg.model.bpe_vocab and (saved / "tokenizer.json").exists():
        return load_tokenizer(saved)  # trained by an earlier stage of this run
    elif cfg.model.bpe_vocab:
        texts = [r.prompt + r.response for r in load_sft(data["sft_train"])] if "sft_train" in data else []
        if "comparisons_train" in data:
            texts += [c.prompt + r for c in load_comparisons(data["comparisons_train"]) for r in c.responses]
        tok = train_bpe_tokenizer(texts, cfg.model.bpe_vocab)
    else:
        tok = build_word_tokenizer(WORDS)
    tok.save_pretrained(saved)
    return tok


def policy_source(cfg: Config, tok) -> ModelSource:
    if cfg.model.pretrained:
        return checkpoint_source(cfg, cfg.model.pretrained)
    shape = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
             **cfg.model.shape}
    return ModelSource(config=preset(cfg.model.preset, **shape), seed=cfg.run.seed, attention=cfg.model.attention)


def checkpoint_source(cfg: Config, path: str | Path) -> ModelSource:
    """A model loaded from an HF checkpoint directory, run with the configured attention path."""
    return ModelSource(path=str(path), seed=cfg.run.seed, attention=cfg.model.attention)


@contextmanager
def worker_group(cfg: Config, role: str, worker_cls: type, spec: GroupSpec, *args):
    """One role's group for the duration of a stage: Ray actors, or one in-process rank."""
    if cfg.run.backend == "local":
        group = LocalGroup(worker_cls, *args)
        try:
            yield group
        finally:
            group.shutdown()
        return
    from launcher.cluster import init_ray

    init_ray(cfg.run.ray_address)
    groups = build_groups({role: (worker_cls, spec, args, {})}, name_prefix=f"{cfg.run.name}-")
    try:
        yield groups[role]
    finally:
        shutdown_groups(groups)


def record_placement(out_dir: Path, groups: dict) -> None:
    """Where every rank of every group runs (node, IP, device, Ray GPU ids, pid): logged and saved as
    <stage>/placement.json, so a multi-node run can be checked after the fact."""
    placement = {role: group.info for role, group in groups.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "placement.json").write_text(json.dumps(placement, indent=1))
    for role, ranks in placement.items():
        where = ", ".join(f"rank {r['rank']}@{r.get('node_ip', 'local')}/{r.get('device', 'cpu')}" for r in ranks)
        log.info("placement of %s: %s", role, where)


def load_split(loader, data: dict[str, Path], train_key: str, eval_key: str, share: int = 20) -> tuple[list, list]:
    """Train and eval records; without an eval file the last 1/share of the training file is held out."""
    train = loader(data[train_key])
    if eval_key in data:
        return train, loader(data[eval_key])
    n = max(1, len(train) // share)
    return train[:-n], train[-n:]


def run_sft(cfg: Config, data: dict[str, Path] | None = None, tok=None) -> dict:
    """Step 1 on the policy group; returns eval metrics (+ held-out gold score on the embedded task)."""
    data = data or prepare_data(cfg)
    save_config(cfg, cfg.run.dir)
    tok = tok or build_tokenizer(cfg, data)
    train, evals = load_split(load_sft, data, "sft_train", "sft_eval")
    out_dir = cfg.run.dir / "sft"
    tracker = Tracker(out_dir, f"{cfg.run.name}-sft", cfg.wandb, cfg.model_dump(mode="json"), "sft",
                      group=cfg.run.name)
    steps = total_steps(len(train), cfg.sft)
    log.info("SFT: %d train / %d eval demonstrations, %d steps on %d rank(s)", len(train), len(evals), steps,
             cfg.sft.group.ranks)
    with worker_group(cfg, "policy-sft", PolicyWorker, cfg.sft.group, policy_source(cfg, tok), cfg.sft.engine,
                      cfg.sft.optim, steps, cfg.sft.batch_size) as group:
        record_placement(out_dir, {"policy": group})
        metrics = train_sft(group, tok, train, evals, cfg.sft, out_dir, tracker.log)
        if cfg.uses_embedded_task and cfg.task.rm_candidates == "policy":
            label_policy_samples(cfg, group, tok, data)
        if "ppo_eval" in data:
            gold = evaluate_gold(cfg, group, tok, load_prompts(data["ppo_eval"]), tracker, steps)
            metrics["gold_score"] = gold.mean
    tracker.finish()
    return {**metrics, "model": str(out_dir), "metrics_file": str(tracker.metrics_path)}


POLICY_COMPARISONS = {"comparisons_train": "comparisons_policy_train.jsonl",
                      "comparisons_eval": "comparisons_policy_eval.jsonl"}


def label_policy_samples(cfg: Config, group, tok, data: dict[str, Path]) -> None:
    """The embedded task's comparison data from the SFT policy itself: K+2 samples per prompt, ranked
    by the simulated labeller (InstructGPT §3.3), written next to the synthetic comparisons."""
    task = EmbeddedTask(cfg.task)
    k = cfg.task.k_responses + 2
    params = SamplingParams(max_new_tokens=cfg.evaluation.max_new_tokens, temperature=1.0)
    for split, name in POLICY_COMPARISONS.items():
        prompts = [c.prompt for c in load_comparisons(data[split])]
        gens = sample(group, tok, [p for p in prompts for _ in range(k)], params, cfg.evaluation.max_prompt_len,
                      seed=cfg.run.seed + len(name))
        texts = [t for g in gens for t in decode_responses(tok, g)]
        rows = task.label(prompts, [texts[i * k:(i + 1) * k] for i in range(len(prompts))], cfg.run.seed)
        write_jsonl(cfg.run.dir / "data" / name, rows)
        log.info("labelled %d of %d %s prompts from SFT samples", len(rows), len(prompts), split)


def run_rm(cfg: Config, data: dict[str, Path] | None = None, tok=None) -> dict:
    """Step 2 on the reward group, initialised from this run's SFT model unless rm.init says otherwise."""
    data = data or prepare_data(cfg)
    save_config(cfg, cfg.run.dir)
    tok = tok or build_tokenizer(cfg, data)
    init = Path(cfg.rm.init) if cfg.rm.init else cfg.run.dir / "sft"
    if not (init / "config.json").exists():
        raise FileNotFoundError(f"{init}: no model to initialise the reward model from (run `instructrl sft` "
                                f"first or set rm.init)")
    if cfg.uses_embedded_task and cfg.task.rm_candidates == "policy":
        data = {**data, **{k: cfg.run.dir / "data" / v for k, v in POLICY_COMPARISONS.items()}}
        if not data["comparisons_train"].exists():
            raise FileNotFoundError(f"{data['comparisons_train']}: no labelled SFT samples (run `instructrl sft`)")
    train, evals = load_split(load_comparisons, data, "comparisons_train", "comparisons_eval")
    out_dir = cfg.run.dir / "rm"
    tracker = Tracker(out_dir, f"{cfg.run.name}-rm", cfg.wandb, cfg.model_dump(mode="json"), "reward_model",
                      group=cfg.run.name)
    steps = rm_total_steps(len(train), cfg.rm)
    log.info("RM: %d train / %d eval rankings from %s, %d steps", len(train), len(evals), init, steps)
    with worker_group(cfg, "reward-train", RewardWorker, cfg.rm.group, checkpoint_source(cfg, init),
                      cfg.rm.engine, cfg.rm.optim, steps, cfg.rm.batch_size) as group:
        record_placement(out_dir, {"reward": group})
        metrics = train_reward_model(group, tok, train, evals, cfg.rm, out_dir, tracker.log)
    tracker.finish()
    return {**metrics, "reward_stats": read_reward_stats(out_dir), "model": str(out_dir),
            "metrics_file": str(tracker.metrics_path)}


def evaluate_gold(cfg: Config, group, tok, prompts: list[str], tracker: Tracker, step: int) -> GoldEval:
    """Held-out gold score of the policy group on the embedded task (sampled at the eval temperature),
    logged with its standard error and a table of samples."""
    ev = cfg.evaluation
    params = SamplingParams(max_new_tokens=ev.max_new_tokens, temperature=ev.temperature)
    gold = gold_eval(group, tok, prompts, gold_score, params, ev.max_prompt_len, cfg.run.seed, ev.samples_per_prompt)
    tracker.log({"eval/gold_score": gold.mean, "eval/gold_stderr": gold.stderr}, step)
    tracker.table("samples", ["prompt", "response", "gold"], [list(r) for r in gold.rows[:32]], step)
    return gold
