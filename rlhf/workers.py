"""Worker roles: one class per role, each hosting one model shard on one rank.

A worker's public methods are what the coordinator calls through a group (`group.map(Worker.method,
batch)`); they take and return CPU tensors and plain values, and move work to the rank's device.
Shared machinery (engine, checkpoints, export) comes from `ModelWorker`; no role flags.
Must not import ray.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from models.generation import Generation, SamplingParams, collate_prompts, generate, pad_generation
from models.heads import CausalLM, gather_last
from parallel.engine import EngineConfig, OptimConfig, copy_parameters
from parallel.host import ModelSource, build_engine, export_hf
from parallel.mesh import Mesh
from rlhf.algo.averaging import mean_state
from rlhf.algo.ppo import KLTerm, ppo_policy_objective, value_loss
from rlhf.algo.preference import preference_loss
from rlhf.algo.ranking import ranking_loss
from rlhf.algo.rollout import Rollout
from rlhf.batching import Encoded, LMBatch, collate_lm, off_prompt_examples
from rlhf.logprobs import forward_batch, response_logits, response_logprobs, sampled_logprobs, sft_loss, target_logprobs
from rlhf.residency import Movable


@dataclass(frozen=True)
class PolicyStep:
    """The scalars of one policy update (the coordinator passes these, not a config object)."""

    clip_eps: float
    entropy_coef: float
    ptx_coef: float
    temperature: float
    clip_eps_high: float | None = None
    top_k: int = 0
    top_p: float = 1.0
    kl_coef: float = 0.0  # β of the KL as a loss term (0: the KL is in the reward, or not used)
    kl_estimator: str = "k1"
    target_kl: float | None = None  # ppo.target_kl: skip the rest of an update once its approx-KL passes this


class ModelWorker(Movable):
    """One rank's model in an engine, with the calls every role shares."""

    kind = "lm"

    def __init__(self, mesh: Mesh, source: ModelSource, engine: EngineConfig, optim: OptimConfig | None = None,
                 total_steps: int = 1, micro_batch: int = 1):
        self.mesh, self.engine_cfg = mesh, engine
        self.cfg, state = source.load()
        self.engine = build_engine(self.kind, self.cfg, state, engine, optim, mesh, total_steps, micro_batch)
        self.model = self.engine.module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Outputs (B, T, ...) of a padded batch, packed when the engine config says so (`forward_batch`)."""
        self._resident()
        return forward_batch(self.engine, input_ids, attention_mask, self.engine_cfg.packing)

    def _on_device(self, rollout: Rollout) -> Rollout:
        return rollout.to(self.mesh.device)

    def _reduced(self, value: float, op: str) -> float:
        """`value` reduced over every rank of the group ("max" or "mean"), the same on each. Tensor-parallel
        ranks hold their data-parallel rank's value, so a mean is the mean over data-parallel ranks."""
        if not self.mesh.distributed or self.mesh.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.mesh.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.item() / (self.mesh.world_size if op == "mean" else 1)

    def _everywhere(self, ok: bool) -> bool:
        """True on every rank of the group iff `ok` is true on every rank: a decision no rank may
        take alone (skipping an update, refusing a save) must be taken by all of them."""
        return self._reduced(0.0 if ok else 1.0, "max") == 0.0

    def _update(self, loss: torch.Tensor) -> dict[str, float]:
        """backward and optimizer step, unless the loss is NaN or infinite on any rank of the group:
        then no rank updates. A non-finite gradient norm is skipped by the engine itself (the norm is
        global, so every rank sees the same). "skipped" is 1.0 for a skipped update."""
        if not self._everywhere(bool(torch.isfinite(loss.detach()).all())):
            return {"skipped": 1.0}
        self.engine.backward(loss)
        stepped = self.engine.step()
        if stepped is None:  # inside a gradient-accumulation window
            return {}
        return {**stepped, "skipped": float(not math.isfinite(stepped["grad_norm"]))}

    def save_state(self, directory: str | Path, client_state: dict) -> None:
        """This rank's training state. Refused on every rank if any rank holds a non-finite weight:
        a diverged model never becomes the checkpoint that a restart or a resume would load."""
        self._resident()
        finite = all(bool(torch.isfinite(p).all()) for p in self.engine.stored_parameters())
        if not self._everywhere(finite):
            from rlhf.guards import DivergedError

            raise DivergedError(f"{directory}: not saved: the model holds NaN or infinite weights")
        self.engine.save(directory, client_state)

    def load_state(self, directory: str | Path) -> dict:
        self._resident()
        return self.engine.load(directory)

    def export(self, path: str | Path) -> str:
        """Consolidated HF checkpoint (collective: call on every rank; rank 0 writes)."""
        self._resident()
        return str(export_hf(self.engine, self.mesh, path))

    def describe(self) -> dict:
        """Where this rank lives and how much of the model it stores."""
        return {"pid": os.getpid(), "rank": self.mesh.rank, "tp_rank": self.mesh.tp_rank,
                "dp_rank": self.mesh.dp_rank, "numel": self.engine.partitioned_numel(), **self.engine.state_bytes()}


