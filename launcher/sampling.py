"""`instructrl sample`: K responses per prompt from one policy checkpoint or several in stated shares,
written as a file to label (format in rlhf/labelling.py) for a person (`instructrl label FILE`) or a
labeller function (`instructrl label FILE --labeller file.py:fn`). Every input is read and checked
before a process starts; the same seed, policies and prompts write the same file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from launcher.config import Config, ConfigError
from launcher.reading import check_turn_end, with_chat_template
from launcher.run_setup import checkpoint_source, start_groups
from models.errors import InputError
from models.generation import SamplingParams
from models.tokenizer import load_tokenizer
from rlhf.batching import decode_responses
from rlhf.chat import chat_prompt, render_prompts
from rlhf.data import Prompt, load_prompts, write_jsonl
from rlhf.evaluate import sample
from rlhf.labelling import LabelItem, allocate
from rlhf.workers import PolicyWorker

log = logging.getLogger("instructrl")


def checkpoint_step(path: Path) -> int | None:
    """The training step a policy checkpoint was saved at, where its stage recorded it: an SFT stage's
    directory holds its result.json; a PPO stage's exported policy/ sits beside it."""
    for result, key in ((path / "result.json", "steps"), (path.parent / "result.json", "evaluations")):
        if result.is_file():
            value = json.loads(result.read_text()).get(key)
            if isinstance(value, dict) and value:
                return max(int(k) for k in value)
            if isinstance(value, int):
                return value
    return None


def read_sample_inputs(cfg: Config) -> tuple[list[Prompt], object, list[Path], Path]:
    """The prompts (chat template applied), the tokenizer, the policies and the output file, checked."""
    s = cfg.sample
    if not s.policies:
        raise ConfigError("sample.policies: name the policy checkpoint(s) to sample from, e.g. "
                          "'sample.policies=[{path: runs/demo/sft}]' (with a share each when several)")
    paths = [Path(p.path) for p in s.policies]
    vocab = []
    for i, path in enumerate(paths):
        if not (path / "config.json").is_file():
            raise InputError(f"sample.policies.{i}.path={path}: not a model checkpoint (no config.json); name an "
                             f"SFT stage's directory or a PPO stage's policy/")
        vocab.append(json.loads((path / "config.json").read_text()).get("vocab_size"))
    if len(set(vocab)) > 1:
        sizes = ", ".join(f"{path}: {v}" for path, v in zip(paths, vocab, strict=True))
        raise InputError(f"sample.policies: their vocabularies differ ({sizes}); the policies of one file to label "
                         f"share one tokenizer")
    source = s.prompts or cfg.rm.train_data or cfg.ppo.prompts
    if source is None:
        raise ConfigError("sample.prompts: name the prompts to sample for (a file of {\"prompt\": ...} records, or "
                          "comparisons, whose prompts serve)")
    prompts = load_prompts(source, cfg.data)[:s.limit]
    tok = with_chat_template(load_tokenizer(paths[0]), [(p.where, p.messages) for p in prompts if p.messages],
                             str(paths[0]))
    if any(p.messages for p in prompts):
        check_turn_end(tok)
        prompts = render_prompts(tok, prompts)
    elif cfg.data.chat_template:
        prompts = [replace(p, query=chat_prompt(tok, p.text)) for p in prompts]
    out = Path(s.out) if s.out else cfg.run.dir / "sample" / "to_label.jsonl"
    if out.exists() and not cfg.run.overwrite:
        raise InputError(f"{out}: exists (an earlier sample, perhaps half labelled); choose another sample.out or "
                         f"pass run.overwrite=true to replace it")
    return prompts, tok, paths, out


def sample_responses(cfg: Config, prompts: list[Prompt], tok, paths: list[Path], seed: int,
                     id_prefix: str = "") -> list[LabelItem]:
    """K responses per prompt, each written by the policy `allocate` deals it to, one policy at a time."""
    s, p = cfg.sample, cfg.ppo
    params = SamplingParams(max_new_tokens=s.max_new_tokens or cfg.evaluation.max_new_tokens,
                            temperature=s.temperature)
    slots = allocate(len(prompts), s.k, [x.share for x in s.policies], seed)
    texts: list[list[str]] = [[""] * s.k for _ in prompts]
    for m, path in enumerate(paths):
        wanted = [(i, j) for i, row in enumerate(slots) for j, who in enumerate(row) if who == m]
        if not wanted:
            continue
        spec = {f"sampler{m}": (PolicyWorker, p.policy.group, (checkpoint_source(cfg, path), p.policy.engine),
                                {"rollout": p.rollout, "seed": seed})}
        with start_groups(cfg, spec) as groups:
            gens = sample(groups[f"sampler{m}"], tok, [prompts[i] for i, _ in wanted], params, p.max_prompt_len,
                          seed=seed + 7919 * m)
        written = [t for g in gens for t in decode_responses(tok, g.responses, g.response_mask)]
        for (i, j), text in zip(wanted, written, strict=True):
            texts[i][j] = text
        log.info("sample: %d responses from %s", len(wanted), path)
    steps = [{"model": str(path), "step": checkpoint_step(path)} for path in paths]
    return [LabelItem(f"{id_prefix}{i}", pr.messages if pr.messages is not None else pr.text, tuple(texts[i]),
                      tuple(steps[m] for m in slots[i]), seed, pr.fields) for i, pr in enumerate(prompts)]


def run_sample(cfg: Config) -> Path:
    """`instructrl sample`: the file to label, written whole once every response exists."""
    prompts, tok, paths, out = read_sample_inputs(cfg)
    log.info("sample: %d prompts × %d responses from %s", len(prompts), cfg.sample.k,
             ", ".join(f"{x.path} (share {x.share:g})" for x in cfg.sample.policies))
    items = sample_responses(cfg, prompts, tok, paths, cfg.sample.seed)
    write_jsonl(out, [item.as_record() for item in items])
    return out
