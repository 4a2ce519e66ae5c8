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
