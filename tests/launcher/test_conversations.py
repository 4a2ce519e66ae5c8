"""Conversations through the CLI (#28): `instructrl sft` on multi-turn chat records, with a fresh
model (instructrl's default template, its role markers tokens of their own) and with a pretrained
checkpoint's own template; the exported tokenizer keeps the template the model learned."""

from __future__ import annotations

import json
import random

import pytest

from launcher.cli import main
from rlhf.chat import DEFAULT_TEMPLATE, ROLE_TOKENS
from tests.launcher.user_task import make_checkpoint

SMALL = ["run.backend=local", "model.preset=toy", "sft.max_len=48", "sft.epochs=2", "sft.batch_size=16"]


def recall_dialogues(n: int, seed: int = 0) -> list[dict]:
    """Two user turns; the second reply repeats a number said in the first."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = rng.randrange(50)
        rows.append({"messages": [{"role": "user", "content": f"keep {x}"}, {"role": "assistant", "content": "kept"},
                                  {"role": "user", "content": "what was it ?"},
                                  {"role": "assistant", "content": str(x)}], "answer": x})
    return rows


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recall_dialogues(240)))
    return path


def test_sft_on_conversations_with_a_fresh_model(chat_file, tmp_path, capsys):
    from models.tokenizer import load_tokenizer

    args = ["sft", f"sft.train_data={chat_file}", f"run.out_dir={tmp_path}", "run.name=chat", "model.bpe_vocab=300",
            *SMALL]
    assert main(args) == 0, capsys.readouterr().err
    sft = tmp_path / "chat" / "sft"
    tok = load_tokenizer(sft)
    assert tok.chat_template == DEFAULT_TEMPLATE
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in ROLE_TOKENS)
    losses = [json.loads(line) for line in (sft / "metrics.jsonl").read_text().splitlines()]
    evals = [m["eval/loss"] for m in losses if "eval/loss" in m]
    assert evals[-1] < 0.7 * evals[0], evals


def test_sft_on_conversations_uses_the_checkpoints_own_template(chat_file, tmp_path, capsys):
    from models.tokenizer import load_tokenizer, train_bpe_tokenizer

    texts = [m["content"] for r in recall_dialogues(50) for m in r["messages"]]
    tok = train_bpe_tokenizer(texts * 4, 300, ("<|im_start|>", "<|im_end|>"))
    template = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                "{% endif %}")
    tok.chat_template = template
    ckpt = make_checkpoint("gpt2", tok, tmp_path / "ckpt")
    # held-out prompts as conversations: the SFT stage samples replies to them, which must stop where the
    # template ends a turn (<|im_end|>), not at the tokenizer's <eos>
    evals = [{"prompt": r["messages"][:-1], "answer": r["answer"]} for r in recall_dialogues(40, seed=5)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    (tmp_path / "gold.py").write_text(GOLD)
    args = ["sft", f"sft.train_data={chat_file}", f"run.out_dir={tmp_path}", "run.name=own", f"model.pretrained={ckpt}",
            "run.backend=local", "sft.max_len=48", "sft.epochs=1", "sft.batch_size=16",
            f"ppo.prompts={tmp_path}/eval.jsonl", f"evaluation.gold_function={tmp_path}/gold.py:recalled",
            "evaluation.max_prompt_len=40", "evaluation.max_new_tokens=4"]
    assert main(args) == 0, capsys.readouterr().err
    saved = load_tokenizer(tmp_path / "own" / "sft")
    assert saved.chat_template == template and saved.eos_token == "<|im_end|>"


GOLD = '''
def recalled(prompts, responses, answer, **fields):
    """1 when the reply is the number kept in the first turn; the prompts are conversations."""
    if not all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts):
        raise TypeError("expected conversations as prompts")
    return [float(r.strip() == str(a)) for r, a in zip(responses, answer)]
'''


def test_pipeline_and_dpo_on_conversations(chat_file, tmp_path, capsys):
    """SFT → RM → PPO, and DPO, from chat records alone: comparisons of replies to a conversation,
    prompts that are conversations; the gold function receives the messages, and the samples show them."""
    rows = recall_dialogues(160, seed=1)
    context = lambda r: r["messages"][:-1]  # noqa: E731
    reply = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    comparisons = [{"prompt": context(r), "chosen": reply(str(r["answer"])), "rejected": reply(str(r["answer"] + 1))}
                   for r in rows]
    prompts = [{"prompt": context(r), "answer": r["answer"]} for r in recall_dialogues(80, seed=2)]
    for name, data in (("comparisons", comparisons), ("prompts", prompts)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    (tmp_path / "gold.py").write_text(GOLD)
    common = [f"sft.train_data={chat_file}", f"rm.train_data={tmp_path}/comparisons.jsonl",
              f"ppo.prompts={tmp_path}/prompts.jsonl", f"evaluation.gold_function={tmp_path}/gold.py:recalled",
              f"run.out_dir={tmp_path}", "model.bpe_vocab=300", *SMALL, "rm.max_len=48", "rm.epochs=1",
              "ppo.max_prompt_len=40", "ppo.max_new_tokens=4", "ppo.steps=2", "ppo.prompts_per_step=8",
              "ppo.minibatches=2", "ppo.samples_per_prompt=2", "evaluation.max_prompt_len=40",
              "evaluation.max_new_tokens=4", "evaluation.samples_per_prompt=1"]
    assert main(["pipeline", *common, "run.name=chat"]) == 0, capsys.readouterr().err
    run = tmp_path / "chat"
    assert json.loads((run / "rm" / "result.json").read_text())["eval/accuracy"] >= 0.5
    samples = sorted((run / "ppo" / "samples").glob("*.jsonl"))[-1]
    row = json.loads(samples.read_text().splitlines()[0])
    assert row["prompt"][-1] == {"role": "user", "content": "what was it ?"} and "gold" in row
    assert main(["pipeline", *common, "run.name=chat-dpo", "run.algorithm=dpo", "dpo.epochs=1"]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "chat-dpo" / "dpo" / "policy" / "model.safetensors").exists()


def test_prompts_longer_than_the_budget_are_said(chat_file, tmp_path, caplog):
    """A conversation cut to the prompt budget loses its first turns, which the reply depends on: the
    launch says how many prompts are cut, and by which setting."""
    from launcher.config import load_config
    from launcher.preflight import check_inputs, stages_of

    rows = recall_dialogues(40, seed=3)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": r["messages"][:-1], "answer": r["answer"]}) + "\n"
                                              for r in rows))
    args = [f"sft.train_data={chat_file}", f"ppo.prompts={tmp_path}/p.jsonl", f"run.out_dir={tmp_path}",
            "model.bpe_vocab=300", "run.backend=local"]
    for budget, said in ((8, True), (64, False)):
        caplog.clear()
        cfg = load_config(None, [*args, f"evaluation.max_prompt_len={budget}"])
        with caplog.at_level("WARNING", logger="instructrl"):
            check_inputs(cfg, stages_of("sft", cfg))
        assert ("2 of 2 prompts are longer than evaluation.max_prompt_len = 8 tokens" in caplog.text) == said, \
            caplog.text


def test_pipeline_on_hh_rlhf_as_conversations(shared_data, tmp_path, capsys):
    """The real HH-RLHF file (its first 240 pairs) under data.chat_template: SFT on every assistant turn
    of the chosen dialogues, the reward model on replies to the dialogue so far, PPO prompts that are
    conversations: SFT → RM → PPO end to end."""
    import gzip

    with gzip.open(shared_data / "hh_harmless_dev.jsonl.gz", "rt") as f:
        lines = [next(f) for _ in range(240)]
    hh = tmp_path / "hh.jsonl"
    hh.write_text("".join(lines))
    args = ["pipeline", f"sft.train_data={hh}", f"rm.train_data={hh}", f"ppo.prompts={hh}", "data.chat_template=true",
            f"run.out_dir={tmp_path}", "run.name=hh", "model.bpe_vocab=512", "run.backend=local", "model.preset=toy",
            "sft.max_len=128", "sft.epochs=1", "rm.max_len=128", "rm.epochs=1", "ppo.max_prompt_len=96",
            "ppo.max_new_tokens=8", "ppo.steps=1", "ppo.prompts_per_step=8", "ppo.minibatches=2",
            "ppo.samples_per_prompt=2", "evaluation.max_prompt_len=96", "evaluation.max_new_tokens=8",
            "evaluation.samples_per_prompt=1"]
    assert main(args) == 0, capsys.readouterr().err
    run = tmp_path / "hh"
    assert (run / "ppo" / "policy" / "model.safetensors").exists()
    row = json.loads(sorted((run / "ppo" / "samples").glob("*.jsonl"))[-1].read_text().splitlines()[0])
    assert isinstance(row["prompt"], list) and row["prompt"][-1]["role"] == "user"
