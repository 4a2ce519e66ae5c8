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
    args = ["sft", f"sft.train_data={chat_file}", f"run.out_dir={tmp_path}", "run.name=own", f"model.pretrained={ckpt}",
            "run.backend=local", "sft.max_len=48", "sft.epochs=1", "sft.batch_size=16"]
    assert main(args) == 0, capsys.readouterr().err
    assert load_tokenizer(tmp_path / "own" / "sft").chat_template == template
