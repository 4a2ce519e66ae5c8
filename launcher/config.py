"""The one typed config tree: YAML presets in configs/ plus dotted command-line overrides.

Each package owns its sub-config next to its code; this file composes the root, validates it once
(pydantic) before anything is built, and formats every problem with its dotted path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from launcher.tracking import WandbConfig
from models.config import PRESETS, check_tp_shape, preset
from parallel.mesh import GroupSpec
from rlhf.ppo_config import PPOConfig
from rlhf.reward_model import RMConfig
from rlhf.sft import SFTConfig
from rlhf.task import TaskConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "demo"  # run name: the directory under out_dir, the W&B run/group name
    out_dir: str = "runs"  # where runs are written
    seed: int = 0  # seed of model initialisation and data order
    backend: Literal["ray", "local"] = "ray"  # local: every group is one rank in the driver process
    ray_address: str | None = None  # join this cluster (else RAY_ADDRESS, else start a local one)

    @property
    def dir(self) -> Path:
        return Path(self.out_dir) / self.name


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
        return self


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(16, ge=1)  # response length of held-out evaluations
    temperature: float = Field(1.0, ge=0)  # sampling temperature of held-out evaluations (0: greedy)
    max_prompt_len: int = Field(48, ge=1)  # prompt truncation of held-out evaluations
    samples_per_prompt: int = Field(1, ge=1)  # responses sampled per held-out prompt (more: a smaller standard error)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run: RunConfig = RunConfig()
    wandb: WandbConfig = WandbConfig()
    model: ModelSpec = ModelSpec()
    task: TaskConfig = TaskConfig()
    sft: SFTConfig = SFTConfig()
    rm: RMConfig = RMConfig()
    ppo: PPOConfig = PPOConfig()
    evaluation: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        user_data = any(x is not None for x in (self.sft.train_data, self.rm.train_data, self.ppo.prompts))
        if user_data and not (self.model.tokenizer or self.model.pretrained or self.model.bpe_vocab):
            raise ValueError("a user data set needs model.tokenizer, model.pretrained or model.bpe_vocab "
                             "(the embedded word tokenizer only knows the embedded task)")
        if self.run.backend == "local":
            for name, spec in self.groups.items():
                if spec.ranks != 1:
                    raise ValueError(f"run.backend=local runs one rank per group; {name}.group.ranks must be 1")
        self._check_tensor_parallel()
        return self

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
        return {"sft": self.sft.group, "rm": self.rm.group,
                **{f"ppo.{r}": getattr(self.ppo, r).group for r in ("policy", "reference", "critic", "reward")}}

    @property
    def uses_embedded_task(self) -> bool:
        return self.sft.train_data is None and self.rm.train_data is None and self.ppo.prompts is None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'ppo.kl_coef=0.02' → ('ppo.kl_coef', 0.02); the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def find_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if not preset.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no config file or preset named {name_or_path!r} (presets: {known})")
    return preset


def deep_merge(base: dict, top: dict) -> dict:
    """`top` over `base`, section by section (a partial section keeps base's other keys)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return out


def load_config(name_or_path: str | None = None, overrides: list[str] = ()) -> Config:
    """Read a preset or YAML file, apply overrides, validate the whole tree once.

    Everything is merged onto the dumped defaults, so `ppo.critic.optim.lr=1e-4` changes that one
    value and keeps the critic's other default optimizer settings (not OptimConfig's generic ones).
    """
    tree: dict = {}
    source = "defaults"
    if name_or_path:
        path = find_preset(name_or_path)
        source = str(path)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        tree = loaded
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    try:
        return Config.model_validate(deep_merge(Config().model_dump(), tree))
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(root)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            lines.append(f"  {where}: {msg}")
        raise ConfigError(f"invalid config ({source}):\n" + "\n".join(lines)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: Config, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(dump_config(cfg))
    return path