class LMWorker(ModelWorker):
    """A causal LM rank: the policy and the reference share how they score sampled tokens."""

    def logprobs(self, rollout: Rollout, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
        """log π(sampled token) (B, R) under this rank's weights, through the training forward path."""
        self.model.eval()
        with torch.no_grad():
            r = self._on_device(rollout)
            return response_logprobs(self.forward, self.model.backend, r, temperature, top_k, top_p).float().cpu()

    def _sequence_logprobs(self, groups: list[list[Encoded]], pad_id: int) -> torch.Tensor:
        """Σ log π(response tokens | prompt) (N,) of every response of every ranking, in order."""
        b = collate_lm([e for g in groups for e in g], pad_id).to(self.mesh.device)
        logprobs, mask = target_logprobs(self.forward(b.input_ids, b.attention_mask), b, self.model.backend)
        return (logprobs * mask).sum(-1)  # (N,)

    def sequence_logprobs(self, groups: list[list[Encoded]], pad_id: int) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return self._sequence_logprobs(groups, pad_id).float().cpu()


class PolicyWorker(LMWorker):
    """The policy (InstructGPT's π): SFT, sampling, and PPO updates.

    Generation runs on the training module itself for ZeRO stages 0-2 (the weights are whole on
    every rank, so there is nothing to sync). Under ZeRO-3 the parameters are partitioned; decoding
    token by token would gather every layer at every step, so the rank keeps a whole copy for
    generation and `sync_generation` refreshes it after each update.
    """

    def __init__(self, *args, rollout: str = "builtin", seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._gen_copy = self._vllm = None
        if rollout == "vllm":
            from models.hf import to_hf_state_dict
            from models.vllm_sampler import VLLMSampler

            if self.mesh.tp_size != 1:
                raise ValueError("rollout=vllm needs policy.group.tp_size: 1")
            state = to_hf_state_dict(self.cfg, self.engine.local_state_dict())
            self._vllm = VLLMSampler(self.cfg, state, seed + 1_000_003 * self.mesh.dp_rank, self.cfg.max_seq_len)
        elif self.engine_cfg.zero_stage == 3:
            self._gen_copy = CausalLM(self.cfg, self.model.backend).to(self.engine_cfg.dtype()).to(self.mesh.device)
            self._gen_copy.requires_grad_(False)
            self.sync_generation()

    def sync_generation(self) -> float:
        """Copy the trained weights into the generation path (the ZeRO-3 copy, or the vLLM engine, in
        memory); returns the seconds it took."""
        start = time.perf_counter()
        if self._vllm is not None:
            from models.hf import to_hf_state_dict

            self._vllm.load_weights(to_hf_state_dict(self.cfg, self.engine.local_state_dict()))
        elif self._gen_copy is not None:
            copy_parameters(self._gen_copy, self.engine.local_state_dict())
        return time.perf_counter() - start

    def weights(self) -> dict[str, torch.Tensor] | None:
        """The trained weights for a generator group (ppo.schedule=async): whole under every ZeRO stage, this
        rank's tensor-parallel part; None on data-parallel ranks after the first, whose copies are the same."""
        if self.mesh.dp_rank != 0:
            return None
        self._resident()
        return {k: v.detach().to("cpu", copy=True) for k, v in self.engine.local_state_dict().items()}

    def load_weights(self, policy_ranks: list[dict[str, torch.Tensor] | None]) -> float:
        """Take the policy's weights for sampling, from `weights` of every policy rank (in rank order: the
        first data-parallel slot's ranks are its tensor-parallel ranks); returns the seconds it took."""
        start = time.perf_counter()
        copy_parameters(self._generation_model, [w for w in policy_ranks if w is not None][self.mesh.tp_rank])
        return time.perf_counter() - start

    def snapshot(self, directory: str | Path) -> None:
        """This rank's weights (its tensor-parallel part, whole), in fp32, as <directory>/rank-<r>.safetensors: one
        term of the average ppo.average_last makes (collective: ZeRO-3 gathers each weight)."""
        self._resident()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.engine.local_state_dict().items()},
                  path / f"rank-{self.mesh.rank:05d}.safetensors")

    def average_snapshots(self, directories: list[str]) -> None:
        """Replace this rank's stored weights with the mean of its snapshots in `directories` (ppo.average_last),
        and refresh the generation path (the ZeRO-3 copy, the vLLM engine)."""
        self._resident()
        files = [Path(d) / f"rank-{self.mesh.rank:05d}.safetensors" for d in directories]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"ppo.average_last: the policy's weights of an evaluation are missing: {missing}")
        self.engine.set_local_state(mean_state([load_file(f) for f in files]))
        self.sync_generation()

    @property
    def _generation_model(self) -> CausalLM:
        self._resident()
        return self._gen_copy if self._gen_copy is not None else self.model

    def logits(self, batch: LMBatch) -> torch.Tensor:
        """Full-vocabulary logits (B, T, V), fp32 on CPU (a test and debugging view)."""
        self.model.eval()
        with torch.no_grad():
            b = batch.to(self.mesh.device)
            out = self.model.backend.gather_vocab(self.forward(b.input_ids, b.attention_mask))
        return out.float().cpu()

    def generate(self, prompts: list[list[int]], width: int, params: SamplingParams, eos_id: int, pad_id: int,
                 seed: int) -> Generation:
        """Sample responses for token-id prompts, left-padded to `width` and right-padded to
        max_new_tokens, so every data-parallel rank returns tensors of the same shape."""
        self.model.eval()
        if self._vllm is not None:
            out = self._vllm.generate(prompts, width, params, eos_id, pad_id, seed + 1_000_003 * self.mesh.dp_rank)
            return pad_generation(out, params.max_new_tokens, pad_id)
        ids, mask = collate_prompts(prompts, pad_id, width)
        # TP peers share the seed (they must sample identical tokens); DP ranks differ.
        gen = torch.Generator(device=self.mesh.device).manual_seed(seed + 1_000_003 * self.mesh.dp_rank)
        out = generate(self._generation_model, ids.to(self.mesh.device), mask.to(self.mesh.device), params, eos_id,
                       pad_id, gen)
        return pad_generation(out, params.max_new_tokens, pad_id).to("cpu")

    def ppo_step(self, batch: dict, hp: PolicyStep) -> dict[str, float]:
        """One minibatch of the clipped PPO objective (+ entropy bonus, + γ_ptx × LM loss on pretraining
        text). batch: {"rollout": Rollout, "ptx": LMBatch | None, "first": True on an update's first
        minibatch}, both split by data-parallel rank. With hp.target_kl, a minibatch whose approximate KL to the
        rollout's policy passes it is not stepped, nor is any later one of the same update ("kl_stopped": 1)."""
        if hp.target_kl is not None:
            if batch.get("first"):
                self.kl_stopped = False
            if getattr(self, "kl_stopped", False):
                return {"policy/kl_stopped": 1.0}
        self.model.train()
        r, ptx = self._on_device(batch["rollout"]), batch["ptx"]
        backend = self.model.backend
        logits = response_logits(self.forward, r) / hp.temperature  # (B, R, V)
        logprobs = sampled_logprobs(backend, logits, r.responses, hp.top_k, hp.top_p)
        entropy = backend.entropy(logits)  # of the tempered distribution, before top-k/top-p
        ptx_loss = None
        if ptx is not None and hp.ptx_coef:
            b = ptx.to(self.mesh.device)
            ptx_loss, _ = sft_loss(self.forward(b.input_ids, b.attention_mask), b, backend)
        # The minibatch's weights sum to 1 over all its rows; this rank holds some of them, and the
        # engine averages gradients over the data-parallel ranks, hence × dp_size.
        weights = r.loss_weights * self.mesh.dp_size
        kl = KLTerm(r.ref_logprobs, hp.kl_coef, hp.kl_estimator) if hp.kl_coef else None
        loss, metrics = ppo_policy_objective(logprobs, r.old_logprobs, r.advantages, weights, entropy, hp.clip_eps,
                                             hp.entropy_coef, ptx_loss, hp.ptx_coef, hp.clip_eps_high, kl, r.is_weights)
        if hp.target_kl is not None:
            self.kl_stopped = self._reduced(metrics["policy/approx_kl"], "mean") > hp.target_kl
            metrics["policy/kl_stopped"] = float(self.kl_stopped)
            if self.kl_stopped:
                return metrics
        stepped = self._update(loss)
        return {**metrics, **{f"policy/{k}": v for k, v in stepped.items()}}


    def _preference(self, items: list[tuple[list[Encoded], torch.Tensor]], pad_id: int, beta: float, kind: str):
        groups = [g for g, _ in items]
        ref = torch.cat([r for _, r in items]).to(self.mesh.device)
        return preference_loss(self._sequence_logprobs(groups, pad_id), ref, [len(g) for g in groups], beta, kind)

    def dpo_step(self, items: list[tuple[list[Encoded], torch.Tensor]], pad_id: int, beta: float,
                 kind: str) -> dict[str, float]:
        """One batch of rankings (each with its reference log-probs) under the DPO or IPO loss."""
        self.model.train()
        loss, metrics = self._preference(items, pad_id, beta, kind)
        return {"loss": loss.item(), **metrics, **self._update(loss)}

    def dpo_eval(self, items: list[tuple[list[Encoded], torch.Tensor]], pad_id: int, beta: float,
                 kind: str) -> dict[str, float]:
        """Sums over this rank's rankings, so the driver forms exact means over ranks."""
        self.model.eval()
        with torch.no_grad():
            loss, m = self._preference(items, pad_id, beta, kind)
        n = float(len(items))
        return {"loss_sum": loss.item() * n, "accuracy_sum": m["accuracy"] * n, "margin_sum": m["margin"] * n,
                "prompts": n}

    def sft_step(self, batch: LMBatch) -> dict[str, float]:
        """One micro-batch of response-only NLL; the engine updates at accumulation boundaries."""
        self.model.train()
        b = batch.to(self.mesh.device)
        loss, n = sft_loss(self.forward(b.input_ids, b.attention_mask), b, self.model.backend)
        return {"loss": loss.item(), "tokens": float(n), **self._update(loss)}

    def sft_eval(self, batch: LMBatch) -> dict[str, float]:
        """Summed NLL and token count, so the driver forms a token-weighted mean over ranks."""
        self.model.eval()
        with torch.no_grad():
            b = batch.to(self.mesh.device)
            loss, n = sft_loss(self.forward(b.input_ids, b.attention_mask), b, self.model.backend)
        return {"nll_sum": loss.item() * float(n), "tokens": float(n)}


