"""PPO, GRPO, RLOO, REINFORCE++, DPO and best-of-n from one SFT policy and one reward model, on the
embedded list task and on the task suite (bench/tasks: arithmetic, length, keywords, politeness):
held-out gold score with its standard error, the share of the gap between the SFT policy and a
perfect 1.0 that each closes, KL to the SFT policy, wall time and samples/s; per task the reward
model's held-out accuracy beside the labels' own agreement with the gold labeller (its ceiling).
Every run goes through the CLI, as a user's would (`instructrl sft`, `rm`, `ppo`, `dpo`);
best-of-n uses the library's groups.

    python bench/compare_algorithms.py [--tasks embedded suite arithmetic ...] [--out runs/bench-algorithms]

Writes <out>/<task>/results.json and prints a Markdown table per task (docs/algorithms.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tasks import SUITE  # noqa: E402

# What each algorithm changes over the demo config's PPO (configs/demo.yaml). The KL stays in the
# reward at the demo's β for all of them, so the estimator is the only difference. DPO runs with the
# demo config's dpo section.
ALGORITHMS = {
    "PPO (GAE, critic)": [],
    "GRPO": ["ppo.advantage_estimator=grpo", "ppo.score_baseline=none"],
    "Dr. GRPO": ["ppo.advantage_estimator=grpo", "ppo.score_baseline=none", "ppo.grpo_std=false",
                 "ppo.loss_agg=seq_mean_token_sum_norm"],
    "RLOO": ["ppo.advantage_estimator=rloo", "ppo.score_baseline=none"],
    "REINFORCE++": ["ppo.advantage_estimator=reinforce_pp", "ppo.score_baseline=none"],
    # REINFORCE++-baseline (Hu 2025, v2): each prompt's mean score subtracted first, then batch whitening
    "REINFORCE++ (prompt baseline)": ["ppo.advantage_estimator=reinforce_pp", "ppo.score_baseline=leave_one_out"],
}


def cli(args: list[str], log: Path) -> float:
    """Run `instructrl args...` (local backend, no W&B, one torch thread), its output in log; returns the wall
    seconds. One thread, however many cores: torch's CPU kernels split sums by thread count, so sorting's SFT
    policy trained on 2 threads is up to 5e-4 from the one trained on 1 (the same sampled gold, reward models
    from it keeping other epochs), while two runs on 1 thread agree bit for bit. Pinned, a figure can be
    trained again exactly; and two runs share the 2 vCPUs without oversubscribing them (two at 2 threads
    each trained sorting's reward models at 1.4-1.9 s per step, against 0.11 s at one thread each)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "launcher.cli", *args, "run.backend=local", "wandb.mode=disabled"],
                              cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(f"instructrl {' '.join(args)} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - start


class Task:
    """The data-file overrides of one task: the embedded task's own files (once written), or a suite
    task's (bench/tasks), written under <out>/task."""

    def __init__(self, name: str, out: Path):
        self.name, self.out = name, out
        self.base = out / "base"
        self.module = SUITE.get(name)

    def files(self) -> list[str]:
        """Overrides that make a run read the base run's data and tokenizer (for runs other than the base)."""
        data = self.base / "data"
        if self.module is None:
            return [f"rm.train_data={data}/comparisons_policy_train.jsonl",
                    f"rm.eval_data={data}/comparisons_policy_eval.jsonl", f"ppo.prompts={data}/ppo_train.jsonl",
                    f"ppo.eval_prompts={data}/ppo_eval.jsonl", f"model.tokenizer={self.base}/tokenizer"]
        return [o for o in self.module.overrides(self.out / "task") if not o.startswith("model.bpe_vocab")] + \
            [f"model.tokenizer={self.base}/tokenizer"]

    def base_overrides(self) -> list[str]:
        if self.module is None:
            return []
        self.module.write_task(self.out / "task")
        return self.module.overrides(self.out / "task")

    def eval_file(self) -> Path:
        return self.base / "data" / "ppo_eval.jsonl" if self.module is None else self.out / "task" / "eval.jsonl"

    def gold(self) -> str:
        if self.module is None:
            return "rlhf.task:gold_scores"
        spec = next(o for o in self.module.overrides(self.out / "task") if o.startswith("evaluation.gold_function="))
        return spec.split("=", 1)[1]

    def label_accuracy(self) -> float | None:
        """The rankings' agreement with the gold labeller (None for the embedded task)."""
        labels = self.out / "task" / "labels.json"
        return json.loads(labels.read_text())["label_accuracy"] if labels.exists() else None


def final_eval(run: Path, stage: str) -> tuple[dict, dict]:
    """The first held-out evaluation of a PPO or DPO stage, and the exported policy's (the last, or the
    one ppo.export chose)."""
    result = json.loads((run / stage / "result.json").read_text())
    evals = result["evaluations"]
    steps = sorted(evals, key=int)
    exported = str(result.get("exported_step") or steps[-1])
    return evals[steps[0]], evals[exported]


def throughput(run: Path) -> float:
    """Mean samples/s of the PPO loop's steps (generation to sync, evaluations excluded)."""
    rows = [json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    values = [r["perf/samples_per_s"] for r in rows if "perf/samples_per_s" in r]
    return statistics.fmean(values)


def best_of_n(task: Task, n: int, repeats: int, seed: int = 0, rm: Path | None = None) -> dict:
    """n samples of the SFT policy per held-out prompt, the favourite of the reward model `rm` (default: the
    base's) kept, judged by the gold function; `repeats` independent draws per prompt.
    KL(best-of-n ‖ SFT) ≤ log n − (n−1)/n."""
    import torch

    from launcher.config import load_config
    from launcher.worker_group import LocalGroup
    from models.generation import SamplingParams
    from models.tokenizer import load_tokenizer
    from parallel.engine import EngineConfig
    from parallel.host import ModelSource
    from rlhf.chat import render_prompts
    from rlhf.data import DataConfig, load_prompts
    from rlhf.evaluate import sample, summarize_gold
    from rlhf.functions import FunctionSpec, TaskFunction
    from rlhf.scoring import RewardWorker, ScoreBatch
    from rlhf.workers import PolicyWorker

    lengths = load_config("demo", task.files()).evaluation  # the task's response and prompt lengths
    tok = load_tokenizer(task.base / "tokenizer")
    prompts = render_prompts(tok, load_prompts(task.eval_file(), DataConfig()))
    gold = TaskFunction(FunctionSpec(function=task.gold()).resolved(ROOT), ROOT)
    policy = LocalGroup(PolicyWorker, ModelSource(path=str(task.base / "sft")), EngineConfig())
    reward = LocalGroup(RewardWorker, ModelSource(path=str(rm or task.base / "rm")), EngineConfig())
    start = time.perf_counter()
    repeated = [p for p in prompts for _ in range(n * repeats)]
    params = SamplingParams(max_new_tokens=lengths.max_new_tokens, temperature=1.0)
    scores, texts = [], []
    for i, gen in enumerate(sample(policy, tok, repeated, params, lengths.max_prompt_len, seed, 256)):
        batch = ScoreBatch.of(tok, gen, repeated[i * 256:(i + 1) * 256])
        scores.append(reward.map(RewardWorker.scores, batch).get()["rm"])
        texts += batch.responses
    best = torch.cat(scores).view(-1, n).argmax(-1)  # (prompts × repeats,)
    chosen = [texts[g * n + int(b)] for g, b in enumerate(best)]
    chosen_prompts = [p for p in prompts for _ in range(repeats)]
    from rlhf.data import fields_of

    values = gold([p.judged for p in chosen_prompts], chosen, fields_of(chosen_prompts))
    g = summarize_gold(values, repeats)
    wall = time.perf_counter() - start
    every = summarize_gold(gold([p.judged for p in repeated], texts, fields_of(repeated)), n * repeats)
    return {"gold": g.mean, "stderr": g.stderr, "kl": math.log(n) - (n - 1) / n, "wall_s": wall,
            "samples_per_s": len(repeated) / wall,  # "start": the SFT policy, from all n × repeats samples
            "start": {"eval/gold_score": every.mean, "eval/gold_stderr": every.stderr}}


DEMO = ["--config", "demo"]


def ensure_base(task: Task, extra: tuple[str, ...] = ()) -> float:
    """The task's SFT policy and reward model (each trained once, with `extra` overrides, kept under
    <out>/base: a missing reward model is trained from the SFT policy that is there); returns the
    reward model's held-out pair accuracy."""
    base = DEMO + [f"run.out_dir={task.out}", "run.name=base", *task.base_overrides(), *extra]
    if not (task.base / "sft" / "result.json").exists():
        shutil.rmtree(task.base, ignore_errors=True)
        cli(["sft", *base], task.out / "sft.log")
    if not (task.base / "rm" / "result.json").exists():
        shutil.rmtree(task.base / "rm", ignore_errors=True)
        cli(["rm", *base], task.out / "rm.log")
    return json.loads((task.base / "rm" / "result.json").read_text())["eval/accuracy"]


def rl_run(task: Task, slug: str, steps: int, extra: list[str]) -> dict:
    """One PPO-family run from the task's SFT policy against its reward model, `extra` overrides on
    top of the demo config; its last evaluation (gold ± s.e., KL), wall time, samples/s, and the first
    evaluation (the SFT policy's) as "start"."""
    common = DEMO + [f"run.out_dir={task.out}", "run.overwrite=true", *task.files()]
    wall = cli(["ppo", *common, f"run.name={slug}", f"ppo.policy_init={task.base}/sft",
                f"ppo.reward_model={task.base}/rm", f"ppo.steps={steps}", *extra], task.out / f"{slug}.log")
    first, last = final_eval(task.out / slug, "ppo")
    return {"gold": last["eval/gold_score"], "stderr": last["eval/gold_stderr"], "kl": last["eval/kl"],
            "wall_s": wall, "samples_per_s": throughput(task.out / slug), "start": first, "steps": steps}


def run_task(task: Task, steps: int, n: int, only: list[str] | None = None, settings: tuple[str, ...] = ()) -> dict:
    """Every method on one task (or those named in `only`, keeping the others' earlier results), each
    RL run with `settings` (overrides) on top of the demo config."""
    saved = task.out / "results.json"
    results: dict[str, dict] = {}
    if only and saved.exists():  # the earlier runs keep the number of steps they ran
        earlier = json.loads(saved.read_text())
        results = {k: v if k == "DPO" or k.startswith("best-of") else {"steps": earlier["steps"], **v}
                   for k, v in earlier["algorithms"].items()}
    rm_acc = ensure_base(task)
    common = DEMO + [f"run.out_dir={task.out}", "run.overwrite=true", *task.files()]
    for name, extra in ALGORITHMS.items():
        if only and name not in only:
            continue
        slug = name.replace(" (prompt baseline)", "-baseline").split()[-1 if name.startswith("Dr.") else 0]
        slug = ("dr-" if name.startswith("Dr.") else "") + slug.lower().replace("+", "p")
        results[name] = rl_run(task, slug, steps, [*settings, *extra])
        print(f"{task.name} {name}: {results[name]['gold']:.3f} ± {results[name]['stderr']:.3f}", flush=True)
    if not only or "DPO" in only:
        wall = cli(["dpo", *common, "run.name=dpo", f"dpo.init={task.base}/sft"], task.out / "dpo.log")
        first, last = final_eval(task.out / "dpo", "dpo")
        results["DPO"] = {"gold": last["eval/gold_score"], "stderr": last["eval/gold_stderr"], "kl": last["eval/kl"],
                          "wall_s": wall, "samples_per_s": None, "start": first}
    if not only or f"best-of-{n}" in only:
        results[f"best-of-{n}"] = best_of_n(task, n, repeats=4)
    # The SFT policy's gold: from an RL run's first evaluation (the held-out sampling every run uses),
    # else from best-of-n's samples
    sft = next((r["start"] for k, r in results.items() if not k.startswith("best-of")), None) or \
        results[f"best-of-{n}"]["start"]
    return {"sft": {"gold": sft["eval/gold_score"], "stderr": sft["eval/gold_stderr"]}, "rm_accuracy": rm_acc,
            "label_accuracy": task.label_accuracy(), "steps": steps, "settings": list(settings), "algorithms": results}


def other_budget(a: dict, r: dict) -> int | None:
    """The RL steps of result `a` when they are not its task's (`r`'s): a column kept from an earlier run."""
    return a["steps"] if a.get("steps", r["steps"]) != r["steps"] else None


def table(task: str, r: dict) -> str:
    sft = r["sft"]
    ceiling = f" (the labels' own agreement with the gold: {r['label_accuracy']:.3f})" if r.get("label_accuracy") \
        else ""
    lines = [f"**{task}** — SFT policy {sft['gold']:.3f} ± {sft['stderr']:.3f}; reward model held-out pair "
             f"accuracy {r['rm_accuracy']:.3f}{ceiling}; {r['steps']} RL steps × 128 samples",
             "", "| method | held-out gold | gain over SFT (standard errors) | gap to 1.0 closed | KL to SFT (nats) | "
                 "wall time (s) | samples/s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    order = [*ALGORITHMS, "DPO", *(k for k in r["algorithms"] if k.startswith("best-of"))]
    for name in (k for k in order if k in r["algorithms"]):
        a = r["algorithms"][name]
        gain = a["gold"] - sft["gold"]
        z = gain / math.hypot(a["stderr"], sft["stderr"])
        rate = f"{a['samples_per_s']:.1f}" if a["samples_per_s"] else "— (no sampling)"
        kl = f"≤ {a['kl']:.2f}" if name.startswith("best-of") else f"{a['kl']:.2f}"  # the analytic bound
        closed = gain / (1 - sft["gold"]) if sft["gold"] < 1 else float("nan")
        label = f"{name} ({a['steps']} steps)" if other_budget(a, r) else name
        lines.append(f"| {label} | {a['gold']:.3f} ± {a['stderr']:.3f} | {gain:+.3f} ({z:.1f}) | {100 * closed:.0f}% | "
                     f"{kl} | {a['wall_s']:.0f} | {rate} |")
    return "\n".join(lines)


def summary(per_task: dict[str, dict], n: int, bar: float = 0.5) -> str:
    """One row per task (#17's result table): SFT gold, PPO's gold with the share of the gap to 1.0 it
    closes and its KL, GRPO, RLOO and best-of-n gold, the reward model's accuracy beside its
    ceiling, PPO's wall time; then whether PPO closes `bar` of the gap on every task."""
    def cell(r: dict, name: str, sft: float) -> str:
        a = r["algorithms"].get(name)
        if a is None:
            return "–"
        other = f", {a['steps']} steps" if other_budget(a, r) else ""
        return f"{a['gold']:.3f} ± {a['stderr']:.3f} ({100 * (a['gold'] - sft) / (1 - sft):.0f}%{other})"

    lines = ["| task | SFT gold | PPO gold (gap closed) | PPO KL | GRPO | RLOO | best-of-" + str(n) +
             " | RM accuracy (labels' ceiling) | PPO wall time (s) |", "| --- |" + " --- |" * 8]
    short = []
    for task, r in per_task.items():
        sft = r["sft"]["gold"]
        ppo = r["algorithms"].get("PPO (GAE, critic)")
        if ppo is None or (ppo["gold"] - sft) / (1 - sft) < bar:
            short.append(task)
        ceiling = f" ({r['label_accuracy']:.3f})" if r.get("label_accuracy") else ""
        kl, wall = (f"{ppo['kl']:.2f}", f"{ppo['wall_s']:.0f}") if ppo else ("–", "–")
        lines.append(f"| {task} | {sft:.3f} ± {r['sft']['stderr']:.3f} | {cell(r, 'PPO (GAE, critic)', sft)} | {kl} | "
                     f"{cell(r, 'GRPO', sft)} | {cell(r, 'RLOO', sft)} | {cell(r, f'best-of-{n}', sft)} | "
                     f"{r['rm_accuracy']:.3f}{ceiling} | {wall} |")
    verdict = "yes" if not short else f"no: {', '.join(short)} below"
    return "\n".join(lines) + f"\n\nPPO closes ≥ {100 * bar:.0f}% of the gap on every task: {verdict}"


def curve(run: Path, stage: str = "ppo") -> str:
    """A run's held-out evaluations as a Markdown table: gold, the reward model's score (the proxy),
    √KL and response length per evaluation step (the over-optimisation curve, Gao et al. 2022), and
    the KL coefficient β of the training step at each (it moves when ppo.kl_target is set)."""
    evals = json.loads((run / stage / "result.json").read_text())["evaluations"]
    steps = sorted(evals, key=int)
    metrics = run / stage / "metrics.jsonl"
    rows_logged = map(json.loads, metrics.read_text().splitlines()) if metrics.exists() else ()
    beta = {str(m["step"]): m["kl/coef"] for m in rows_logged if "kl/coef" in m}
    rows = [("gold", "eval/gold_score", "{:.3f}"), ("reward-model score (proxy, raw)", "eval/rm_score", "{:.2f}"),
            ("√KL", "eval/sqrt_kl", "{:.2f}"), ("response length (tokens)", "eval/response_length", "{:.1f}")]
    lines = ["| PPO step | " + " | ".join(steps) + " |", "| --- |" + " --- |" * len(steps)]
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt.format(evals[s].get(key, float("nan"))) for s in steps) + " |")
    if beta:
        cells = (f"{beta[s]:.3f}" if s in beta else "–" for s in steps)
        lines.append("| β (KL coefficient) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["embedded", "arithmetic"],
                        choices=["embedded", "suite", *SUITE], help="'suite': every task of bench/tasks")
    parser.add_argument("--out", default="runs/bench-algorithms")
    parser.add_argument("--steps", type=int, default=150,
                        help="RL steps of each PPO-family run (150: the suite was read at it; the default is 300)")
    parser.add_argument("--n", type=int, default=8, help="n of the best-of-n baseline")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of every RL run (e.g. ppo.kl_coef=0.3)")
    parser.add_argument("--only", nargs="+", help="rerun these methods only (by their table name), keep the rest")
    parser.add_argument("--table", action="store_true", help="print the tables of the saved results; run nothing")
    parser.add_argument("--curve", metavar="RUN", help="print the evaluations of each task's run RUN (e.g. ppo); "
                                                      "run nothing")
    args = parser.parse_args()
    names = [t for name in args.tasks for t in (SUITE if name == "suite" else [name])]
    per_task = {}
    for name in dict.fromkeys(names):
        out = (ROOT / args.out / name).resolve()
        out.mkdir(parents=True, exist_ok=True)
        if args.table or args.curve:
            if args.curve:
                print(curve(out / args.curve), "\n")
                continue
            per_task[name] = json.loads((out / "results.json").read_text())
            print(table(name, per_task[name]), "\n")
            continue
        per_task[name] = result = run_task(Task(name, out), args.steps, args.n, args.only, tuple(args.set))
        (out / "results.json").write_text(json.dumps(result, indent=1))
        print(table(name, result), flush=True)
    if len(per_task) > 1:
        print(summary(per_task, args.n))


if __name__ == "__main__":
    main()
