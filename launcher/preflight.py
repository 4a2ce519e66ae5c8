"""Every input of a command, read and checked before anything is written or any process starts.

A run that fails after an hour, or after rewriting sft/ beside an older run's rm/ and ppo/, is the
failure users remember. `check_inputs` reads every file the command's stages will read (data,
tokenizer, checkpoints, pretraining text, a resume checkpoint), imports the task functions, probes
the output directory and the Ray address, and returns what it loaded; stages then only compute.
Every problem is an InputError naming the file and line, or the config key, and what to do.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from launcher.config import Config, ConfigError
from launcher.model_checks import check_models
from launcher.provenance import check_unchanged
from launcher.reading import apply_chat_template, build_tokenizer, check_text, warn_long_prompts
from models.errors import InputError
from models.vllm_sampler import INSTALL_HINT, vllm_available
from parallel import checkpoint as checkpoints
from rlhf.data import Comparison, DataError, Prompt, load_comparisons, load_prompts, load_sft, load_text
from rlhf.files import is_record_file
from rlhf.functions import FunctionError, FunctionSpec, TaskFunction
from rlhf.labelling import Labeller
from rlhf.reward_model import read_reward_stats
from rlhf.task import EmbeddedTask

log = logging.getLogger("instructrl")

STAGE_DIRS = ("sft", "rm", "ppo", "dpo")
POLICY_COMPARISONS = {"comparisons_train": "comparisons_policy_train.jsonl",
                      "comparisons_eval": "comparisons_policy_eval.jsonl"}
SELECT_PROMPTS = 256  # validation prompts that sft.select=reward samples on at each epoch's end


@dataclass
class Inputs:
    """What a command's stages read, loaded and checked (chat template applied to model-facing text)."""

    tok: object  # the tokenizer (saved under <run>/tokenizer by the first stage)
    embedded: dict[str, list[dict]] | None  # the embedded task's data sets, written to <run>/data
    sft: tuple[list, list] | None = None  # (train, eval) demonstrations
    rm: tuple[list[Comparison], list[Comparison]] | None = None  # None with SFT-labelled comparisons
    prompts: list[Prompt] | None = None  # PPO prompts
    eval_prompts: list[Prompt] = field(default_factory=list)
    gold: TaskFunction | None = None
    reward_stats: dict | None = None
    resume: dict | None = None  # the coordinator state of ppo.resume
    models: dict[str, Path | None] = field(default_factory=dict)  # see model_paths
    select_prompts: list[Prompt] = field(default_factory=list)  # sft.select=reward scores SFT epochs on these
    select_stats: dict | None = None  # the normalisation of sft.select's reward model
    label_pool: list[Prompt] = field(default_factory=list)  # rounds (rm.labeller): the prompts sampled to label
    labeller: Labeller | None = None  # rm.labeller's function (None: people, or no labeller)


def stages_of(command: str, cfg: Config) -> tuple[str, ...]:
    if command in ("demo", "pipeline"):
        last = cfg.run.algorithm
        return tuple(s for s, on in (("sft", cfg.runs_sft), ("rm", cfg.trains_rm), (last, True)) if on)
    return (command,) if command in STAGE_DIRS else ()


def model_paths(cfg: Config) -> dict[str, Path | None]:
    """Where each model starts. sft_init None: a fresh model of cfg.model's shape."""
    run = cfg.run.dir
    pretrained = Path(cfg.model.pretrained) if cfg.model.pretrained else None
    # this run's SFT model: trained by this command, or by an earlier `instructrl sft` of the same run
    after_sft = run / "sft" if cfg.runs_sft or (run / "sft" / "config.json").exists() else pretrained
    policy = Path(cfg.ppo.policy_init) if cfg.ppo.policy_init else after_sft
    reward = None
    if cfg.ppo.reward_model is not None:
        reward = run / "rm" if cfg.ppo.reward_model == "auto" else Path(cfg.ppo.reward_model)
    # sft.select=reward scores epochs with a reward model that exists before SFT: not "auto" (trained after)
    select = cfg.sft.select == "reward" and cfg.ppo.reward_model not in (None, "auto")
    # the reference is the policy's start (InstructGPT's π^SFT), also when rounds continue a later policy
    return {"sft_init": pretrained, "rm_init": Path(cfg.rm.init) if cfg.rm.init else after_sft, "policy": policy,
            "reference": policy,
            "dpo_init": Path(cfg.dpo.init) if cfg.dpo.init else after_sft,
            "reward": reward, "critic": Path(cfg.ppo.critic_init) if cfg.ppo.critic_init else reward or policy,
            "select_reward": Path(cfg.ppo.reward_model) if select else None}


