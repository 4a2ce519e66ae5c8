"""The run's summary: the start policy against the exported one on every held-out metric, each stage's
stop and model, printed at the end of a run and kept as summary.json."""

from __future__ import annotations

import math

from launcher.config import Config
from rlhf.export_choice import exported_step


def summarize(cfg: Config, ppo: dict, sft: dict | None = None, rm: dict | None = None, stage: str = "ppo") -> dict:
    """The start (step 0: the SFT policy) against the final policy (of PPO or DPO) on every evaluation
    metric."""
    evals = ppo["evaluations"]
    final_step = exported_step(ppo)
    first, last = (evals[min(evals)], evals[final_step]) if evals else ({}, {})
    reward = rm["model"] if rm else (cfg.ppo.reward_model if stage == "ppo" else None)
    models = {"sft": sft["model"] if sft else None, "reward": reward, "policy": ppo["policy_model"]}
    return {
        "start": first, "final": last, "final_step": final_step, "export_reason": ppo.get("export_reason"),
        "sft_gold_score": first.get("eval/gold_score"), "sft_gold_stderr": first.get("eval/gold_stderr"),
        "ppo_gold_score": last.get("eval/gold_score"), "ppo_gold_stderr": last.get("eval/gold_stderr"),
        "final_kl": ppo["final_kl"], "ppo_stop": ppo.get("stop_reason"),
        "sft_eval_loss": sft["eval/loss"] if sft else None,
        "sft_stop": sft.get("stop_reason") if sft else None,
        "sft_demonstrations_gold": sft.get("demonstrations_gold") if sft else None,
        "rm_eval_accuracy": rm["eval/accuracy"] if rm else None, "rm_stop": rm.get("stop_reason") if rm else None,
        "rm_validation_accuracy": rm["validation"]["eval/accuracy"] if rm and "validation" in rm else None,
        "rm_ensemble_accuracy": [m["eval/accuracy"] for m in rm.get("ensemble", [])] if rm else [],
        "algorithm": stage,
        "dpo_eval_accuracy": ppo.get("eval/dpo_accuracy"),
        "models": models, "plot": ppo["plot"],
        "metrics": [x["metrics_file"] for x in (sft, rm, ppo) if x],
        "wandb": f"wandb sync {cfg.run.dir}/*/wandb/offline-run-*",
    }


LABELS = {"eval/score": "PPO score (proxy)", "eval/rm_score": "reward model score", "eval/kl": "KL to start, nats",
          "eval/validation_score": "score by the validation reward model",
          "eval/response_length": "response length", "eval/unfinished": "cut off (no EOS)"}


def print_summary(s: dict) -> None:
    print("\n== instructrl summary ==")
    start, final = s["start"], s["final"]
    if not final:
        print("no held-out evaluation (give ppo.eval_prompts, or enough ppo.prompts to hold some out)")
    else:
        print(f"held-out evaluation, start policy (step 0) → final {s['algorithm'].upper()} policy "
              f"(step {s['final_step']}):")
        for key in final:
            if key in ("eval/gold_stderr", "eval/sqrt_kl"):
                continue
            name = LABELS.get(key, key.replace("eval/fn/", "reward function "))
            if key == "eval/gold_score":
                a, b = start[key], final[key]
                sa, sb = start["eval/gold_stderr"], final["eval/gold_stderr"]
                noise = math.hypot(sa, sb)
                gain = f"gain {b - a:+.3f} ({(b - a) / noise if noise else float('inf'):.1f} standard errors)"
                print(f"  {'gold score':<24}  {a:.3f} ± {sa:.3f}  →  {b:.3f} ± {sb:.3f}   {gain}")
            elif key in start:
                print(f"  {name:<24}  {start[key]:.4f}  →  {final[key]:.4f}")
    if s.get("ppo_stop"):
        print(f"PPO: {s['ppo_stop']}")
    if s.get("export_reason"):
        print(f"exported: {s['export_reason']}")
    if s["final_kl"] is not None:
        print(f"final KL(PPO ‖ SFT) per sequence, training batch: {s['final_kl']:.3f}")
    if s["sft_eval_loss"] is not None:
        print(f"SFT eval loss: {s['sft_eval_loss']:.3f}" + (f"; {s['sft_stop']}" if s.get("sft_stop") else ""))
    if s.get("sft_demonstrations_gold") is not None and "eval/gold_score" in start:
        print(f"SFT policy's sampled gold {start['eval/gold_score']:.3f}; the held-out demonstrations' own gold "
              f"{s['sft_demonstrations_gold']:.3f}")
    if s.get("dpo_eval_accuracy") is not None:
        print(f"DPO held-out pair accuracy (implicit reward): {s['dpo_eval_accuracy']:.3f}")
    if s["rm_eval_accuracy"] is not None:
        print(f"reward model held-out pair accuracy: {s['rm_eval_accuracy']:.3f}"
              + (f"; {s['rm_stop']}" if s.get("rm_stop") else ""))
    if s.get("rm_ensemble_accuracy"):
        print("reward model ensemble's other members, held-out pair accuracy: "
              + ", ".join(f"{a:.3f}" for a in s["rm_ensemble_accuracy"]))
    if s.get("rm_validation_accuracy") is not None:
        print(f"validation reward model (judges the export) held-out pair accuracy: "
              f"{s['rm_validation_accuracy']:.3f}")
    for name, path in s["models"].items():
        if path:
            print(f"{name} model: {path}")
    if s.get("rounds"):
        print_rounds(s["rounds"])
    if s["plot"]:
        print(f"over-optimisation plot (gold and proxy score against √KL): {s['plot']}")
    print(f"metrics: {', '.join(s['metrics'])}\nW&B (offline): {s['wandb']}")


def print_rounds(rounds: list[dict]) -> None:
    print("rounds (each: sample → label → reward model on every comparison so far → PPO from the policy so far):")
    print(f"  {'round':>5}  {'comparisons':>11}  {'RM accuracy':>11}  {'gold at start':>13}  {'gold at end':>15}  "
          f"{'KL to SFT':>9}")
    for r in rounds:
        def num(v, fmt):
            return format(v, fmt) if v is not None else "–"
        end = f"{num(r['gold'], '.3f')} ± {num(r['gold_stderr'], '.3f')}" if r["gold"] is not None else "–"
        print(f"  {r['round']:>5}  {r['comparisons_so_far']:>11}  {num(r['rm_eval_accuracy'], '.3f'):>11}  "
              f"{num(r['start_gold'], '.3f'):>13}  {end:>15}  {num(r['kl'], '.2f'):>9}")
