# ruff: noqa: E501 — the case table reads best with one case per row
"""Every bad or unusual input through the CLI: one paragraph on stderr naming the file and line (or
the key, or the override), exit status 2, no traceback, and nothing written; a failing run never
touches a finished one. One table row per case of the issue (#13, item 6), by category."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from launcher.cli import main
from models.vllm_sampler import vllm_available
from parallel import checkpoint as checkpoints
from tests.launcher.user_task import make_checkpoint, make_tokenizer, write_task


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A valid user task (files, reward function, tiny GPT-2 with its tokenizer) and a config for it."""
    root = tmp_path_factory.mktemp("world")
    files = write_task(root / "data", n_sft=60, n_prompts=40, n_eval=8)
    tok = make_tokenizer(files)
    ckpt = make_checkpoint("gpt2", tok, root / "gpt2")
    fn = f"{files['rewards']}:correct"
    config = {
        "run": {"name": "t", "backend": "local"},
        "model": {"pretrained": str(ckpt)},
        "sft": {"train_data": str(files["sft"]), "epochs": 1, "max_len": 32, "batch_size": 16},
        "ppo": {"prompts": str(files["prompts"]), "eval_prompts": str(files["eval"]), "reward_model": None,
                "reward_functions": [{"function": fn}], "steps": 2, "prompts_per_step": 8, "minibatches": 2,
                "max_new_tokens": 4, "max_prompt_len": 24},
        "evaluation": {"gold_function": fn, "max_new_tokens": 4, "max_prompt_len": 24},
    }
    (root / "my.yaml").write_text(json.dumps(config))  # JSON is YAML
    return {"root": root, "files": files, "ckpt": ckpt, "tok": tok, "config": root / "my.yaml", "fn": fn}


def copy_ckpt(w, tmp: Path, name: str = "ckpt") -> Path:
    return Path(shutil.copytree(w["ckpt"], tmp / name))


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def gz_truncated(tmp: Path) -> Path:
    data = gzip.compress(b'{"prompt": "a", "response": "b"}\n' * 500)
    return write(tmp / "sft.jsonl.gz", data[: len(data) // 2])


def bad_json_config(w, tmp):
    ck = copy_ckpt(w, tmp)
    (ck / "config.json").write_text((ck / "config.json").read_text()[:-20])
    return ck


def truncated_weights(w, tmp):
    ck = copy_ckpt(w, tmp)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    return ck


def wrong_shapes(w, tmp):
    ck = copy_ckpt(w, tmp)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["n_inner"] = 96  # the checkpoint's MLP is 4 × 32 = 128 wide
    (ck / "config.json").write_text(json.dumps(cfg))
    return ck


def score_model(w, tmp):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    path = tmp / "rm"
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(w["tok"]) + 8, n_positions=128, n_embd=32, n_layer=2,
                                             n_head=4, num_labels=1)).save_pretrained(path)
    return path


def stats_file(w, tmp, text: str | None) -> Path:
    path = score_model(w, tmp)
    if text is not None:
        (path / "reward_stats.json").write_text(text)
    return path