def check_inputs(cfg: Config, stages: tuple[str, ...]) -> Inputs:
    """Read and check everything `stages` will read; raise InputError on the first problem."""
    check_stage_data(cfg, stages)
    check_output_dir(cfg, stages)
    check_unchanged(cfg)
    if cfg.run.backend == "ray" and stages:
        check_ray_address(cfg.run.ray_address or os.environ.get("RAY_ADDRESS"))
    embedded = EmbeddedTask(cfg.task).generate() if cfg.uses_embedded_task else None
    sources = data_sources(cfg, embedded)
    inputs = Inputs(tok=None, embedded=embedded, models=model_paths(cfg))
    if "sft" in stages:
        inputs.sft = load_split(load_sft, sources, "sft_train", "sft_eval", cfg)
    labelling = cfg.rm.labeller is not None and "rm" in stages
    if labelling:  # rounds: comparisons of the policy's samples; rm.train_data's and rm.eval_data's join them
        inputs.label_pool = read_label_pool(cfg)
        if "comparisons_train" not in sources and "comparisons_eval" in sources:
            inputs.rm = ([], load_comparisons(sources["comparisons_eval"], cfg.data))
    if {"rm", "dpo"} & set(stages) and not (cfg.uses_embedded_task and cfg.task.rm_candidates == "policy"
                                            and "sft" in stages) and not (labelling and
                                                                          "comparisons_train" not in sources):
        inputs.rm = load_split(load_comparisons, policy_comparisons(cfg, sources), "comparisons_train",
                               "comparisons_eval", cfg)
    if "dpo" in stages and inputs.rm and "ppo_eval" not in sources and "ppo_train" not in sources:
        inputs.eval_prompts = [c.as_prompt() for c in inputs.rm[1]]  # DPO's gold is measured on these
    if "ppo" in stages and "ppo_train" not in sources:
        raise ConfigError("ppo.prompts: PPO needs prompts (a file of {\"prompt\": ...} records, or comparisons "
                          "or HH-RLHF pairs, whose prompts serve); set ppo.prompts")
    if {"sft", "ppo", "dpo"} & set(stages) and "ppo_train" in sources:
        prompts, inputs.eval_prompts = split_prompts(cfg, sources)
        inputs.prompts = prompts if "ppo" in stages else None
        if "sft" in stages and cfg.sft.select == "reward":
            inputs.select_prompts = prompts[:SELECT_PROMPTS]
    inputs.tok = tok = build_tokenizer(cfg, inputs)
    check_models(cfg, stages, inputs.models, tok)
    if "sft" in stages and cfg.sft.select == "reward":
        check_sft_select(cfg, inputs)
    check_text(cfg, tok, sources, inputs)
    apply_chat_template(cfg, inputs)
    warn_long_prompts(cfg, stages, inputs)
    check_functions(cfg, stages, inputs)
    if labelling:
        inputs.labeller = load_labeller(cfg)
    if "ppo" in stages:
        check_ppo_inputs(cfg, inputs)
    return inputs


def check_stage_data(cfg: Config, stages: tuple[str, ...]) -> None:
    """The data each of `stages` learns from is named. Only these stages': `instructrl sft` needs no
    comparisons, even when the pipeline's PPO would train its reward model on some."""
    if cfg.uses_embedded_task or cfg.rm.train_data is not None or cfg.rm.labeller is not None:
        return
    if "rm" in stages and "ppo" in stages:
        raise ConfigError("ppo.reward_model: 'auto' is this run's reward model, and there is no rm.train_data to "
                          "train one: give comparisons (rm.train_data), a reward model checkpoint "
                          "(ppo.reward_model=<dir>), or ppo.reward_model=null with ppo.reward_functions")
    for stage, what in (("rm", "the reward model learns"), ("dpo", "DPO learns")):
        if stage in stages:
            raise ConfigError(f"rm.train_data: {what} from ranked comparisons, and there is none: give comparisons "
                              f"(rm.train_data)")


# ---------------------------------------------------------------- where things are written

