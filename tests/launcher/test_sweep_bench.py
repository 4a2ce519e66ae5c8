"""The suite's bench scripts (bench/sweep_settings.py, sweep_defaults.py, compare_algorithms.py,
same_reward_model.py, read_patience.py, keep_results.py, below_best.py): settings that validate and pin their
day's defaults, the tables and the leave-one-task-out choice, results saved under a lock, recorded against the very
same reward model or read off a longer run as ppo.patience stops it, kept in the repository, why a run ends below
its best, and runs that train on one thread (bench/tail_average.py: test_tail_average.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_every_sweep_setting_is_a_valid_demo_config():
    """bench/sweep_settings.py's settings, each on top of the demo config, pass config validation (a
    mistyped key would otherwise fail only minutes into a sweep); the PPO ones of 2026-11-24 pin that
    day's demo config under their own overrides, and the variations of the defaults of 2026-11-25 and of
    the fourth round's fixed β pin those, so that they mean the same runs after the defaults changed."""
    from bench.sweep_settings import DEFAULTS_2026_11_25, DEMO_2026_11_24, RM_SETTINGS, ROUND_4, ROUND_5, SETTINGS
    from launcher.config import load_config

    for label, overrides in {**SETTINGS, **RM_SETTINGS}.items():
        # {out}: the task's directory; a mix of the task's own text needs the task's tokenizer, which the sweep sets
        own_text = ["model.bpe_vocab=512"] * any(o.startswith("ppo.ptx_data=") for o in overrides)
        load_config("demo", [*(o.format(out="runs/a-task") for o in overrides), *own_text])
        if label in SETTINGS and label != "defaults":
            pinned = DEFAULTS_2026_11_25 if label.startswith("defaults-") else \
                ROUND_4 if label.startswith("r4-") else \
                ROUND_5 if label.split("-")[0] in {f"r{n}" for n in (5, 7, 9, 10, 11, *range(14, 33), *range(34, 39))} \
                else DEMO_2026_11_24
            assert overrides[:len(pinned)] == pinned, label
    assert SETTINGS["defaults"] == []
    morning = load_config("demo", SETTINGS["defaults-2026-11-25"]).ppo
    assert (morning.kl_coef, morning.samples_per_prompt, morning.ppo_epochs, morning.kl_target) == (0.5, 8, 4, None)
    old = load_config("demo", SETTINGS["demo-2026-11-24"]).ppo
    assert (old.kl_coef, old.ppo_epochs, old.policy.optim.lr, old.policy.optim.min_lr_ratio) == (0.2, 2, 1e-4, 1.0)
    assert (old.missing_eos_score, old.score_scale, old.samples_per_prompt, old.kl_target) == (None, "none", 8, None)
    candidate = load_config("demo", SETTINGS["r4-beta-0.4"]).ppo
    assert (candidate.kl_coef, candidate.samples_per_prompt, candidate.kl_target) == (0.4, 4, None)
    adaptive = load_config("demo", SETTINGS["r4-target-0.5"]).ppo
    assert (adaptive.kl_coef, adaptive.kl_target, adaptive.kl_horizon) == (0.4, 0.5, 1000)
    half = load_config("demo", SETTINGS["r7-lr-1e-4"]).ppo  # the sixth round's pilots: on top of β 0.1
    assert (half.kl_coef, half.kl_target, half.policy.optim.lr) == (0.1, None, 1e-4)
    fixed = load_config("demo", SETTINGS["r5-beta-0.1"]).ppo
    assert (fixed.kl_coef, fixed.kl_target, fixed.samples_per_prompt, fixed.export) == (0.1, None, 4, "last")
    assert load_config("demo", SETTINGS["r11-export"]).ppo.export == "objective"
    stopping = load_config("demo", [o.format(out="runs/a-task") for o in SETTINGS["r34-patience-2-seed4"]]).ppo
    assert stopping.patience == 2 and stopping.reward_model == "runs/a-task/sweep-rm-min-epochs-10-s4/rm"
    assert load_config("demo", SETTINGS["r5-target-2"]).ppo.kl_target == 2.0


