"""A small user task made on the spot, as a user would bring it: files in the documented formats, a
reward function file, and a tiny random Hugging Face checkpoint of any family with its tokenizer.

The task: "12 + 7 =" → "19". Demonstrations are wrong 30% of the time; the reward function and the
gold function check the answer field.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

REWARDS = '''
def correct(prompts, responses, answer, **fields):
    """1 when the response's first word is the right sum."""
    return [float(r.split()[:1] == [str(a)]) for r, a in zip(responses, answer)]
'''

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def write_task(root: Path, n_sft: int = 400, n_prompts: int = 200, n_eval: int = 20, seed: int = 0) -> dict[str, Path]:
    """sft.jsonl, comparisons.jsonl (pairs), prompts.jsonl and eval.jsonl (with `answer`), rewards.py."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    def item():
        a, b = rng.randrange(20), rng.randrange(10)
        return f"{a} + {b} =", a + b

    def write(name, rows):
        with open(root / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return root / name

    sft = []
    for _ in range(n_sft):
        p, ans = item()
        sft.append({"prompt": p, "response": str(ans + (rng.choice((-1, 1)) if rng.random() < 0.3 else 0))})
    pairs = [{"prompt": p, "chosen": str(a), "rejected": str(a + rng.choice((-2, -1, 1, 2)))}
             for p, a in (item() for _ in range(n_prompts))]
    (root / "rewards.py").write_text(REWARDS)
    return {"sft": write("sft.jsonl", sft), "comparisons": write("comparisons.jsonl", pairs),
            "prompts": write("prompts.jsonl", [{"prompt": p, "answer": a} for p, a in
                                               (item() for _ in range(n_prompts))]),
            "eval": write("eval.jsonl", [{"prompt": p, "answer": a} for p, a in (item() for _ in range(n_eval))]),
            "rewards": root / "rewards.py"}


def make_tokenizer(files: dict[str, Path]):
    """A byte-level BPE trained on the task's text, with a chat template (no download needed)."""
    from models.tokenizer import train_bpe_tokenizer

    texts = [line for name in ("sft", "prompts") for line in files[name].read_text().splitlines()]
    tok = train_bpe_tokenizer(texts, vocab_size=320)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_checkpoint(family: str, tok, path: Path) -> Path:
    """A tiny random transformers checkpoint of `family` (gpt2, llama, qwen2, qwen3, mistral) with `tok`."""
    import torch
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=len(tok) + 8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  bos_token_id=tok.eos_token_id)
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=4, **common)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        prefix = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}[family]
        extra = {"qwen3": {"head_dim": 16}, "mistral": {"sliding_window": 32}}.get(family, {})
        cfg = getattr(transformers, f"{prefix}Config")(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, tie_word_embeddings=family == "qwen2", **common, **extra)
        model = getattr(transformers, f"{prefix}ForCausalLM")(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