def check_output_dir(cfg: Config, stages: tuple[str, ...]) -> None:
    """The run directory can be written, and holds no stage output this command would replace
    (unless run.overwrite=true, or PPO resumes from its own checkpoint)."""
    run = cfg.run.dir
    probe = run
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{probe}: a file where the run directory {run} should go; set run.out_dir or run.name "
                         f"to a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{probe}: not writable, so the run directory {run} cannot be made; set run.out_dir "
                         f"to a directory you can write")
    try:  # permissions say nothing of a read-only or pseudo file system (/sys, a read-only mount), even to root
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".instructrl-probe-"))
    except OSError as e:
        raise InputError(f"{probe}: cannot make directories there ({e.strerror}), so the run directory {run} cannot "
                         f"be made; set run.out_dir to a directory you can write") from None
    if cfg.run.overwrite:
        return
    for stage in (*stages, "labels") if cfg.rm.labeller is not None else stages:
        out = run / stage
        resuming = cfg.run.resume or (
            stage == "ppo" and cfg.ppo.resume and Path(cfg.ppo.resume).resolve().is_relative_to(out.resolve()))
        if out.is_dir() and any(out.iterdir()) and not resuming:
            raise InputError(f"{out}: holds the {stage} stage of an earlier run, which this command would replace. "
                             f"Choose another run.name, pass run.overwrite=true to replace it, or "
                             f"run.resume=true to continue it.")


def check_ray_address(address: str | None) -> None:
    """Fail in seconds on an address nothing listens at: ray.init would retry it forever."""
    if not address or address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    if not parsed.hostname or not parsed.port:
        raise ConfigError(f"run.ray_address={address!r}: expected host:port (the head's GCS port, e.g. "
                          f"10.0.0.1:6379) or ray://host:port")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"run.ray_address={address!r}: nothing answers there ({e.strerror or e}). Start the "
                          f"cluster (`ray start --head`), check the address, or leave run.ray_address and "
                          f"RAY_ADDRESS unset to start a local cluster.") from None


# ---------------------------------------------------------------- data

def data_sources(cfg: Config, embedded: dict[str, list[dict]] | None) -> dict[str, object]:
    """Each data set: the user's file, or the embedded task's records in memory."""
    sources: dict[str, object] = {}
    if embedded is not None:
        sources = {k: [(f"embedded task {k}, record {i}", row) for i, row in enumerate(rows)]
                   for k, rows in embedded.items()}
    for key, value in [("sft_train", cfg.sft.train_data), ("sft_eval", cfg.sft.eval_data),
                       ("comparisons_train", cfg.rm.train_data), ("comparisons_eval", cfg.rm.eval_data),
                       ("ppo_train", cfg.ppo.prompts), ("ppo_eval", cfg.ppo.eval_prompts)]:
        if value:
            sources[key] = Path(value)
    return sources


def policy_comparisons(cfg: Config, sources: dict) -> dict:
    """The embedded task ranks the SFT policy's own samples (written by the SFT stage)."""
    if not (cfg.uses_embedded_task and cfg.task.rm_candidates == "policy"):
        return sources
    paths = {k: cfg.run.dir / "data" / v for k, v in POLICY_COMPARISONS.items()}
    if not paths["comparisons_train"].exists():
        raise InputError(f"{paths['comparisons_train']}: no labelled SFT samples yet (run `instructrl sft` first)")
    return {**sources, **paths}


