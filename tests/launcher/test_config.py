"""Config tree: presets, dotted overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from launcher.cli import main
from launcher.config import ConfigError, load_config


def test_preset_and_overrides():
    cfg = load_config("demo", ["sft.batch_size=8", "sft.optim.lr=0.01", "run.name=x"])
    assert (cfg.sft.batch_size, cfg.sft.optim.lr, cfg.run.name) == (8, 0.01, "x")
    assert cfg.model.preset == "tiny"


@pytest.mark.parametrize(("override", "message"), [
    ("sft.bach_size=8", r"sft\.bach_size: unknown key"),
    ("sft.batch_size=many", r"sft\.batch_size: Input should be a valid integer"),
    ("model.preset=huge", r"model: unknown preset 'huge'"),
    ("task.min_items=9", r"task: min_items=9 > max_items=6"),
    ("nonsense", r"is not of the form"),
    ("ppo.critic.group.tp_size=3", r"ppo\.critic\.group: ranks=1 is not divisible by tp_size=3"),
    ("model.attention=flash", r"model\.attention: Input should be 'auto', 'sdpa' or 'triton'"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_user_data_needs_a_tokenizer():
    with pytest.raises(ConfigError, match="a user data set needs model.tokenizer, model.pretrained or model.bpe_vocab"):
        load_config(None, ["sft.train_data=x.jsonl"])


def test_config_show_and_cli_error(capsys):
    assert main(["config", "show", "demo", "sft.epochs=2"]) == 0
    assert "epochs: 2" in capsys.readouterr().out
    assert main(["sft", "--config", "no-such-preset"]) == 2
    assert "no config file or preset named 'no-such-preset'" in capsys.readouterr().err


def test_nested_override_keeps_the_sections_other_defaults():
    cfg = load_config("demo", ["ppo.critic.optim.lr=0.001"])
    assert cfg.ppo.critic.optim.lr == 0.001
    assert cfg.ppo.critic.optim.warmup_steps == 0 and cfg.ppo.critic.optim.min_lr_ratio == 1.0  # PPO's defaults


def test_tensor_parallel_degree_must_divide_the_heads():
    with pytest.raises(ConfigError, match=r"ppo\.policy\.group\.tp_size=3: model n_heads=4 is not divisible"):
        load_config("demo", ["ppo.policy.group.ranks=3", "ppo.policy.group.tp_size=3"])
    cfg = load_config("demo", ["ppo.policy.group.ranks=4", "ppo.policy.group.tp_size=2"])
    assert cfg.ppo.policy.group.tp_size == 2


def test_ray_address_flag_is_the_config_key(capsys):
    assert main(["config", "show", "demo", "run.ray_address=10.0.0.1:6379"]) == 0
    assert "ray_address: 10.0.0.1:6379" in capsys.readouterr().out
    from launcher.cli import _parser

    args = _parser().parse_args(["pipeline", "--config", "demo", "ppo.steps=2", "--ray-address", "h:1"])
    assert (args.ray_address, args.overrides) == ("h:1", ["ppo.steps=2"])


def test_committed_config_reference_is_current():
    """docs/config.md is `instructrl config reference`; regenerate it when the tree changes."""
    from pathlib import Path

    from launcher.reference import config_reference

    committed = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    assert committed == config_reference(), "run: instructrl config reference > docs/config.md"
    assert "`ppo.kl_coef`" in committed and "`model.attention`" in committed


def test_wandb_mode_auto(monkeypatch, tmp_path):
    from launcher.tracking import WandbConfig

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert WandbConfig().resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbConfig().resolved_mode() == "online"
    assert WandbConfig(mode="offline").resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbConfig().resolved_mode() == "disabled"


def test_groups_that_cannot_fit_fail_at_once(ray_cluster):
    from launcher.cluster import check_capacity

    with pytest.raises(ConfigError, match=r"need 100 CPUs but the Ray cluster has 8"):
        check_capacity({"policy": (100, 1.0, 0.0)})
    with pytest.raises(ConfigError, match=r"need 2 GPUs"):
        check_capacity({"policy": (2, 0.5, 1.0)})
    check_capacity({"policy": (2, 0.5, 0.0), "reward": (2, 0.5, 0.0)})