def tokenizer_dir(w, tmp, damage: str) -> Path:
    path = tmp / "tok"
    path.mkdir()
    if damage == "corrupt":
        w["tok"].save_pretrained(path)
        (path / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
    elif damage == "no eos":
        from models.tokenizer import train_bpe_tokenizer

        tok = train_bpe_tokenizer(["1 + 2 = 3"] * 10, 300)
        tok.eos_token = None
        tok.save_pretrained(path)
    return path


def checkpoint(w, tmp, damage: str) -> Path:
    """A PPO checkpoint staged and committed the way the coordinator does it, then damaged."""
    for step in (1, 2):
        staging = checkpoints.staging_dir(tmp, step)
        for role in ("policy", "critic"):
            torch.save({"step": step}, write(staging / role / "rank-00000-state.pt", b""))
        checkpoints.commit(tmp, step, {"step": step, "kl": {"value": 0.02}})
    ck = checkpoints.checkpoint_dir(tmp, 1)
    pt = ck / "policy" / "rank-00000-state.pt"
    if damage == "truncated pt":
        pt.write_bytes(pt.read_bytes()[:200])
    elif damage == "empty pt":
        pt.write_bytes(b"")
    elif damage == "flipped byte":
        data = bytearray(pt.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pt.write_bytes(bytes(data))
    elif damage == "truncated state":
        (ck / "coordinator.json").write_text('{"step": 1, "kl"')
    elif damage == "no critic":
        shutil.rmtree(ck / "critic")
    elif damage == "mixed":  # the critic of another step copied in
        shutil.rmtree(ck / "critic")
        shutil.copytree(checkpoints.checkpoint_dir(tmp, 2) / "critic", ck / "critic")
    elif damage == "no manifest":
        (ck / "manifest.json").unlink()
    return ck


def prompts_file(tmp, n: int) -> Path:
    return write(tmp / "p.jsonl", "".join(json.dumps({"prompt": f"{i} + 1 =", "answer": i + 1}) + "\n"
                                          for i in range(n)))


def rewards_file(tmp, body: str) -> Path:
    return write(tmp / "r.py", body)


BAD_UTF8 = b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff"}\n'
BAD_UTF16 = b"\xff\xfe" + '{"p'.encode("utf-16-le") + b"\x00\xd8"
ONE_SFT = '{"prompt": "a", "response": "b"}\n'
CHAT_UNKNOWN_ROLE = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}) + "\n"
CHAT_ENDS_ON_USER = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                             {"role": "user", "content": "and?"}]}) + "\n"
CHAT_TWO_CONVERSATIONS = json.dumps({"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                     "rejected": [{"role": "user", "content": "ho"}, {"role": "assistant", "content": "x"}]}) + "\n"
CHAT_MIXED = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + \
    "\n" + ONE_SFT

# name: (command, function(world, tmp) -> overrides, expected message). "{tmp}" in a message is the case's folder.
CASES = {
    # -- config: the key and where it was set
    "yaml syntax error": ("pipeline", lambda w, t: ["--config", str(write(t / "c.yaml", "sft:\n  epochs: 2\n   x: 1\n"))],
                          r"c\.yaml:3:\d+: YAML syntax error"),
    "unknown model.shape field": ("sft", lambda w, t: ["model.pretrained=null", "model.bpe_vocab=300",
                                                      "model.shape.layers=2"],
                                  r"override 'model\.shape\.layers=2': model\.shape\.layers: not a model shape field"),
    "wrong model.shape type": ("sft", lambda w, t: ["model.pretrained=null", "model.bpe_vocab=300",
                                                   "model.shape.d_model=wide"],
                               r"model\.shape\.d_model: Input should be a valid integer"),
    "negative layer count": ("sft", lambda w, t: ["model.pretrained=null", "model.bpe_vocab=300",
                                                 "model.shape.n_layers=-2"],
                             r"model\.shape\.n_layers: Input should be greater than or equal to 1"),
    "empty run name": ("pipeline", lambda w, t: ["run.name="], r"run\.name: '' is not a run name"),
    "PPO before SFT": ("ppo", lambda w, t: ["ppo.policy_init=null"],
                       r"t/sft: this run's SFT model does not exist yet; run `instructrl sft`"),
    "unknown colocate_with": ("ppo", lambda w, t: ["ppo.critic.group.colocate_with=actor"],
                              r"ppo\.critic\.group\.colocate_with='actor': name another PPO role"),
    "infinite learning rate": ("sft", lambda w, t: ["sft.optim.lr=.inf"],
                               r"sft\.optim\.lr: must be a finite number, not inf"),
    "user text without a tokenizer": ("sft", lambda w, t: ["model.pretrained=null"],
                                      r"sft\.train_data is your own text, which needs a tokenizer"),
    "auto reward model without comparisons": ("pipeline", lambda w, t: ["ppo.reward_model=auto"],
                                              r"'auto' is this run's reward model, and there is no rm\.train_data"),
    "no reward at all": ("ppo", lambda w, t: ["ppo.reward_functions=[]"], r"PPO needs a reward"),
    "RM without comparisons": ("rm", lambda w, t: [f"rm.init={w['ckpt']}"],
                               r"rm\.train_data: the reward model learns from ranked comparisons, and there is none"),
    "SFT chosen by a reward model not trained yet": ("sft", lambda w, t: ["sft.select=reward", "ppo.reward_model=auto",
                                                                        "ppo.reward_functions=[]"],
                                                     r"sft\.select=reward .* \(ppo\.reward_model=auto is trained after SFT\)"),
    "SFT chosen by a causal LM as reward model": ("sft", lambda w, t: ["sft.select=reward",
                                                                     f"ppo.reward_model={w['ckpt']}"],
                                                  r"ppo\.reward_model=.*: a causal LM, not a reward model"),
    # -- data files: the file and the line
    "invalid UTF-8": ("sft", lambda w, t: [f"sft.train_data={write(t / 's.jsonl', BAD_UTF8)}"],
                      r"s\.jsonl:2: not UTF-8 text"),
    "invalid UTF-16": ("sft", lambda w, t: [f"sft.train_data={write(t / 's.jsonl', BAD_UTF16)}"],
                       r"s\.jsonl: invalid UTF-16"),
    "binary file": ("ppo", lambda w, t: [f"ppo.prompts={write(t / 'p.jsonl', bytes(range(256)))}"],
                    r"p\.jsonl:\d+: a binary file, not text"),
    "truncated gzip": ("sft", lambda w, t: [f"sft.train_data={gz_truncated(t)}"],
                       r"sft\.jsonl\.gz: a corrupt or truncated gzip file"),
    "conversation with an unknown role": ("sft", lambda w, t: [f"sft.train_data={write(t / 'c.jsonl', CHAT_UNKNOWN_ROLE)}"],
                                          r"c\.jsonl:1: field 'messages\.1\.role': 'bot'; a role is one of system"),
    "conversation ending on a user turn": ("sft", lambda w, t: [f"sft.train_data={write(t / 'c.jsonl', CHAT_ENDS_ON_USER)}"],
                                           r"c\.jsonl:1: field 'messages\.2': the conversation ends on a user turn"),
    "conversations and text in one file": ("sft", lambda w, t: [f"sft.train_data={write(t / 'c.jsonl', CHAT_MIXED)}"],
                                           r"c\.jsonl:2: a 'prompt'/'response' record, in a file whose first record"),
    "chat comparison of two conversations": ("rm", lambda w, t: [f"rm.train_data={write(t / 'c.jsonl', CHAT_TWO_CONVERSATIONS)}",
                                                                f"rm.init={w['ckpt']}"],
                                             r"c\.jsonl:1: field 'rejected\.0': differs from 'chosen' before the reply"),
    "JSON Lines named .csv": ("sft", lambda w, t: [f"sft.train_data={write(t / 's.csv', ONE_SFT * 3)}"],
                              r"s\.csv:1: named \.csv but holds JSON Lines"),
    "corrupt parquet": ("sft", lambda w, t: [f"sft.train_data={write(t / 's.parquet', b'PAR1 nope PAR1')}"],
                        r"s\.parquet: not a readable Parquet"),
    "empty prompt file": ("ppo", lambda w, t: [f"ppo.prompts={write(t / 'p.jsonl', '')}"],
                          r"p\.jsonl: no records \(an empty or blank file\)"),
    "one prompt": ("ppo", lambda w, t: [f"ppo.prompts={prompts_file(t, 1)}", "ppo.eval_prompts=null"],
                   r"p\.jsonl: 1 prompt\(s\); PPO needs at least 2"),
    "blank SFT file": ("sft", lambda w, t: [f"sft.train_data={write(t / 's.jsonl', chr(10) * 3)}"],
                       r"s\.jsonl: no records"),
    "one-record SFT file": ("sft", lambda w, t: [f"sft.train_data={write(t / 's.jsonl', ONE_SFT)}"],
                            r"s\.jsonl: 1 usable record\(s\); training needs at least 2"),
    "one-record RM file": ("rm", lambda w, t: [f"rm.init={w['ckpt']}", "rm.train_data=" + str(write(
        t / "c.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}'))],
                           r"c\.jsonl: 1 usable record\(s\); training needs at least 2"),
    "identical responses in a ranking": ("rm", lambda w, t: [f"rm.init={w['ckpt']}", "rm.train_data=" + str(write(
        t / "c.jsonl", '{"prompt": "a", "responses": ["b", "c", "b"]}'))],
                                         r"c\.jsonl:1: field 'responses\.2': the same text as responses\.0"),
    "missing data file": ("sft", lambda w, t: [f"sft.train_data={t / 'nope.jsonl'}"],
                          r"nope\.jsonl: no such file or directory"),
    "unknown tokens": ("sft", lambda w, t: [f"model.tokenizer={word_tokenizer(t)}", "model.pretrained=null"],
                       r"sft\.jsonl: \d+% of its tokens are unknown to the tokenizer"),
    # -- lengths against the model's positions
    "responses beyond the positions": ("ppo", lambda w, t: ["ppo.max_new_tokens=200"],
                                       r"ppo\.max_prompt_len \+ ppo\.max_new_tokens = 224 is longer than the model's "
                                       r"128 positions"),
    "max_len beyond the positions": ("sft", lambda w, t: ["sft.max_len=512"],
                                     r"sft\.max_len = 512 is longer than the model's 128 positions"),
    # -- pretraining text
    "ptx text missing": ("ppo", lambda w, t: ["ppo.ptx_coef=0.1", f"ppo.ptx_data={t / 'nope.txt'}",
                                              "ppo.critic_warmup_steps=1"], r"nope\.txt: no such file"),
    "ptx text missing, the mix off": ("ppo", lambda w, t: ["ppo.ptx_coef=0", f"ppo.ptx_data={t / 'nope.txt'}"],
                                      r"nope\.txt: no such file.*ppo\.ptx_coef=0"),
    "ptx text is a directory": ("ppo", lambda w, t: ["ppo.ptx_coef=0.1", f"ppo.ptx_data={t}"],
                                r": is a directory; expected a text file"),
    "ptx text is binary": ("ppo", lambda w, t: ["ppo.ptx_coef=0.1", f"ppo.ptx_data={write(t / 'x.txt', bytes(range(256)))}"],
                           r"x\.txt:\d+: a binary file"),
    "ptx text too short": ("ppo", lambda w, t: ["ppo.ptx_coef=0.1", f"ppo.ptx_data={write(t / 'x.txt', '1 + 2 = 3')}"],
                           r"x\.txt: \d+ tokens, fewer than ppo\.ptx_max_len=64"),
    "ptx demonstrations without a response": ("ppo", lambda w, t: ["ppo.ptx_coef=0.1", "ppo.ptx_data=" + str(write(
        t / "d.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "c"}'))], r"d\.jsonl:2: .*'response'"),
    # -- tokenizers
    "empty tokenizer directory": ("sft", lambda w, t: [f"model.tokenizer={tokenizer_dir(w, t, 'empty')}"],
                                  r"tok: no tokenizer files"),
    "corrupt tokenizer": ("sft", lambda w, t: [f"model.tokenizer={tokenizer_dir(w, t, 'corrupt')}"],
                          r"tok: the tokenizer cannot be loaded"),
    "tokenizer without EOS": ("sft", lambda w, t: [f"model.tokenizer={tokenizer_dir(w, t, 'no eos')}"],
                              r"tok: the tokenizer has no EOS token"),
    "chat template missing": ("sft", lambda w, t: [f"model.tokenizer={no_template(w, t)}", "data.chat_template=true"],
                              r"data\.chat_template=true, but the tokenizer .* has no chat template"),
    # -- checkpoints
    "pretrained config is bad JSON": ("sft", lambda w, t: [f"model.pretrained={bad_json_config(w, t)}",
                                                           f"model.tokenizer={w['ckpt']}"],
                                      r"ckpt/config\.json:\d+: not valid JSON"),
    "truncated safetensors": ("sft", lambda w, t: [f"model.pretrained={truncated_weights(w, t)}"],
                              r"model\.safetensors: a truncated or corrupt safetensors file"),
    "weights of the wrong shape": ("sft", lambda w, t: [f"model.pretrained={wrong_shapes(w, t)}"],
                                   r"the weights do not fit its config\.json: wrong shapes: h\.0\.mlp\.c_fc\.bias \(128,\) \(config: \(96,\)\)"),
    "pretrained directory missing": ("sft", lambda w, t: [f"model.pretrained={t / 'nope'}", f"model.tokenizer={w['ckpt']}"],
                                     r"nope: no such directory"),
    "a reward model as the policy": ("ppo", lambda w, t: [f"ppo.policy_init={score_model(w, t)}"],
                                     r"a scalar \(reward or value\) model, not a causal LM"),
    "a causal LM as the reward model": ("ppo", lambda w, t: [f"ppo.reward_model={w['ckpt']}"],
                                        r"a causal LM, not a reward model: it has no scalar score head"),
    "reward statistics missing": ("ppo", lambda w, t: [f"ppo.reward_model={stats_file(w, t, None)}"],
                                  r"reward_stats\.json: not found\. ppo\.normalize_scores=true"),
    "reward statistics with std 0": ("ppo", lambda w, t: ["ppo.reward_model=" + str(stats_file(
        w, t, '{"mean": 0.3, "std": 0.0}'))], r"reward_stats\.json: std 0\.0: the reward model gives every"),
    # -- resume checkpoints
    "resume: truncated .pt": ("ppo", lambda w, t: [f"ppo.resume={checkpoint(w, t, 'truncated pt')}"],
                              r"checkpoint-1: not a whole checkpoint: policy/rank-00000-state\.pt is \d+ bytes, the "
                              r"manifest says \d+; whole checkpoints beside it: .*checkpoint-2"),
    "resume: empty .pt": ("ppo", lambda w, t: [f"ppo.resume={checkpoint(w, t, 'empty pt')}"],
                          r"policy/rank-00000-state\.pt is 0 bytes"),
    "resume: a flipped byte": ("ppo", lambda w, t: [f"ppo.resume={checkpoint(w, t, 'flipped byte')}"],
                               r"rank-00000-state\.pt does not match its checksum"),
    "resume: truncated coordinator.json": ("ppo", lambda w, t: [f"ppo.resume={checkpoint(w, t, 'truncated state')}"],
                                           r"coordinator\.json is \d+ bytes, the manifest says"),
    "resume: a role missing": ("ppo", lambda w, t: [f"ppo.resume={checkpoint(w, t, 'no critic')}"],
                               r"critic/rank-00000-state\.pt is missing"),
    "resume: a role from another step": ("ppo", lambda w, t: [f"ppo.resume={checkpoint(w, t, 'mixed')}"],
                                         r"critic/rank-00000-state\.pt does not match its checksum \(corrupt, or "
                                         r"from another checkpoint\)"),
    "resume: never committed": ("ppo", lambda w, t: [f"ppo.resume={checkpoint(w, t, 'no manifest')}"],
                                r"no manifest\.json \(not committed"),
    "resume past the last step": ("ppo", lambda w, t: [f"ppo.resume={checkpoint(w, t, '')}", "ppo.steps=1"],
                                  r"the checkpoint is at step 1, and ppo\.steps=1 leaves nothing to do"),
    # -- where the run goes
    "output directory is a file": ("sft", lambda w, t: [f"run.out_dir={write(t / 'f', 'x')}"],
                                   r"/f: a file where the run directory .* should go"),
    "output directory cannot be made": ("sft", lambda w, t: ["run.out_dir=/sys/instructrl-runs"],
                                        r"/sys: cannot make directories there .*set run\.out_dir"),
    "unreachable Ray address": ("sft", lambda w, t: ["--ray-address", "127.0.0.1:1", "run.backend=ray"],
                                r"run\.ray_address='127\.0\.0\.1:1': nothing answers there"),
    # -- task functions
    "reward function file missing": ("ppo", lambda w, t: [f"ppo.reward_functions=['{t / 'nope.py'}:f']"],
                                     r"ppo\.reward_functions\.0: .*nope\.py:f: no file"),
    "reward function name missing": ("ppo", lambda w, t: [f"ppo.reward_functions=['{w['files']['rewards']}:wrong']"],
                                     r"has no 'wrong' \(callables there: \['correct'\]\)"),
    "reward function without the fields": ("ppo", lambda w, t: [
        "ppo.reward_functions=['" + str(rewards_file(t, "def f(prompts, responses):\n    return [0.0] * len(prompts)\n"))
        + ":f']"], r"r\.py:f cannot be called as fn\(prompts, responses, \*\*fields\) with the fields of ppo\.prompts "
                   r"\(answer\)"),
    "gold function that fails to import": ("sft", lambda w, t: [
        f"evaluation.gold_function={rewards_file(t, 'import nonexistent_module_q')}:f"],
                                           r"evaluation\.gold_function: .*r\.py:f: importing it failed: "
                                           r"ModuleNotFoundError"),
}
if not vllm_available():  # the optional rollout engine asked for where it is not installed
    CASES["vLLM rollouts without vLLM"] = ("ppo", lambda w, t: ["ppo.rollout=vllm"],
                                           r"ppo\.rollout=vllm needs vLLM: .*make vllm")


def word_tokenizer(tmp: Path) -> Path:
    from models.tokenizer import build_word_tokenizer

    build_word_tokenizer(["copy", "reverse"]).save_pretrained(tmp / "words")
    return tmp / "words"


def no_template(w, tmp: Path) -> Path:
    w["tok"].save_pretrained(tmp / "plain")
    cfg = json.loads((tmp / "plain" / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (tmp / "plain" / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp / "plain" / "chat_template.jinja").unlink(missing_ok=True)
    return tmp / "plain"


def run_cli(world, command: str, args: list[str], out: Path, capsys) -> tuple[int, str]:
    """`instructrl <command> --config my.yaml [flags] run.out_dir=<out> [overrides]`; PPO starts from the
    checkpoint (no SFT ran in this folder). Returns the exit status and stderr."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        if args[i].startswith("--"):
            flags += args[i:i + 2]
            i += 2
        else:
            overrides.append(args[i])
            i += 1
    if "--config" not in flags:
        flags = ["--config", str(world["config"]), *flags]
    if command == "ppo" and not any(o.startswith("ppo.policy_init=") for o in overrides):
        overrides.insert(0, f"ppo.policy_init={world['ckpt']}")
    capsys.readouterr()  # what the case's setup printed
    rc = main([command, *flags, f"run.out_dir={out}", *overrides])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_clear_paragraph_and_writes_nothing(world, tmp_path, case, capsys):
    command, make, message = CASES[case]
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    out = tmp_path / "runs"
    rc, err = run_cli(world, command, make(world, case_dir), out, capsys)
    assert rc == 2, err
    assert err.startswith("instructrl: error: ") and "Traceback" not in err and "\n\n" not in err.strip(), err
    import re

    assert re.search(message.replace("{tmp}", re.escape(str(case_dir))), err), err
    assert not (out / "t").exists(), f"{case}: wrote {list((out / 't').rglob('*'))[:5]}"


def test_not_writable_output_directory(world, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))  # we run as root
    rc, err = run_cli(world, "sft", [], locked, capsys)
    assert rc == 2 and "locked: not writable, so the run directory" in err, err


def test_runtime_failures_are_named_and_save_nothing(world, tmp_path, capsys):
    """A diverging learning rate stops before any model is saved; a reward function that raises on one
    response names it."""
    rc, err = run_cli(world, "sft", ["sft.optim.lr=1e4", "sft.optim.warmup_steps=0"], tmp_path / "a", capsys)
    assert rc == 2 and "training diverged" in err and "Lower sft.optim.lr" in err, err
    assert not (tmp_path / "a" / "t" / "sft" / "config.json").exists()
    fails = rewards_file(tmp_path, "def f(prompts, responses, **fields):\n"
                                   "    return [float(int(r)) for r in responses]\n")  # a random model's words fail
    rc, err = run_cli(world, "ppo", [f"ppo.reward_functions=['{fails}:f']"], tmp_path / "b", capsys)
    assert rc == 2, err
    assert "r.py:f raised ValueError: invalid literal for int() with base 10: " in err and "r.py:2) on prompt '" in err
    assert "', response '" in err and "Traceback" not in err, err


def test_a_failing_run_never_touches_a_finished_one(world, tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli(world, "pipeline", [], out, capsys)[0] == 0
    sft = out / "t" / "sft" / "model.safetensors"
    before = sft.read_bytes()
    rc, err = run_cli(world, "pipeline", [], out, capsys)
    assert rc == 2 and "holds the sft stage of an earlier run" in err and "run.overwrite=true" in err, err
    # even when told to overwrite, a run that fails its checks removes nothing
    rc, err = run_cli(world, "pipeline", ["run.overwrite=true", "ppo.ptx_coef=0.1", f"ppo.ptx_data={tmp_path}"],
                      out, capsys)
    assert rc == 2 and "is a directory" in err, err
    assert sft.read_bytes() == before and (out / "t" / "summary.json").exists()
    assert run_cli(world, "pipeline", ["run.overwrite=true", "sft.seed=1"], out, capsys)[0] == 0
    assert sft.read_bytes() != before  # replaced, as asked