class ReferenceWorker(LMWorker):
    """The frozen SFT model π_SFT that the per-token KL penalty is measured against."""


class CriticWorker(ModelWorker):
    """The value function V(state before each response token); initialised from the reward model."""

    kind = "score"

    def _values(self, r: Rollout) -> torch.Tensor:
        values = self.forward(r.sequences, r.attention_mask)  # (B, T)
        return values[:, r.prompt_len - 1:-1] * r.response_mask  # (B, R)

    def values(self, rollout: Rollout) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return self._values(self._on_device(rollout)).float().cpu()

    def value_step(self, rollout: Rollout, value_clip: float | None) -> dict[str, float]:
        """One minibatch of the clipped value loss against the GAE returns."""
        self.model.train()
        r = self._on_device(rollout)
        weights = r.loss_weights * self.mesh.dp_size  # see PolicyWorker.ppo_step
        loss, metrics = value_loss(self._values(r), r.values, r.returns, weights, value_clip)
        stepped = self._update(loss)
        return {"critic/loss": loss.item(), **metrics, **{f"critic/{k}": v for k, v in stepped.items()}}


class RewardModelWorker(ModelWorker):
    """The reward model r(x, y): a scalar read at the last real token of prompt + response."""

    kind = "score"

    def _rewards(self, groups: list[list[Encoded]], pad_id: int,
                 extra: list[Encoded] = ()) -> tuple[torch.Tensor, list[int]]:
        # Every response of every prompt (then `extra`) in one padded batch: each is forwarded exactly once.
        batch = collate_lm([e for g in groups for e in g] + list(extra), pad_id).to(self.mesh.device)
        values = self.forward(batch.input_ids, batch.attention_mask)  # (N, T)
        return gather_last(values, batch.attention_mask), [len(g) for g in groups]

    def _ranking(self, groups: list[list[Encoded]], pad_id: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          dict, torch.Tensor]:
        """The ranking loss, its metrics and the responses' rewards, and the off-prompt pairs' loss
        (rlhf.batching.off_prompt_examples; 0 where max_len is 0 or the batch has no pair), with how many
        there are and how many the reward model ranks right in the metrics (sums: ranks' averages keep
        their ratio)."""
        own, off = off_prompt_examples(groups, max_len) if max_len else ([], [])
        rewards, sizes = self._rewards(groups, pad_id, off)
        n = sum(sizes)
        loss, metrics = ranking_loss(rewards[:n], sizes)
        off_loss, correct = rewards.new_zeros(()), 0.0
        if off:
            pairs = torch.stack([rewards[torch.tensor(own, device=rewards.device)], rewards[n:]], dim=1)
            off_loss, m = ranking_loss(pairs.flatten(), [2] * len(off))
            correct = m["accuracy"] * len(off)
        metrics |= {"off_prompt_correct": correct, "off_prompt_pairs": float(len(off))}
        return loss, off_loss, metrics, rewards[:n]

    def rm_step(self, groups: list[list[Encoded]], pad_id: int, off_prompt_weight: float = 0.0,
                max_len: int = 0) -> dict[str, float]:
        """One batch of rankings (each inner list: one prompt's responses, best first); with an
        off_prompt_weight, plus that times the off-prompt pairs' loss (examples fitted to max_len)."""
        self.model.train()
        loss, off_loss, metrics, rewards = self._ranking(groups, pad_id, max_len if off_prompt_weight else 0)
        total = loss + off_prompt_weight * off_loss
        return {"loss": total.item(), "ranking_loss": loss.item(), **metrics, "reward_mean": rewards.mean().item(),
                **self._update(total)}

    def rm_eval(self, groups: list[list[Encoded]], pad_id: int, max_len: int = 0) -> dict:
        """Sums over this rank's prompts (loss, accuracy, margin; with a max_len, the off-prompt pairs'
        accuracy) and every ranked response's reward."""
        self.model.eval()
        with torch.no_grad():
            loss, _, m, rewards = self._ranking(groups, pad_id, max_len)
        n = float(len(groups))
        return {"loss_sum": loss.item() * n, "accuracy_sum": m["accuracy"] * n, "margin_sum": m["margin"] * n,
                "prompts": n, "off_prompt_correct": m["off_prompt_correct"], "off_prompt_pairs": m["off_prompt_pairs"],
                "rewards": rewards.float().cpu()}

    def scores(self, rollout: Rollout) -> torch.Tensor:
        """Rewards (B,) of prompt + response, read at each row's last real token (the EOS, or the last
        sampled token of a truncated response), with the same position ids as generation."""
        self.model.eval()
        with torch.no_grad():
            r = self._on_device(rollout)
            values = self.forward(r.sequences, r.attention_mask)
            return gather_last(values, r.attention_mask).float().cpu()