def load_split(loader, sources: dict, train_key: str, eval_key: str, cfg: Config) -> tuple[list, list]:
    """Train and eval records; without an eval file the last 1/20 of the training file is held out."""
    train = loader(sources[train_key], cfg.data)
    if eval_key in sources:
        return train, loader(sources[eval_key], cfg.data)
    n = max(1, len(train) // 20)
    if len(train) - n < 1:
        key = {"sft_train": "sft", "comparisons_train": "rm"}[train_key]
        raise DataError(f"{sources[train_key]}: {len(train)} usable record(s); training needs at least 2, since "
                        f"the last 1/20 (at least one) is held out for evaluation. Add records or give "
                        f"{key}.eval_data.")
    return train[:-n], train[-n:]


def split_prompts(cfg: Config, sources: dict) -> tuple[list[Prompt], list[Prompt]]:
    """PPO prompts and held-out prompts: ppo.eval_prompts, or else the last 1/20 of ppo.prompts (at most
    500), so that every run measures its policy on prompts it never trained on."""
    prompts = load_prompts(sources["ppo_train"], cfg.data)
    if "ppo_eval" in sources:
        return prompts, load_prompts(sources["ppo_eval"], cfg.data)
    n = min(500, max(1, len(prompts) // 20))
    if len(prompts) - n < 1:
        raise DataError(f"{sources['ppo_train']}: {len(prompts)} prompt(s); PPO needs at least 2, since the last "
                        f"1/20 (at least one) is held out for evaluation. Add prompts or give ppo.eval_prompts.")
    return prompts[:-n], prompts[-n:]


# ---------------------------------------------------------------- functions, PPO

def check_functions(cfg: Config, stages: tuple[str, ...], inputs: Inputs) -> None:
    """Import every task function here, where a mistake costs seconds, and check that each accepts the
    fields of the prompts it will be called with."""
    cwd = Path.cwd()
    field_sets = {"ppo.prompts": _field_names(inputs.prompts or []),
                  "ppo.eval_prompts": _field_names(inputs.eval_prompts)}
    if "sft" in stages and cfg.sft.select == "reward":
        field_sets["the validation prompts of sft.select=reward"] = _field_names(inputs.select_prompts)
    if "ppo" in stages or inputs.select_prompts:
        for i, spec in enumerate(cfg.ppo.reward_functions):
            fn = _load(spec, cwd, f"ppo.reward_functions.{i}")
            for source, names in field_sets.items():
                fn.check_fields(names, source)
    gold = cfg.evaluation.gold_function
    if gold is not None and inputs.eval_prompts and {"sft", "ppo", "dpo"} & set(stages):
        inputs.gold = _load(gold, cwd, "evaluation.gold_function")
        inputs.gold.check_fields(field_sets["ppo.eval_prompts"], "ppo.eval_prompts")


def _field_names(prompts: list[Prompt]) -> list[str]:
    return list(dict.fromkeys(k for p in prompts for k in p.fields))


def _load(spec: FunctionSpec, cwd: Path, key: str) -> TaskFunction:
    try:
        return TaskFunction(spec.resolved(cwd), cwd)
    except FunctionError as e:
        raise FunctionError(f"{key}: {e}") from None


def read_label_pool(cfg: Config) -> list[Prompt]:
    """The prompts rounds sample for: run.rounds slices of sample.limit (or an equal share each)."""
    source = cfg.sample.prompts or cfg.rm.train_data or cfg.ppo.prompts
    if source is None:
        raise ConfigError("sample.prompts: rm.labeller labels samples of the policy on prompts; name them "
                          "(sample.prompts, or rm.train_data / ppo.prompts, whose prompts serve)")
    pool = load_prompts(source, cfg.data)
    rounds = cfg.run.rounds
    per_round = cfg.sample.limit or len(pool) // rounds
    if per_round < 1 or per_round * rounds > len(pool):
        raise DataError(f"{source}: {len(pool)} prompts, and {rounds} round(s) of {max(1, per_round)} prompts "
                        f"(sample.limit) need {max(1, per_round) * rounds}; lower sample.limit or run.rounds")
    return pool[:per_round * rounds]


def load_labeller(cfg: Config) -> Labeller | None:
    """rm.labeller's function, imported at launch (None: people rank, on the labelling page)."""
    if cfg.rm.labeller == "human":
        return None
    try:
        return Labeller(cfg.rm.labeller.resolved(Path.cwd()), Path.cwd())
    except FunctionError as e:
        raise FunctionError(f"rm.labeller: {e}") from None


def check_sft_select(cfg: Config, inputs: Inputs) -> None:
    """sft.select=reward: a reward that exists before SFT, and prompts to sample on."""
    if inputs.models["select_reward"] is None and not cfg.ppo.reward_functions:
        raise ConfigError("sft.select=reward scores each SFT epoch with a reward that exists before SFT: a reward "
                          "model checkpoint (ppo.reward_model=<dir>) or reward functions (ppo.reward_functions); "
                          f"this config has neither (ppo.reward_model={cfg.ppo.reward_model} "
                          f"{'is trained after SFT' if cfg.ppo.reward_model == 'auto' else 'is none'}). Set one, "
                          "or sft.select=loss")
    if not inputs.select_prompts:
        inputs.select_prompts = [r.as_prompt() for r in inputs.sft[1][:SELECT_PROMPTS]]
    reward = inputs.models["select_reward"]
    if reward is not None and cfg.ppo.normalize_scores:
        inputs.select_stats = read_stats(reward)


def check_ppo_inputs(cfg: Config, inputs: Inputs) -> None:
    p = cfg.ppo
    reward = inputs.models["reward"]
    if reward is not None and p.normalize_scores:
        stats_file = reward / "reward_stats.json"
        if reward != cfg.run.stage_dir("rm") or stats_file.exists():  # else this run's step 2 writes it
            inputs.reward_stats = read_stats(reward)
    if p.validation_model not in (None, "auto"):
        judge = Path(p.validation_model)
        if not (judge / "config.json").exists():
            raise InputError(f"ppo.validation_model={judge}: no reward model checkpoint there (no config.json); name "
                             f"a reward model directory, or ppo.validation_model=auto (rm.validation trains one)")
        if p.normalize_scores:
            read_stats(judge)
    if p.ptx_data and not p.ptx_coef:  # named, so checked; and said to be left out
        if not Path(p.ptx_data).exists():
            raise DataError(f"{p.ptx_data}: no such file (ppo.ptx_data names it, though ppo.ptx_coef=0 leaves the "
                            f"pretraining mix out: correct the path, or remove ppo.ptx_data)")
        log.warning("ppo.ptx_data=%s is not mixed in: ppo.ptx_coef=0 (set it above 0 for PPO-ptx)", p.ptx_data)
    if p.ptx_coef and is_record_file(p.ptx_data):
        load_sft(p.ptx_data, cfg.data)  # demonstrations: the mix is their SFT loss
    elif p.ptx_coef:
        text = load_text(p.ptx_data)
        n = len(inputs.tok(text[:2_000_000], add_special_tokens=False)["input_ids"])
        if n < p.ptx_max_len:
            raise DataError(f"{p.ptx_data}: {n} tokens, fewer than ppo.ptx_max_len={p.ptx_max_len}: not one "
                            f"pretraining sequence; give more text or lower ppo.ptx_max_len")
    if p.resume:
        inputs.resume = read_resume(Path(p.resume), p.steps)
    if p.rollout == "vllm" and not vllm_available():
        raise InputError(INSTALL_HINT)


def read_stats(model_dir: Path) -> dict:
    try:
        stats = read_reward_stats(model_dir)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{model_dir / 'reward_stats.json'}: not valid JSON ({e})") from None
    if stats is None:
        raise InputError(f"{model_dir / 'reward_stats.json'}: not found. ppo.normalize_scores=true divides the "
                         f"reward model's scores by their held-out mean and std, which `instructrl rm` writes there; "
                         f"write {{\"mean\": m, \"std\": s}} yourself or set ppo.normalize_scores=false")
    if not isinstance(stats, dict) or not all(isinstance(stats.get(k), int | float) for k in ("mean", "std")):
        raise InputError(f"{model_dir / 'reward_stats.json'}: expected {{\"mean\": number, \"std\": number}}")
    if stats["std"] <= 1e-6:
        raise InputError(f"{model_dir / 'reward_stats.json'}: std {stats['std']}: the reward model gives every "
                         f"held-out response the same score, so it cannot rank; check its training data (all "
                         f"responses identical?) or set ppo.normalize_scores=false")
    return stats


def read_resume(path: Path, steps: int) -> dict:
    """The coordinator state of a PPO checkpoint, after checking every file against its manifest
    (sizes and checksums: a torn, corrupt or mixed checkpoint fails here, before any worker starts)."""
    if not path.is_dir():
        raise InputError(f"ppo.resume={path}: no such checkpoint directory")
    problem = checkpoints.verify(path)
    if problem is not None:
        others = [str(p) for p in checkpoints.list_checkpoints(path.parent) if p != path and not checkpoints.verify(p)]
        hint = f"; whole checkpoints beside it: {', '.join(others)}" if others else ""
        raise InputError(f"ppo.resume={path}: not a whole checkpoint: {problem}{hint}")
    state = json.loads((path / checkpoints.STATE).read_text())
    if state["step"] >= steps:
        raise InputError(f"ppo.resume={path}: the checkpoint is at step {state['step']}, and ppo.steps={steps} "
                         f"leaves nothing to do; raise ppo.steps to continue training")
    return state
