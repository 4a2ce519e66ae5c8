"""The one typed config tree: YAML presets in configs/ plus dotted command-line overrides.

Each package owns its sub-config next to its code; this file composes the root, validates it once
(pydantic) before anything is built, and formats every problem with its dotted path.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from launcher.presets import ConfigError, deep_merge, read_preset
from launcher.tracking import WandbConfig
from models.config import PRESETS, ModelConfig, check_tp_shape, preset
from parallel.mesh import GroupSpec
from rlhf.data import DataConfig
from rlhf.dpo import DPOConfig
from rlhf.evaluate import EvalConfig
from rlhf.labelling import SampleConfig
from rlhf.ppo_config import PPOConfig
from rlhf.reward_model import RMConfig
from rlhf.sft import SFTConfig
from rlhf.task import TaskConfig


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "demo"  # run name: the directory under out_dir, the W&B run/group name
    out_dir: str = "runs"  # where runs are written
    seed: int = 0  # seed of model initialisation and data order
    backend: Literal["ray", "local"] = "ray"  # local: every group is one rank in the driver process
    ray_address: str | None = None  # join this cluster (else RAY_ADDRESS, else start a local one)
    # A stage refuses to replace a finished stage's output in the run directory unless this is true.
    overwrite: bool = False
    # Continue this run directory: finished stages are skipped, PPO goes on from its newest whole
    # checkpoint (the Slurm script sets it when a preempted job is requeued).
    resume: bool = False
    # A resume whose data files differ from those the run started with (size and SHA-256, kept in
    # <run>/inputs.json) stops with an error naming the file; true: go on with the new data.
    resume_changed_data: bool = False
    max_restarts: int = Field(3, ge=0)  # times a stage is restarted after a lost or stalled worker
    call_timeout_s: float = Field(900.0, gt=0)  # a group call or collective unanswered this long is a stall
    # After a node is lost, how long a restart waits for the cluster to fit the groups again (saying so)
    # before it stops with an error; the checkpoints stay for run.resume=true. A cluster that has lost
    # no node and cannot fit the groups fails at once.
    capacity_wait_s: float = Field(600.0, ge=0)
    max_bad_steps: int = Field(3, ge=1)  # consecutive steps with a skipped non-finite update before stopping
    save_total_limit: int = Field(2, ge=0)  # PPO checkpoints kept (the newest); 0: all
    # A PPO save that fails on storage (a full disk, a quota, EIO): "stop" with an error naming the path
    # and the space needed; "continue": warn and save again at the next save. Either way the partial
    # save is removed and the previous checkpoint stays whole.
    on_save_error: Literal["stop", "continue"] = "stop"
    # What `instructrl pipeline` runs after SFT: "ppo" (reward model, then PPO) or "dpo" (DPO on the
    # comparisons themselves: no reward model, no sampling)
    algorithm: Literal["ppo", "dpo"] = "ppo"
    # Rounds of sample → label → reward model → PPO (InstructGPT: "steps 2 and 3 can be iterated"), with
    # rm.labeller ranking each round's samples; ppo.steps is the total over the rounds.
    rounds: int = Field(1, ge=1)
    round: int = Field(1, ge=1)  # the round a stage belongs to (set by the pipeline per round; its dir: round-<n>/)

    @model_validator(mode="after")
    def _check_run(self) -> RunConfig:
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: resume continues the run directory, "
                             "overwrite replaces it")
        return self

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"{name!r} is not a run name: it must be a non-empty directory name without '/'")
        return name

    @property
    def dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def stage_dir(self, stage: str) -> Path:
        """Where a stage writes: <run>/<stage>, or <run>/round-<n>/<stage> for the rounds after the first."""
        return self.dir / stage if self.round == 1 else self.dir / f"round-{self.round}" / stage

    def tag(self, stage: str) -> str:
        """A stage's W&B run name: <run>-<stage>, or <run>-round<n>-<stage>."""
        return f"{self.name}-{stage}" if self.round == 1 else f"{self.name}-round{self.round}-{stage}"


