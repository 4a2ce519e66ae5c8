"""Probe a reward model with responses written from templates: how it scores kinds of response its
training pairs never showed (a missing keyword, an answer of the wrong shape), per template the mean
and standard deviation of its score over the prompts, raw and normalised as PPO sees it.

Each template is formatted with the prompt record's fields ({prompt} and every other field):

    python bench/probe_rm.py runs/bench-algorithms/keywords/base/rm runs/bench-algorithms/keywords/task/eval.jsonl \
        "{subject} small {must}" "{subject} small" "{subject} small {never}"

A template that the gold labeller scores low but the reward model scores above the right answer is
what PPO will find (docs/results.md, the suite's over-optimisation). `--where FIELD=VALUE` probes only
the records with those fields (the notes task's mood: `--where mood=gloomy`).

    python bench/probe_rm.py <arithmetic rm> --sums    # on how many of the 100 sums a + b (a, b < 10) the
                                                       # reward model's favourite answer among 0..21 is right

    python bench/probe_rm.py <rm> --off-prompt <comparisons.jsonl>   # how often the best reply to a held-out
        # ranking's prompt beats the next ranking's best reply put after it (eval/off_prompt_accuracy, for a
        # reward model trained before the stage reported it); held out: the last 1/20, as the stage holds out
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launcher.worker_group import LocalGroup  # noqa: E402
from models.tokenizer import load_tokenizer  # noqa: E402
from parallel.engine import EngineConfig  # noqa: E402
from parallel.host import ModelSource  # noqa: E402
from rlhf.batching import encode_pair  # noqa: E402
from rlhf.data import DataConfig, load_comparisons, load_prompts  # noqa: E402
from rlhf.reward_model import encode_rankings, evaluate_rm, read_reward_stats  # noqa: E402
from rlhf.workers import RewardModelWorker  # noqa: E402


def probe(rm_dir: Path, prompts_file: Path, templates: list[str], limit: int, max_len: int = 64,
          where: dict[str, str] | None = None) -> list[dict]:
    tok = load_tokenizer(rm_dir)
    stats = read_reward_stats(rm_dir) or {"mean": 0.0, "std": 1.0}
    model = load_rm(rm_dir)
    prompts = [p for p in load_prompts(prompts_file, DataConfig())
               if all(str(p.fields.get(k)) == v for k, v in (where or {}).items())][:limit]
    if len(prompts) < 2:
        raise SystemExit(f"{prompts_file}: {len(prompts)} prompt(s) with {where}: too few to probe")
    rows = []
    for template in templates:
        scores = [score(model, tok, p.model_text, template.format(prompt=p.text, **p.fields), max_len) for p in prompts]
        mean, sd = statistics.fmean(scores), statistics.stdev(scores)
        rows.append({"template": template, "mean": mean, "sd": sd, "normalised": (mean - stats["mean"]) / stats["std"]})
    return rows


def load_rm(rm_dir: Path):
    return LocalGroup(RewardModelWorker, ModelSource(path=str(rm_dir)), EngineConfig()).broadcast(
        lambda w: w.model).get()[0]


def score(model, tok, prompt: str, response: str, max_len: int = 64) -> float:
    e = encode_pair(tok, prompt, response, max_len)
    ids = torch.tensor([e.prompt + e.response])
    with torch.no_grad():
        return float(model.scores(ids, torch.ones_like(ids, dtype=torch.bool))[0])


def off_prompt_accuracy(rm_dir: Path, comparisons: Path, max_len: int = 64, batch_size: int = 16) -> float:
    """eval/off_prompt_accuracy of the reward model in `rm_dir` on the last 1/20 of `comparisons`."""
    tok = load_tokenizer(rm_dir)
    records = load_comparisons(comparisons, DataConfig())
    held = records[-max(1, len(records) // 20):]
    group = LocalGroup(RewardModelWorker, ModelSource(path=str(rm_dir)), EngineConfig())
    return evaluate_rm(group, encode_rankings(tok, held, max_len), tok.pad_token_id, batch_size,
                       max_len)[0]["eval/off_prompt_accuracy"]


def sum_favourites(rm_dir: Path) -> int:
    """The arithmetic task's prompts "a + b =" (a, b < 10) whose highest-scored answer among 0..21 is a + b:
    the gold score of a policy that always answers what the reward model likes best, × 100."""
    tok, model = load_tokenizer(rm_dir), load_rm(rm_dir)
    right = 0
    for a in range(10):
        for b in range(10):
            scores = [score(model, tok, f"{a} + {b} =", str(c)) for c in range(22)]
            right += max(range(22), key=scores.__getitem__) == a + b
    return right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rm", type=Path, help="reward-model checkpoint (with its tokenizer and reward_stats.json)")
    parser.add_argument("prompts", type=Path, nargs="?", help="prompt records (JSONL: the fields the templates use)")
    parser.add_argument("templates", nargs="*")
    parser.add_argument("--sums", action="store_true", help="the arithmetic task's check (no prompts or templates)")
    parser.add_argument("--limit", type=int, default=200, help="prompts to probe")
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                        help="only the prompt records whose field has this value (repeatable)")
    parser.add_argument("--off-prompt", type=Path, metavar="COMPARISONS",
                        help="how often held-out rankings' best replies beat another prompt's "
                             "(no prompts or templates)")
    args = parser.parse_intermixed_args()
    if args.off_prompt:
        print(f"off-prompt pairs ranked right: {off_prompt_accuracy(args.rm, args.off_prompt):.3f}")
        return
    if args.sums:
        print(f"the reward model's favourite answer is the sum on {sum_favourites(args.rm)} of 100 prompts")
        return
    if not args.prompts or not args.templates:
        parser.error("give a prompts file and at least one template (or --sums)")
    print("| response template | reward (raw) | normalised (PPO's scale) |\n| --- | --- | --- |")
    where = dict(w.split("=", 1) for w in args.where)
    for r in probe(args.rm, args.prompts, args.templates, args.limit, where=where):
        print(f"| `{r['template']}` | {r['mean']:.2f} ± {r['sd']:.2f} | {r['normalised']:+.2f} |")


if __name__ == "__main__":
    main()
