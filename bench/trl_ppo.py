"""The peer on the reference configuration: Hugging Face TRL's PPOTrainer (issue #5).

Same models, prompts and settings as `bench/ppo_throughput.py`: GPT-2-style policy, critic, reward and
reference models of 4 layers, width 256, 4 heads, vocabulary 512, fp32, random weights (saved by our
HF export and loaded by transformers' Auto classes, so both trainers run the same architecture);
32 prompts of 17-31 tokens per step; 32 new tokens at temperature 1.0; one PPO epoch of 4
minibatches; 2 CPU threads. Prints samples/s and generated tokens/s at the median step.

TRL removed PPOTrainer after 1.12 (it lives in `trl.experimental.ppo` there). It brings accelerate
and datasets, so it gets its own virtual environment; our `models` package comes from the checkout:

    python3 -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install torch==2.13.0
    /tmp/trlvenv/bin/pip install trl==1.12.0 transformers==5.23.0 tokenizers pydantic
    PYTHONPATH=. /tmp/trlvenv/bin/python bench/trl_ppo.py [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    try:
        import trl
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError as e:
        print(f"needs TRL with PPOTrainer (pip install 'trl==1.12.0'): {e}", file=sys.stderr)
        return 2
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

    from models.config import ModelConfig
    from models.heads import CausalLM, ScoreModel
    from models.hf import save_pretrained
    from models.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer([f"w{i}" for i in range(509)])  # 3 special tokens + 509 words = 512
    tok.padding_side = "left"
    cfg = ModelConfig(arch="gpt2", vocab_size=512, max_seq_len=128, d_model=256, n_layers=4, n_heads=4,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    rng = random.Random(0)
    prompts = [[tok.convert_tokens_to_ids(f"w{rng.randrange(509)}") for _ in range(rng.randint(17, 31))]
               for _ in range(4096)]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.marks = [time.perf_counter()]

        def on_step_end(self, *_, **__):
            self.marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_pretrained(CausalLM(cfg), Path(tmp) / "lm")
        save_pretrained(ScoreModel(cfg), Path(tmp) / "rm")
        policy, ref = (AutoModelForCausalLM.from_pretrained(Path(tmp) / "lm") for _ in range(2))
        reward, value = (AutoModelForSequenceClassification.from_pretrained(Path(tmp) / "rm", num_labels=1)
                         for _ in range(2))
        ppo = PPOConfig(output_dir=f"{tmp}/out", per_device_train_batch_size=32, gradient_accumulation_steps=1,
                        num_mini_batches=4, num_ppo_epochs=1, response_length=32, temperature=1.0,
                        total_episodes=32 * args.steps, local_rollout_forward_batch_size=32, stop_token="eos",
                        num_sample_generations=0, report_to="none", save_strategy="no", logging_steps=10**9,
                        use_cpu=not torch.cuda.is_available(), seed=0, disable_tqdm=True)
        times = StepTimes()
        trainer = PPOTrainer(args=ppo, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                             value_model=value, train_dataset=Dataset.from_dict({"input_ids": prompts}),
                             callbacks=[times])
        times.marks = [time.perf_counter()]
        trainer.train()
    step_s = [b - a for a, b in zip(times.marks, times.marks[1:], strict=False)][args.warmup:]
    median = statistics.median(step_s)
    print(f"TRL {trl.__version__} PPOTrainer threads={args.threads} steps={len(step_s)} (after {args.warmup} warm-up)")
    print(f"median step: {32 / median:.2f} samples/s, {32 * 32 / median:.1f} generated tokens/s "
          f"(upper bound: every response at 32 tokens), {median:.2f} s/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