def test_the_suite_table_names_a_column_run_at_another_budget():
    """`compare_algorithms.py --only X --steps N` reruns X alone: the other methods' saved results keep
    the steps they ran with, and the table says so beside them instead of passing them off as N-step runs."""
    from bench.compare_algorithms import summary, table

    def run(gold: float, steps: int | None = None) -> dict:
        return {"gold": gold, "stderr": 0.02, "kl": 0.3, "wall_s": 100, "samples_per_s": 10.0,
                **({"steps": steps} if steps else {})}

    result = {"sft": {"gold": 0.4, "stderr": 0.02}, "rm_accuracy": 0.85, "label_accuracy": 0.9, "steps": 300,
              "algorithms": {"PPO (GAE, critic)": run(0.7, 300), "GRPO": run(0.6, 150), "RLOO": run(0.65),
                             "best-of-8": {**run(0.8), "kl": 1.2}}}
    text = summary({"arithmetic": result}, 8)
    assert "0.700 ± 0.020 (50%)" in text and "0.600 ± 0.020 (33%, 150 steps)" in text
    assert "0.650 ± 0.020 (42%)" in text  # no steps saved: the task's own
    rows = table("arithmetic", result)
    assert "| GRPO (150 steps) |" in rows and "| PPO (GAE, critic) |" in rows


