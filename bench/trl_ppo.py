"""The peer on the reference configuration: Hugging Face TRL's PPOTrainer (issue #5).

Same models, prompts and settings as `bench/ppo_throughput.py`: GPT-2-style policy, critic, reward and
reference models of 4 layers, width 256, 4 heads, vocabulary 512, fp32, random weights (saved by our
HF export and loaded by transformers' Auto classes, so both trainers run the same architecture);
32 prompts of 17-31 tokens per step; 32 new tokens at temperature 1.0; one PPO epoch of 4
minibatches; 2 CPU threads. TRL's defaults that we do not use are turned off — bf16 and gradient
checkpointing — so both do the same work. Prints samples/s and generated tokens/s at the median step.

TRL removed PPOTrainer after 1.12 (it lives in `trl.experimental.ppo` there). It brings accelerate
and datasets, so it gets its own virtual environment; our `models` package comes from the checkout:

    python3 -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install torch==2.13.0
    /tmp/trlvenv/bin/pip install trl==1.12.0 transformers==5.23.0 tokenizers pydantic
    PYTHONPATH=. /tmp/trlvenv/bin/python bench/trl_ppo.py [--steps 8]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time

import torch


def main() -> int:
    from ppo_reference import peer_args

    args = peer_args(__doc__, "step")

    try:
        import trl
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError as e:
        print(f"needs TRL with PPOTrainer (pip install 'trl==1.12.0'): {e}", file=sys.stderr)
        return 2
    from datasets import Dataset
    from ppo_reference import MINIBATCHES, NEW_TOKENS, ROLLOUTS, reference_setup
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.marks = [time.perf_counter()]

        def on_step_end(self, *_, **__):
            self.marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        tok, prompts, lm_dir, rm_dir = reference_setup(tmp)
        tok.padding_side = "left"
        prompt_ids = tok(prompts, add_special_tokens=False)["input_ids"]
        policy, ref = (AutoModelForCausalLM.from_pretrained(lm_dir) for _ in range(2))
        reward, value = (AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1) for _ in range(2))
        # Batch layout as ours: ROLLOUTS per step in MINIBATCHES optimizer steps, one epoch.
        ppo = PPOConfig(output_dir=f"{tmp}/out", per_device_train_batch_size=ROLLOUTS, gradient_accumulation_steps=1,
                        num_mini_batches=MINIBATCHES, num_ppo_epochs=1, response_length=NEW_TOKENS, temperature=1.0,
                        total_episodes=ROLLOUTS * args.steps, local_rollout_forward_batch_size=ROLLOUTS,
                        stop_token="eos",
                        num_sample_generations=0, report_to="none", save_strategy="no", logging_steps=10**9,
                        use_cpu=not torch.cuda.is_available(), seed=0, disable_tqdm=True,
                        bf16=False, fp16=False, gradient_checkpointing=False)
        times = StepTimes()
        trainer = PPOTrainer(args=ppo, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                             value_model=value, train_dataset=Dataset.from_dict({"input_ids": prompt_ids}),
                             callbacks=[times])
        times.marks = [time.perf_counter()]
        trainer.train()
    step_s = [b - a for a, b in zip(times.marks, times.marks[1:], strict=False)][args.warmup:]
    median = statistics.median(step_s)
    print(f"TRL {trl.__version__} PPOTrainer threads={args.threads} steps={len(step_s)} (after {args.warmup} warm-up)")
    print(f"median step: {ROLLOUTS / median:.2f} samples/s, {ROLLOUTS * NEW_TOKENS / median:.1f} generated "
          f"tokens/s (upper bound: every response at {NEW_TOKENS} tokens), {median:.2f} s/step")
    print("RESULT " + json.dumps({"samples_per_s": ROLLOUTS / median}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