class ModelSpec(BaseModel):
    """Where the policy starts: an HF checkpoint directory, or a fresh model of a named shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pretrained: str | None = None  # HF checkpoint directory to start from; None: a fresh model
    preset: str = "tiny"  # model shape preset (models/config.py PRESETS) for a fresh model
    shape: dict[str, Any] = Field(default_factory=dict)  # ModelConfig fields over the preset
    tokenizer: str | None = None  # None: the pretrained directory's, a trained BPE, or the embedded task's
    bpe_vocab: int | None = Field(None, ge=300)  # train a byte-level BPE of this size on the run's data
    attention: Literal["auto", "sdpa", "triton"] = "auto"  # auto: the Triton kernel on GPUs, SDPA on CPUs

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        self.fresh_config()  # a shape that cannot be built fails here, with its key
        return self

    def fresh_config(self) -> ModelConfig:
        """The shape of a fresh model (preset + shape); its vocabulary is set when the tokenizer exists."""
        unknown = sorted(set(self.shape) - set(ModelConfig.model_fields))
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(ModelConfig.model_fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(ModelConfig.model_fields)}"
            raise ValueError(f"shape.{unknown[0]}: not a model shape field{hint}")
        try:
            return preset(self.preset, **self.shape)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ValueError(f"shape.{field}: {msg}" if field else f"shape: {msg} (preset {self.preset!r} + shape)") \
                from None


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run: RunConfig = RunConfig()
    wandb: WandbConfig = WandbConfig()
    model: ModelSpec = ModelSpec()
    data: DataConfig = DataConfig()
    task: TaskConfig = TaskConfig()
    sft: SFTConfig = SFTConfig()
    rm: RMConfig = RMConfig()
    ppo: PPOConfig = PPOConfig()
    dpo: DPOConfig = DPOConfig()
    evaluation: EvalConfig = EvalConfig()
    sample: SampleConfig = SampleConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        user_text = {k: v for k, v in self.user_files.items() if v is not None}
        if user_text and not (self.model.tokenizer or self.model.pretrained or self.model.bpe_vocab):
            raise ValueError(f"{next(iter(user_text))} is your own text, which needs a tokenizer that knows it: set "
                             f"model.pretrained (a checkpoint with its tokenizer), model.tokenizer, or "
                             f"model.bpe_vocab (train a BPE on your data); the embedded word tokenizer only "
                             f"knows the embedded task's words")
        if self.run.backend == "local":
            for name, spec in self.groups.items():
                if spec.ranks != 1:
                    raise ValueError(f"run.backend=local runs one rank per group; {name}.group.ranks must be 1")
        self._check_colocation()
        self._check_tensor_parallel()
        self._check_rounds()
        return self

    def _check_rounds(self) -> None:
        if self.rm.labeller is None:
            if self.run.rounds > 1:
                raise ValueError(f"run.rounds={self.run.rounds}: each round labels the current policy's samples; set "
                                 f"rm.labeller ('file.py:fn', or human for the labelling page)")
            return
        if self.run.algorithm != "ppo" or self.ppo.reward_model != "auto":
            raise ValueError("rm.labeller labels samples for this run's reward model: it needs run.algorithm=ppo and "
                             "ppo.reward_model=auto")
        if self.ppo.steps % self.run.rounds:
            raise ValueError(f"ppo.steps={self.ppo.steps} is the total over run.rounds={self.run.rounds}: make it a "
                             f"multiple of the rounds")

    def _check_colocation(self) -> None:
        roles = ("policy", "reference", "critic", "reward", "generator")
        for name, spec in self.groups.items():
            target = spec.colocate_with
            if target is None:
                continue
            if not name.startswith("ppo."):
                raise ValueError(f"{name}.group.colocate_with: the {name} stage runs one group; colocation is "
                                 f"for the PPO roles")
            if target not in roles or target == name.removeprefix("ppo."):
                raise ValueError(f"{name}.group.colocate_with={target!r}: name another PPO role "
                                 f"({', '.join(r for r in roles if r != name.removeprefix('ppo.'))})")
            if target == "critic" and not self.ppo.uses_critic:
                raise ValueError(f"{name}.group.colocate_with=critic: ppo.advantage_estimator="
                                 f"{self.ppo.advantage_estimator} starts no critic; colocate with another role")
            if target == "generator" and self.ppo.schedule != "async":
                raise ValueError(f"{name}.group.colocate_with=generator: ppo.schedule={self.ppo.schedule} starts no "
                                 f"generator; colocate with another role")
            anchor = getattr(self.ppo, target).group
            if anchor.colocate_with:
                raise ValueError(f"{name}.group.colocate_with={target!r}, which itself colocates with "
                                 f"{anchor.colocate_with!r}: colocate both with the same role")
            if anchor.ranks != spec.ranks:
                raise ValueError(f"{name}.group.colocate_with={target!r}: {name} has {spec.ranks} ranks and "
                                 f"ppo.{target} {anchor.ranks}; colocated roles share bundles rank by rank")

    def _check_tensor_parallel(self) -> None:
        """TP degrees against the model's heads and MLP width, before any process starts (the
        vocabulary is checked when the model is built: the tokenizer may not exist yet)."""
        tp = {name: g.tp_size for name, g in self.groups.items() if g.tp_size > 1}
        if not tp:
            return
        if self.model.pretrained:
            if not (Path(self.model.pretrained) / "config.json").exists():
                return  # reported by the stage that loads it, with the path
            from models.hf import read_hf_config

            shape = read_hf_config(self.model.pretrained)
        else:
            shape = preset(self.model.preset, **self.model.shape)
        for name, size in tp.items():
            try:
                check_tp_shape(shape, size, vocab=False)
            except ValueError as e:
                raise ValueError(f"{name}.group.tp_size={size}: {e}") from None

    @property
    def groups(self) -> dict[str, GroupSpec]:
        """Every worker group's spec, by its config path."""
        return {"sft": self.sft.group, "rm": self.rm.group, "dpo": self.dpo.group,
                **{f"ppo.{r}": getattr(self.ppo, r).group
                   for r in ("policy", "reference", "critic", "reward", "generator")}}

    @property
    def uses_embedded_task(self) -> bool:
        return self.sft.train_data is None and self.rm.train_data is None and self.ppo.prompts is None

    @property
    def runs_sft(self) -> bool:
        """This run fine-tunes its policy (step 1): it has demonstrations, the embedded task's or the user's."""
        return self.uses_embedded_task or self.sft.train_data is not None

    @property
    def trains_rm(self) -> bool:
        """This run trains its reward model (step 2): PPO uses ppo.reward_model=auto."""
        return self.run.algorithm == "ppo" and self.ppo.reward_model == "auto"

    @property
    def user_files(self) -> dict[str, str | None]:
        """Every text input a user may give, by config key."""
        return {"sft.train_data": self.sft.train_data, "sft.eval_data": self.sft.eval_data,
                "rm.train_data": self.rm.train_data, "rm.eval_data": self.rm.eval_data,
                "ppo.prompts": self.ppo.prompts, "ppo.eval_prompts": self.ppo.eval_prompts,
                "ppo.ptx_data": self.ppo.ptx_data}