def test_the_curve_shows_beta_at_each_evaluation(tmp_path):
    """`compare_algorithms.py --curve RUN`: one column per evaluation, and the β the controller had
    reached at that step (from metrics.jsonl; none before the first step)."""
    from bench.compare_algorithms import curve

    stage = tmp_path / "ppo"
    stage.mkdir()
    evals = {str(s): {"eval/gold_score": g, "eval/rm_score": 0.1, "eval/sqrt_kl": 0.5, "eval/response_length": 2.0}
             for s, g in ((0, 0.4), (2, 0.6))}
    (stage / "result.json").write_text(json.dumps({"evaluations": evals}))
    rows = [{"step": s, "kl/coef": b} for s, b in ((1, 0.4), (2, 0.39))] + [{"step": 2, "eval/gold_score": 0.6}]
    (stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = curve(tmp_path).splitlines()
    assert lines[0] == "| PPO step | 0 | 2 |" and "| gold | 0.400 | 0.600 |" in lines
    assert lines[-1] == "| β (KL coefficient) | – | 0.390 |"


def test_held_out_table_chooses_each_tasks_setting_on_the_other_tasks():
    """Leave one task out by hand: setting 'a' wins on x and y, 'b' on z; so x is judged under the
    setting that wins on {y, z}, and so on. 'lost': a final gold more than one s.e. below the run's best."""
    from bench.sweep_defaults import held_out_table, table

    def run(closed: float, gold: float = 0.8, peak: float = 0.8) -> dict:
        return {"closed": closed, "kl": 0.5, "gold": gold, "peak": peak, "peak_stderr": 0.01}

    per_task = {"x": {"a/s0/150": run(0.9), "b/s0/150": run(0.1)},
                "y": {"a/s0/150": run(0.6), "a/s1/150": run(0.4), "b/s0/150": run(0.3)},
                "z": {"a/s0/150": run(0.2, 0.70, 0.75), "b/s0/150": run(0.8)}}
    # on the others: for x, a = mean(0.5, 0.2) = 0.35 < b = mean(0.3, 0.8) = 0.55 → b (x gets 10%);
    # for y, a = mean(0.9, 0.2) = 0.55 > b = 0.45 → a (y: 50%, seeds 60 and 40);
    # for z, a = mean(0.9, 0.5) = 0.70 > b = 0.2 → a (z: 20%, its gold 0.70 lost its best 0.75)
    lines = held_out_table(per_task, ["a", "b"], 150).splitlines()
    assert lines[2].startswith("| x | b (55% on the others) | 10% (10) |")
    assert lines[3].startswith("| y | a (55% on the others) | 50% (60, 40) |") and lines[3].endswith("(kept) |")
    assert lines[4].startswith("| z | a (70% on the others) | 20% (20) |") and "0.700 vs 0.750 (lost)" in lines[4]
    assert lines[-1] == "held out, PPO closes ≥ 50% of the gap on every task: no: x, z below"
    rows = table(per_task, ["a", "b"], 150).splitlines()  # each setting's runs that end below their best
    assert rows[2].startswith("| a | 90% (90) · 0.50 | 50% (60, 40) · 0.50 |") and rows[2].endswith("| 1 of 4 |")
    assert rows[3].endswith("| 0 of 3 |")


def test_draws_take_each_seed_from_its_own_setting():
    """--draws: seeds of the whole run as one row, seed 0 from one setting and seed 1 from another; a pick
    without a run is left out, and the other seeds of each setting are not taken."""
    from bench.sweep_defaults import draw_labels, draws, held_out_table

    runs = {"a/s0/150": {"closed": 0.3}, "a/s1/150": {"closed": 0.4}, "b/s0/150": {"closed": 0.8},
            "b/s1/150": {"closed": 0.9}, "b/s1/50": {"closed": 0.0}}
    assert draws(runs, ["a:0", "b:1", "c:2"], 150) == {"draws/s0/150": {"closed": 0.3}, "draws/s1/150": {"closed": 0.9}}
    per_task = {t: {**draws(runs, ["a:0", "b:1"], 150)} for t in ("x", "y")}
    for r in (v for t in per_task.values() for v in t.values()):
        r |= {"kl": 1.0, "gold": 0.9, "peak": 0.9, "peak_stderr": 0.01}
    assert "| x | draws (60% on the others) | 60% (30, 90) |" in held_out_table(per_task, ["draws"], 150)
    named = draws(runs, ["old=a:0", "old=b:1", "new=c:2", "new=b:1"], 150)
    assert {k: v["closed"] for k, v in named.items()} == {"old/s0/150": 0.3, "old/s1/150": 0.9, "new/s1/150": 0.9}
    assert draw_labels(["old=a:0", "b:1", "new=c:2", "old=b:1"]) == ["old", "draws", "new"]
    longer = {**runs, "c/s2/300": {"closed": 0.7}}  # a candidate of another budget, read beside 150-step runs
    assert draws(longer, ["new=c:2@300", "old=c:2"], 150) == {"new/s2/150": {"closed": 0.7}}


def saved_run(run: Path, steps: dict[int, tuple[list[float], float]]) -> None:
    """A finished run's directory as the sweep leaves it: one sample per prompt, β 0.5, each evaluation's
    per-prompt objectives (score − 0.5·KL at KL 2) and gold."""
    (run / "ppo" / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text("ppo: {kl_coef: 0.5}\nevaluation: {samples_per_prompt: 1}\n")
    for step, (objective, gold) in steps.items():
        rows = [{"score": o + 0.5 * 2.0, "kl": 2.0, "gold": gold} for o in objective]
        (run / "ppo" / "samples" / f"step-{step}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    evals = {str(s): {"eval/gold_score": g, "eval/gold_stderr": 0.01, "eval/kl": 2.0} for s, (_, g) in steps.items()}
    (run / "ppo" / "result.json").write_text(json.dumps({"evaluations": evals}))


def test_reexport_reads_each_rule_off_the_saved_evaluations(tmp_path):
    """--export-rule: a run's gold as if it had exported by another rule, from its saved per-sample score and KL
    (one sample per prompt, β 0.5); the gold is the chosen evaluation's, never a chooser."""
    from bench.run_evaluations import reexport

    run = tmp_path / "sweep-x-s0-150"
    # per-prompt objectives: step 10 [0.8, 0.2, 0.8, 0.2] (0.5), step 20 [0.6] × 4 (0.6): the last is best, step 10
    # trails it by 0.1 ± 0.173, within noise
    saved_run(run, {0: ([0.0] * 4, 0.5), 10: ([0.8, 0.2, 0.8, 0.2], 0.9), 20: ([0.6] * 4, 0.7)})
    entry = {"gold": 0.7, "stderr": 0.01, "kl": 2.0, "sft": 0.5, "closed": 0.4, "peak": 0.9, "peak_stderr": 0.01}
    assert reexport(run, entry, "objective") == pytest.approx(entry | {"exported_step": 20})
    earliest = reexport(run, entry, "earliest")
    assert earliest["exported_step"] == 10 and earliest["gold"] == 0.9 and earliest["closed"] == pytest.approx(0.8)


def test_a_run_of_the_bound_is_read_as_the_run_patience_stops(tmp_path):
    """bench/read_patience.py: objectives rising beyond noise to step 20, then flat: patience 2 stops after step 40
    and exports its last (step 40, equal to 20); the later gold (step 50's 0.99) is not the stopped run's; patience
    3 would stop at the last evaluation anyway (runs all its steps)."""
    from bench.read_patience import read_off, stop_step

    run = tmp_path / "sweep-x-s0-50"
    flat = [0.6, 0.5, 0.6, 0.5]
    saved_run(run, {0: ([0.0] * 4, 0.5), 10: ([0.3] * 4, 0.7), 20: (flat, 0.8), 30: (flat, 0.85), 40: (flat, 0.75),
                    50: (flat, 0.99)})
    entry = {"gold": 0.99, "stderr": 0.01, "kl": 2.0, "sft": 0.5, "closed": 0.98, "wall_s": 100.0}
    stopped = read_off(run, entry, 2)
    assert (stopped["stopped_at"], stopped["exported_step"], stopped["gold"]) == (40, 40, 0.75)
    assert (stopped["peak"], stopped["closed"], stopped["wall_s"]) == (0.85, pytest.approx(0.5), pytest.approx(80.0))
    assert "stopped by ppo.patience=2 after step 40" in stopped["read_off"]
    objectives = {s: [float(s)] * 4 for s in (0, 10, 20)}
    assert stop_step(objectives, 3) == 20 and stop_step({**objectives, 30: [20.0] * 4, 40: [20.0] * 4}, 2) == 40


def test_a_sweep_keeps_the_results_another_sweep_saved_while_its_run_ran(tmp_path, monkeypatch):
    """Sweeps of other seeds write the same sweep.json: each save reads the file again, under a lock."""
    import bench.sweep_defaults as sweep
    from bench.compare_algorithms import Task

    monkeypatch.setattr(sweep, "ensure_base", lambda task, base: None)
    task = Task("sorting", tmp_path)
    saved = tmp_path / "sweep.json"
    saved.write_text(json.dumps({"a/s0/150": {"closed": 0.1}}))

    def run_while_another_saves():
        saved.write_text(json.dumps({**json.loads(saved.read_text()), "a/s1/150": {"closed": 0.2}}))
        return {"closed": 0.3}, "done"

    results = sweep.accumulate(task, "sweep.json", (), [("a/s0/150", None), ("b/s0/150", run_while_another_saves)])
    assert json.loads(saved.read_text()) == results == {"a/s0/150": {"closed": 0.1}, "a/s1/150": {"closed": 0.2},
                                                         "b/s0/150": {"closed": 0.3}}
    assert (tmp_path / "sweep.json.lock").exists()


def test_a_run_is_recorded_under_a_candidate_only_against_the_very_same_reward_model(tmp_path):
    """bench/same_reward_model.py: a setting whose reward model comes out bit-identical reuses the run made."""
    from bench.same_reward_model import record

    for rm, weights in (("old/rm", b"w1"), ("same/rm", b"w1"), ("other/rm", b"w2")):
        (tmp_path / rm).mkdir(parents=True)
        (tmp_path / rm / "model.safetensors").write_bytes(weights)
    (tmp_path / "old/rm/result.json").write_text(json.dumps({"epochs": 12}))
    run = {"closed": 0.4, "overrides": ["ppo.kl_coef=0.1", f"ppo.reward_model={tmp_path / 'old/rm'}"]}
    (tmp_path / "sweep.json").write_text(json.dumps({"a/s4/150": run}))
    (tmp_path / "sweep-a-s4-150").mkdir()

    with pytest.raises(SystemExit, match="differs"):
        record(tmp_path, "a/s4/150", "b/s4/150", "old/rm", candidate="other/rm")
    with pytest.raises(SystemExit, match="under the floor of 13"):
        record(tmp_path, "a/s4/150", "b/s4/150", "old/rm", floor=13)
    assert "b/s4/150" not in json.loads((tmp_path / "sweep.json").read_text())

    assert "bit-identical" in record(tmp_path, "a/s4/150", "b/s4/150", "old/rm", candidate="same/rm")
    assert "trained 12 epochs" in record(tmp_path, "a/s4/150", "c/s4/150", "old/rm", floor=10)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["b/s4/150"]["closed"] == 0.4 and saved["b/s4/150"]["same_as"].startswith("a/s4/150: ")
    assert saved["b/s4/150"]["overrides"] == ["ppo.kl_coef=0.1", f"ppo.reward_model={tmp_path / 'same/rm'}"]
    assert (tmp_path / "sweep-b-s4-150").resolve() == (tmp_path / "sweep-a-s4-150").resolve()


def test_a_sweeps_results_are_kept_without_its_weights_and_read_back_as_the_runs_are(tmp_path, monkeypatch, capsys):
    """bench/keep_results.py: the JSON the tables read is copied (a run linked under a candidate's name is not
    copied twice), weights and samples are not, and the table read off the copy is the runs' own; of the samples a
    digest is kept (each evaluation's per-prompt objective and gold), off which each export rule and below_best
    read as they read the run."""
    import bench.keep_results as kept
    import bench.sweep_defaults as sweep

    task = tmp_path / "runs" / "r33" / "sorting"
    run = {"gold": 0.78, "stderr": 0.02, "kl": 1.6, "sft": 0.562, "closed": 0.5, "wall_s": 400.0, "peak": 0.78,
           "peak_stderr": 0.02, "peak_kl": 1.6}
    files = {"sweep.json": json.dumps({"r32-rm-min10-seed4/s4/150": run}), "best_of.json": "{}", "best_of-r.json": "{}",
             "base/sft/result.json": "{}", "base/sft/model.safetensors": "w",
             "sweep-a-s4-150/ppo/tail_average.json": "{}", "sweep-a-s4-150/ppo/average-4/model.safetensors": "w",
             "sweep-rm-x-s4/rm/result.json": "{}",
             "sweep-rm-x-s4/rm/ensemble/1/result.json": "{}", "task/sft.jsonl": "{}", "task/labels.json": "{}"}
    for rel, text in files.items():
        (task / rel).parent.mkdir(parents=True, exist_ok=True)
        (task / rel).write_text(text)
    # step 10 leads the last (20) by 0.1 ± 0.17 of objective: "objective" exports 20, "earliest" 10 (0.9, not 0.7)
    saved_run(task / "sweep-a-s4-150", {0: ([0.0] * 4, 0.5), 10: ([0.8, 0.2, 0.8, 0.2], 0.9), 20: ([0.6] * 4, 0.7)})
    (task / "sweep-b-s4-150").symlink_to(task / "sweep-a-s4-150")
    monkeypatch.setattr(kept, "KEPT", tmp_path / "kept")

    kept.main([str(task.parent)])
    copied = sorted(str(p.relative_to(tmp_path / "kept" / "r33" / "sorting"))
                    for p in (tmp_path / "kept").rglob("*") if p.is_file())
    assert copied == ["base/sft/result.json", "best_of-r.json", "best_of.json", "sweep-a-s4-150/ppo/evaluations.json",
                      "sweep-a-s4-150/ppo/result.json", "sweep-a-s4-150/ppo/tail_average.json",
                      "sweep-rm-x-s4/rm/result.json", "sweep.json", "task/labels.json"]
    kept_run = tmp_path / "kept" / "r33" / "sorting" / "sweep-a-s4-150"
    assert json.loads((kept_run / "ppo" / "evaluations.json").read_text())["10"] == {
        "objective": pytest.approx([0.8, 0.2, 0.8, 0.2]), "gold": [0.9] * 4}
    for rule, step in (("objective", 20), ("earliest", 10)):
        assert sweep.reexport(kept_run, run, rule) == sweep.reexport(task / "sweep-a-s4-150", run, rule)
        assert sweep.reexport(kept_run, run, rule)["exported_step"] == step

    tables = []
    for out in (task.parent, tmp_path / "kept" / "r33"):
        monkeypatch.setattr("sys.argv", ["sweep_defaults", "--out", str(out), "--tasks", "sorting", "--table",
                                         "--settings", "r32-rm-min10-seed4"])
        sweep.main()
        tables.append(capsys.readouterr().out)
    assert "50%" in tables[0] and tables[0] == tables[1]
    with pytest.raises(SystemExit, match="no task directory"):
        kept.main([str(tmp_path / "kept" / "r33" / "sorting" / "base")])


def test_the_issues_table_reads_the_reward_model_each_draw_trained_against(tmp_path):
    """bench/sweep_defaults.report: best-of-n and the reward model's accuracy are those of the reward models the
    chosen runs trained against (their ppo.reward_model, recorded under another sweep's directory and read under
    this one's), averaged over the draws, not the base's; a missing best-of-n with no reward model to compute it
    is refused by name."""
    from bench.compare_algorithms import Task
    from bench.sweep_defaults import report

    task = Task("sorting", tmp_path / "kept" / "r33" / "sorting")
    files = {"base/sft/result.json": {"eval/gold_score": 0.56, "demonstrations_gold": 0.955},
             "base/rm/result.json": {"eval/accuracy": 0.5}, "best_of.json": {"gold": 0.1},
             "sweep-rm-x-s4/rm/result.json": {"eval/accuracy": 0.9}, "best_of-sweep-rm-x-s4.json": {"gold": 0.7},
             "sweep-rm-x-s5/rm/result.json": {"eval/accuracy": 0.8}, "best_of-sweep-rm-x-s5.json": {"gold": 0.6},
             "task/labels.json": {"label_accuracy": 0.95}}
    for rel, value in files.items():
        (task.out / rel).parent.mkdir(parents=True, exist_ok=True)
        (task.out / rel).write_text(json.dumps(value))

    def run(k: int) -> dict:
        return {"gold": 0.8, "stderr": 0.02, "kl": 1.5, "sft": 0.56, "closed": 0.55, "wall_s": 500.0,
                "overrides": ["ppo.reward_model=auto", f"ppo.reward_model=/elsewhere/r33/sorting/sweep-rm-x-s{k}/rm"]}

    table = report({"sorting": task}, {"sorting": {"d/s4/300": run(4), "d/s5/300": run(5)}}, "d", 300)
    row = table.splitlines()[-1]
    assert "| 0.650 |" in row and "| 0.850 (0.950) |" in row and "0.800 · 55%" in row, row
    (task.out / "best_of-sweep-rm-x-s5.json").unlink()
    with pytest.raises(SystemExit, match="best_of-sweep-rm-x-s5.json: missing"):
        report({"sorting": task}, {"sorting": {"d/s4/300": run(4), "d/s5/300": run(5)}}, "d", 300)


def test_below_best_reads_the_gold_and_the_objective_prompt_by_prompt_at_the_exported_and_the_best_step(tmp_path):
    """bench/below_best.py: for a run ending more than a standard error below its best evaluation, the paired gold
    gap and objective gap between the gold's best step and the exported one, and the objective's highest step,
    worked out by hand (3 prompts × 2 samples, β 0.1); a run within a standard error of its best is not listed."""
    from bench.below_best import table
    from bench.keep_results import keep

    task = tmp_path / "notes"
    gold = {0: [0.5] * 6, 25: [1, 1, 1, 0, 1, 1], 50: [1, 0, 0, 0, 1, 1]}  # per prompt: 25 → 1, .5, 1; 50 → .5, 0, 1
    score = {0: 0.0, 25: 1.0, 50: 2.0}  # KL 1 everywhere: objective 0.9 at step 25, 1.9 at step 50

    def write_run(name: str, exported_gold: float) -> None:
        run = task / name
        (run / "ppo" / "samples").mkdir(parents=True)
        (run / "config.yaml").write_text("ppo: {kl_coef: 0.1}\nevaluation: {samples_per_prompt: 2}\n")
        for step, values in gold.items():
            rows = [{"gold": g, "score": score[step], "kl": 1.0 if step else 0.0} for g in values]
            (run / "ppo" / "samples" / f"step-{step}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        evals = {str(s): {"eval/gold_score": g, "eval/gold_stderr": 0.05}
                 for s, g in {0: 0.5, 25: 5 / 6, 50: exported_gold}.items()}
        (run / "ppo" / "result.json").write_text(json.dumps({"evaluations": evals, "exported_step": 50}))

    write_run("sweep-r-s4-300", 0.5)
    write_run("sweep-r-s5-300", 0.8)  # within 0.05 of 5/6: not below its best
    (task / "sweep.json").write_text(json.dumps({"r/s4/300": {}, "r/s5/300": {}}))
    rows = table(tmp_path, ["notes"], ["r/s4/300", "r/s5/300"]).splitlines()[2:]
    assert rows == ["| notes | r/s4/300 | 50: 0.500 | 25: 0.833 ± 0.050 | +0.3333 ± 0.1667 | -1.0000 ± 0.0000 | 50 |"]
    keep(tmp_path, tmp_path / "kept")  # without the samples, off their digest
    assert table(tmp_path / "kept", ["notes"], ["r/s4/300", "r/s5/300"]).splitlines()[2:] == rows
    with pytest.raises(SystemExit, match="no run r/s6/300"):
        table(tmp_path, ["notes"], ["r/s6/300"])


def test_the_suites_runs_train_on_one_thread_whatever_the_shell_set(tmp_path, monkeypatch):
    """bench/compare_algorithms.cli pins OMP_NUM_THREADS=1: a run is bit-reproducible only at one thread count
    (torch's CPU sums split by threads), so the suite's figures are trained at one, whatever the shell set."""
    import subprocess

    import bench.compare_algorithms as bench

    seen = {}

    def run(cmd, **kwargs):
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(bench.subprocess, "run", run)
    bench.cli(["sft"], tmp_path / "sft.log")
    assert seen["OMP_NUM_THREADS"] == "1" and seen["PATH"] == bench.os.environ["PATH"]
