"""The critic-free peer on the reference configuration: Hugging Face TRL's GRPOTrainer.

The models and prompts of `bench/ppo_reference.py` (GPT-2 style, 4 layers, width 256, vocabulary
512, fp32, random weights, loaded by transformers' Auto classes); per generation 8 prompts × 4
samples = 32 completions of 32 new tokens at temperature 1.0, scored by the reward model; 4
optimizer steps of 8 completions on each generation (one pass, TRL's num_iterations=1: the sampler's
log-probs serve as the old ones, as ours reuse them); KL to the reference model in the loss
(β = 0.02); bf16 and gradient checkpointing off. Our side: `bench/ppo_throughput.py --estimator grpo
--recompute-every 1000` (the same work: generation, reference and reward forwards, 4 policy updates).
Prints samples (completions) per second over the generations after the warm-up ones.

TRL's venv as for bench/trl_ppo.py:

    PYTHONPATH=. /tmp/trlvenv/bin/python bench/trl_grpo.py [--steps 8]
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main() -> int:
    from ppo_reference import peer_args

    args = peer_args(__doc__, "generation (32 completions, 4 optimizer steps)")
    try:
        import trl
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        print(f"needs TRL (pip install 'trl==1.12.0'): {e}", file=sys.stderr)
        return 2
    import tempfile

    from datasets import Dataset
    from ppo_reference import MINIBATCHES, NEW_TOKENS, ROLLOUTS, reference_setup
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

    samples = 4

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, *_, **__):
            self.marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        tok, prompts, lm_dir, rm_dir = reference_setup(tmp)
        tok.padding_side = "left"
        policy = AutoModelForCausalLM.from_pretrained(lm_dir)
        reward = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1)
        reward.config.pad_token_id = tok.pad_token_id
        per_step = ROLLOUTS // MINIBATCHES
        cfg = GRPOConfig(output_dir=f"{tmp}/out", per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
                         steps_per_generation=MINIBATCHES, num_generations=samples, num_iterations=1,
                         max_completion_length=NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0, beta=0.02,
                         max_steps=args.steps * MINIBATCHES, report_to="none", save_strategy="no",
                         logging_steps=10**9, use_cpu=not torch.cuda.is_available(), seed=0, disable_tqdm=True,
                         bf16=False, fp16=False, gradient_checkpointing=False, use_vllm=False)
        times = StepTimes()
        trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=cfg, processing_class=tok,
                              reward_processing_classes=tok, train_dataset=Dataset.from_dict({"prompt": prompts}),
                              callbacks=[times])
        start = time.perf_counter()
        trainer.train()
    # Each generation is followed by MINIBATCHES optimizer steps; measure whole generations after warm-up.
    ends = [start] + times.marks[MINIBATCHES - 1::MINIBATCHES]
    cycles = [b - a for a, b in zip(ends, ends[1:], strict=False)][args.warmup:]
    rate = ROLLOUTS * len(cycles) / sum(cycles)
    print(f"TRL {trl.__version__} GRPOTrainer threads={args.threads} generations={len(cycles)} "
          f"(after {args.warmup} warm-up)")
    print(f"mean: {rate:.2f} samples/s over {len(cycles)} generations of {ROLLOUTS} completions")
    print("RESULT " + json.dumps({"samples_per_s": rate}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