def _set_dotted(tree: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {key!r} is not a section, so {dotted!r} cannot be set")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'ppo.kl_coef=0.02' → ('ppo.kl_coef', 0.02); the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value (e.g. sft.epochs=2)")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({getattr(e, 'problem', e)}); "
                          f"quote it, e.g. {key.strip()}='\"...\"'") from None


def _source_of(dotted: str, sources: dict[str, str]) -> str:
    """Where the user set `dotted`: for a section, the keys set under it (overrides first, since they
    win); for a key, the key itself or the section that set it."""
    if not dotted:
        return "defaults"
    below = list(dict.fromkeys(v for k, v in sources.items() if k.startswith(dotted + ".")))
    if below:
        overrides = [v for v in below if v.startswith("override")]
        shown = overrides or below
        return ", ".join(shown[:3]) + (", ..." if len(shown) > 3 else "")
    probe = dotted
    while probe:
        if probe in sources:
            return sources[probe]
        probe = probe.rpartition(".")[0]
    return "defaults"


# A validator's message may open with the key it is about: "shape.n_layers: ..." (that key is the
# place) or "min_items=9 > ..." (a key of the section, which stays the place).
LEADING_KEY = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*)(: |=)")
DOTTED_KEY = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)+)")  # a root check's message names its key


def _describe(err: dict, sources: dict[str, str]) -> str:
    """One line for one pydantic error: where it was set, the dotted key, what is wrong."""
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = _known_keys(err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else
                               f"; known keys here: {', '.join(known)}" if known else "")
    m = LEADING_KEY.match(msg)
    if m and m.group(2) == ": ":
        key = f"{where}.{m.group(1)}" if where else m.group(1)
        return f"{_source_of(key, sources)}: {key}: {msg[m.end():]}"
    if where:
        return f"{_source_of(where, sources)}: {where}: {msg}"
    key = DOTTED_KEY.match(msg)
    return f"{_source_of(key.group(1) if key else '', sources)}: {msg}"


def _known_keys(loc: tuple) -> list[str]:
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = field.annotation
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _non_finite(tree: Any, prefix: str = "") -> str | None:
    """The first key whose value is NaN or ±inf (a learning rate of `.inf` is never meant)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if (found := _non_finite(v, f"{prefix}{k}.")) is not None:
                return found
    elif isinstance(tree, float) and not math.isfinite(tree):
        return prefix.rstrip(".")
    return None


def load_config(name_or_path: str | None = None, overrides: list[str] = ()) -> Config:
    """Read a preset or YAML file, apply overrides, validate the whole tree once.

    Everything is merged onto the dumped defaults, so `ppo.critic.optim.lr=1e-4` changes that one
    value and keeps the critic's other default optimizer settings (not OptimConfig's generic ones).
    Each error names where the bad value was set: the file and line, or the override.
    """
    tree: dict = {}
    sources: dict[str, str] = {}
    if name_or_path:
        tree, sources = read_preset(name_or_path)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, f"override {text!r}")
        sources = {k: v for k, v in sources.items() if k != key and not k.startswith(key + ".")}
        sources[key] = f"override {text!r}"
        if isinstance(value, dict):
            sources.update({f"{key}.{k}": f"override {text!r}" for k in value})
    bad = _non_finite(tree)
    if bad is not None:
        raise ConfigError(f"{_source_of(bad, sources)}: {bad}: must be a finite number, not {_lookup(tree, bad)}")
    try:
        return Config.model_validate(deep_merge(Config().model_dump(), tree))
    except ValidationError as e:
        lines = ["  " + _describe(err, sources) for err in e.errors()]
        raise ConfigError("invalid config:\n" + "\n".join(dict.fromkeys(lines))) from None


def _lookup(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: Config, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(dump_config(cfg))
    return path
