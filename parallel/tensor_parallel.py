"""Megatron-core tensor-parallel backend for the model's layer slots, and vocabulary-parallel math.

The only file that imports megatron.core.tensor_parallel. Attention heads and MLP columns split
across TP ranks (Megatron-LM, Shoeybi et al. 2019 §3); the vocabulary splits across ranks for the
embedding and the LM head, so log-probs and entropy are reduced across the TP group without ever
materialising the full (B, T, V) logits on one rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    vocab_parallel_cross_entropy,
)


def _init_normal(weight: torch.Tensor) -> None:
    nn.init.normal_(weight, std=0.02)  # GPT-2 initialisation, as the local backend


class _Column(ColumnParallelLinear):
    """Megatron returns (output, bias); the model's slots take a plain tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[0]


class _Row(RowParallelLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[0]


class MegatronBackend:
    """Fills the layer slots with Megatron-core column/row-parallel layers (CPU-initialised)."""

    def __init__(self, tp_size: int, dtype: torch.dtype = torch.float32):
        self.tp_size = tp_size
        self.config = ModelParallelConfig(tensor_model_parallel_size=tp_size, use_cpu_initialization=True,
                                          params_dtype=dtype, perform_initialization=True)

    def column_linear(self, d_in: int, d_out: int, bias: bool) -> nn.Module:
        return _Column(d_in, d_out, config=self.config, init_method=_init_normal, bias=bias, gather_output=False)

    def row_linear(self, d_in: int, d_out: int, bias: bool) -> nn.Module:
        return _Row(d_in, d_out, config=self.config, init_method=_init_normal, bias=bias,
                    input_is_parallel=True, skip_bias_add=False)

    def vocab_embedding(self, vocab_size: int, dim: int) -> nn.Module:
        return VocabParallelEmbedding(vocab_size, dim, init_method=_init_normal, config=self.config)

    def tied_logits(self, h: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        # Identity forward, all-reduce backward: every rank's vocabulary shard contributes to dL/dh.
        return F.linear(copy_to_tensor_model_parallel_region(h), embedding_weight)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        return _GatherLastDim.apply(logits)

    def replicated(self, weight: torch.Tensor) -> torch.Tensor:
        # Identity forward, all-reduce backward: the q/k norm gains see only this rank's heads.
        return copy_to_tensor_model_parallel_region(weight)

    def token_logprobs(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Megatron's fused vocab-parallel cross-entropy is -log p(label); it modifies its input in place.
        return -vocab_parallel_cross_entropy(logits.float().clone(), labels)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """H = log Z - E_p[z] with Z and E_p[z] summed over the vocabulary shards."""
        z = logits.float()
        group = parallel_state.get_tensor_model_parallel_group()
        shift = z.detach().max(-1, keepdim=True).values
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
        z = z - shift
        exp = z.exp()
        sum_exp = reduce_from_tensor_model_parallel_region(exp.sum(-1))
        sum_exp_z = reduce_from_tensor_model_parallel_region((exp * z).sum(-1))
        return torch.log(sum_exp) - sum_exp_z / sum_exp


class _GatherLastDim(torch.autograd.Function):
    """All-gather vocabulary shards along the last dim; backward keeps this rank's slice.

    Megatron's own gather allocates on torch.cuda.current_device(), which a CPU rank does not have.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        group = parallel_state.get_tensor_model_parallel_group()
        ctx.rank, ctx.world = dist.get_rank(group), dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.chunk(ctx.world, dim=-1)[ctx.rank].contiguous()


def is_tp_sharded(param: torch.Tensor) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


def gather_state_dict(model: nn.Module, state: dict[str, torch.Tensor], tp_size: int) -> dict[str, torch.Tensor]:
    """Merge TP shards of `state` (this rank's, e.g. already gathered from ZeRO) into full tensors."""
    if tp_size == 1:
        return state
    group = parallel_state.get_tensor_model_parallel_group()
    params = dict(model.named_parameters())
    out = {}
    for name, tensor in state.items():
        p = params.get(name)
        if p is not None and is_tp_sharded(p):
            parts = [torch.empty_like(tensor) for _ in range(tp_size)]
            dist.all_gather(parts, tensor.contiguous(), group=group)
            out[name] = torch.cat(parts, dim=p.partition_dim)
        else:
            out[name] = tensor
    return out
