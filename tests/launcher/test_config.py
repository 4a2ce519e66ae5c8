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
    ("sft.bach_size=8", r"sft\.bach_size: unknown key \(did you mean 'batch_size'\?\)"),
    ("sft.batch_size=many", r"sft\.batch_size: Input should be a valid integer"),
    ("model.preset=huge", r"model: unknown preset 'huge'"),
    ("task.min_items=9", r"task: min_items=9 > max_items=6"),
    ("nonsense", r"is not of the form"),
    ("ppo.critic.group.tp_size=3", r"ppo\.critic\.group: ranks=1 is not divisible by tp_size=3"),
    ("model.attention=flash", r"model\.attention: Input should be 'auto', 'sdpa' or 'triton'"),
    ("model.shape.n_layers=-1", r"model\.shape\.n_layers: Input should be greater than or equal to 1"),
    ("model.shape.n_layer=2", r"model\.shape\.n_layer: not a model shape field \(did you mean 'n_layers'\?\)"),
    ("model.shape.d_model=130", r"model\.shape: d_model=130 is not divisible by n_heads=4"),
    ("model.shape.sliding_window=8", r"model\.shape: sliding_window is a Mistral feature"),
    ("run.name=", r"run\.name: '' is not a run name"),
    ("run.name=a/b", r"run\.name: 'a/b' is not a run name"),
    ("run.name=..", r"run\.name: '\.\.' is not a run name"),
    ("ppo.policy.optim.lr=.inf", r"ppo\.policy\.optim\.lr: must be a finite number, not inf"),
    ("sft.optim.lr=.nan", r"sft\.optim\.lr: must be a finite number, not nan"),
    ("ppo.critic.group.colocate_with=nobody", r"colocate_with='nobody': name another PPO role"),
    ("ppo.critic.group.colocate_with=critic", r"colocate_with='critic': name another PPO role"),
    ("sft.group.colocate_with=policy", r"sft\.group\.colocate_with: the sft stage runs one group"),
    ("ppo.critic.group={colocate_with: policy, ranks: 2}", r"ppo\.critic has 2 ranks and ppo\.policy 1"),
    ("ppo={schedule: colocated, reward: {group: {ranks: 2}}}",
     r"schedule=colocated: reward\.group\.ranks=2, the policy's 1"),
    ("ppo={schedule: colocated, critic: {engine: {zero_stage: 3}}}", r"critic\.engine\.zero_stage=3 is not supported"),
    ("ppo={schedule: colocated, policy: {engine: {zero_stage: 2, offload_optimizer: true}}}",
     r"moves policy's optimizer state itself: set policy\.engine\.offload_optimizer: false"),
    ("ppo={schedule: colocated, reference: {group: {colocate_with: critic}}}",
     r"reference\.group\.colocate_with='critic' must be null or policy"),
])
def test_bad_config_names_the_key_and_the_override(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config("demo", [override])
    if "=" in override:  # every error names the override that caused it, not the preset file
        assert f"override {override!r}" in str(e.value), str(e.value)


def test_errors_in_a_file_name_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  epochs: 2\n   batch_size: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3:14: YAML syntax error: mapping values are not allowed"):
        load_config(str(bad))
    bad.write_text("run:\n  name: x\nsft:\n  epochs: -2\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad), ["sft.batch_size=0"])
    assert "bad.yaml:4: sft.epochs: Input should be greater than or equal to 1" in str(e.value)
    assert "override 'sft.batch_size=0': sft.batch_size: Input should be greater than or equal to 1" in str(e.value)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: the top level must be a mapping of sections"):
        load_config(str(bad))
    bad.write_bytes(b"run:\n  name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not UTF-8 text"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match=r"override 'sft\.epochs=\[': the value is not valid YAML"):
        load_config(None, ["sft.epochs=["])
    with pytest.raises(ConfigError, match=r"override 'run\.name\.x=1': run\.name: Input should be a valid string"):
        load_config(None, ["run.name.x=1"])


@pytest.mark.parametrize("key", ["sft.train_data", "rm.eval_data", "ppo.prompts", "ppo.eval_prompts"])
def test_user_text_needs_a_tokenizer(key):
    with pytest.raises(ConfigError, match=f"override '{key}=x.jsonl': {key} is your own text, which needs a "
                                          f"tokenizer that knows it: set model.pretrained"):
        load_config(None, [f"{key}=x.jsonl"])


def test_config_show_and_cli_error(capsys):
    assert main(["config", "show", "demo", "sft.epochs=2"]) == 0
    assert "epochs: 2" in capsys.readouterr().out
    assert main(["sft", "--config", "no-such-preset"]) == 2
    assert "no config file or preset named 'no-such-preset'" in capsys.readouterr().err


def test_the_demo_runs_ppo_under_the_defaults():
    """The task suite (bench/compare_algorithms.py) runs the demo config: it proves the class defaults
    only while the demo sets nothing of PPO but the embedded task's lengths (and where the roles' ranks
    go: 0.4 Ray CPUs each, so that five groups fit 2 cores)."""
    from parallel.mesh import GroupSpec
    from rlhf.ppo_config import PPOConfig

    demo = load_config("demo").ppo
    roles = ("policy", "critic", "reward", "reference", "generator")
    assert all(getattr(demo, r).group == GroupSpec(cpus_per_rank=0.4) for r in roles)
    placed = {r: getattr(PPOConfig(), r).model_copy(update={"group": GroupSpec(cpus_per_rank=0.4)}) for r in roles}
    assert demo == PPOConfig(max_new_tokens=demo.max_new_tokens, max_prompt_len=demo.max_prompt_len, **placed)
    assert (demo.kl_coef, demo.ppo_epochs, demo.steps, demo.samples_per_prompt) == (0.1, 4, 300, 4)
    assert demo.kl_target is None
    assert (demo.policy.optim.lr, demo.policy.optim.min_lr_ratio, demo.missing_eos_score) == (2e-4, 0.1, -1.0)


def test_kl_schedule_starts_at_a_multiple_of_kl_coef_under_a_fixed_beta_only():
    from rlhf.ppo_config import PPOConfig

    assert PPOConfig(kl_coef=0.1, kl_start_factor=3).kl_schedule_start == pytest.approx(0.3)
    assert PPOConfig(kl_coef=0.1, kl_start_factor=1).kl_schedule_start is None
    assert PPOConfig(kl_coef=0.1, kl_start_factor=3, kl_target=0.5).kl_schedule_start is None  # the controller's β
    assert PPOConfig(kl_coef=0.0, kl_start_factor=3).kl_schedule_start == 0.0  # no KL penalty at any step


def test_average_last_takes_the_last_evaluations_of_the_span_and_none_under_patience():
    """ppo.average_last: the last n evaluation steps (every eval_every, and the last) that lie in the run's last
    ppo.average_span of its steps (the span's first step included); none for one step, or under ppo.patience,
    whose run may end at any evaluation. By default 4 in the last quarter: steps 225-300 of a 300-step run."""
    def steps(*overrides: str) -> list[int]:
        return load_config("demo", list(overrides)).ppo.averaged_steps

    assert steps() == steps("ppo.average_last=4") == [225, 250, 275, 300] and steps("ppo.average_last=1") == []
    assert steps("ppo.steps=400") == [325, 350, 375, 400]  # 5 evaluations in the span, the last 4 of them
    assert steps("ppo.steps=60", "ppo.average_last=4", "ppo.average_span=1") == [25, 50, 60]
    assert steps("ppo.steps=60") == [50, 60] and steps("ppo.steps=60", "ppo.eval_every=20") == []  # the tutorial's
    assert steps("ppo.average_last=4", "ppo.patience=2") == [] and steps("ppo.steps=10", "ppo.average_last=4") == []


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


def test_a_cluster_that_lost_a_node_is_waited_for(monkeypatch, caplog):
    """Short of capacity after a node was lost: wait (saying so) until a node joins, or until
    run.capacity_wait_s is spent; short with no node lost: fail at once."""
    import ray

    from launcher.cluster import check_capacity

    b = {"Alive": True, "Resources": {"CPU": 4.0}}
    c_dead, d = {"Alive": False, "Resources": {}}, {"Alive": True, "Resources": {"CPU": 2.0}}
    views = iter([[b, c_dead], [b, c_dead], [b, c_dead, d]])  # a node joins at the third look
    monkeypatch.setattr(ray, "nodes", lambda: next(views))
    with caplog.at_level("WARNING", logger="instructrl"):
        check_capacity({"policy": (5, 1.0, 0.0)}, wait_s=60, poll_s=0.01)
    assert "after 1 node(s) were lost: waiting up to" in caplog.text
    assert "the cluster fits the groups again" in caplog.text

    monkeypatch.setattr(ray, "nodes", lambda: [b, c_dead])
    with pytest.raises(ConfigError, match=r"need 5 CPUs but the Ray cluster has 4 on 1 node\(s\).*after 1 node\(s\) "
                                          r"were lost; waited 0.05 s \(run.capacity_wait_s\).*run.resume=true"):
        check_capacity({"policy": (5, 1.0, 0.0)}, wait_s=0.05, poll_s=0.01)
    monkeypatch.setattr(ray, "nodes", lambda: [b])
    with pytest.raises(ConfigError, match=r"need 5 CPUs but the Ray cluster has 4 on 1 node\(s\) \[policy"):
        check_capacity({"policy": (5, 1.0, 0.0)}, wait_s=60, poll_s=0.01)


def test_a_preset_extends_another(tmp_path):
    """demo_ptx is the demo plus its own keys; an error in the child names the child's line, one in
    the parent the parent's; a cycle is refused."""
    demo, ptx = load_config("demo"), load_config("demo_ptx")
    assert ptx.ppo.ptx_coef == 0.5 and ptx.ppo.samples_per_prompt == demo.ppo.samples_per_prompt == 4
    assert ptx.run.name == "demo-ptx" and ptx.sft == demo.sft
    child = tmp_path / "child.yaml"
    child.write_text("extends: demo\nppo:\n  kl_coef: -1\n")
    with pytest.raises(ConfigError, match=r"child\.yaml:3: ppo\.kl_coef"):
        load_config(str(child))
    child.write_text(f"extends: {child}\n")
    with pytest.raises(ConfigError, match="a cycle"):
        load_config(str(child))


def test_the_colocated_schedule_puts_every_role_on_the_policys_bundles():
    from launcher.pipeline import role_specs

    models = dict.fromkeys(("policy", "reference", "critic", "reward"), None)
    for schedule, anchor in (("sync", None), ("colocated", "policy")):
        specs = role_specs(load_config("demo", [f"ppo.schedule={schedule}"]), models, 1)
        assert specs["policy"][1].colocate_with is None
        assert {r: s[1].colocate_with for r, s in specs.items() if r != "policy"} == dict.fromkeys(
            ("reference", "critic", "reward"), anchor)
        # taking turns, each role's ranks use the bundle's CPUs (the demo's 4 × 0.4, rounded)
        assert {s[1].threads for s in specs.values()} == ({None} if schedule == "sync" else {2})
