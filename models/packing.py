"""Packed (varlen) rows: a padded batch's real tokens repacked into fewer, fully used rows, and back.

A padded batch (B, T) spends its forward and backward on padding: left-padded prompts, responses
that ended early. `pack_rows` keeps only the real tokens, sequence by sequence, and places whole
sequences into rows no wider than the longest one (first-fit decreasing bin packing), each position
tagged with its sequence (`segments`, -1 on the little padding left) and its position id within it.
The attention masks by segment, so every token sees exactly what it saw in the padded batch and the
outputs agree to rounding; `Packed.unpack` puts them back in the padded layout, zeros at padding.
Rows stay about as wide as the padded batch (not one long row), so the attention's cost keeps
growing with each row's width squared, not with the whole batch's.
Must not import torch.distributed, deepspeed, megatron or ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packed:
    input_ids: torch.Tensor  # (N, W) long
    segments: torch.Tensor  # (N, W) int32: source row of each position, -1 on padding
    positions: torch.Tensor  # (N, W) long: position id within its sequence (0 on padding)
    source: torch.Tensor  # (n,) flat index into the padded (B·T) layout of each real token
    target: torch.Tensor  # (n,) flat index into the packed (N·W) layout of the same token
    padded_shape: tuple[int, int]  # (B, T)

    def unpack(self, out: torch.Tensor) -> torch.Tensor:
        """(N, W, ...) outputs of the packed rows → (B, T, ...) in the padded layout, 0 at padding."""
        N, W = self.input_ids.shape
        B, T = self.padded_shape
        rest = out.shape[2:]
        flat = out.reshape(N * W, *rest)
        padded = flat.new_zeros(B * T, *rest)
        padded = padded.index_copy(0, self.source, flat.index_select(0, self.target))
        return padded.view(B, T, *rest)

    @property
    def fill(self) -> float:
        """Share of the packed slots that hold real tokens."""
        return self.target.numel() / max(1, self.input_ids.numel())


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) with sum of lengths ≤ capacity each, by first-fit decreasing
    (at most 11/9·OPT + 1 bins); longest items first, ties in index order, so the result is deterministic."""
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        if n == 0:
            continue
        for b, load in enumerate(loads):
            if load + n <= capacity:
                bins[b].append(i)
                loads[b] += n
                break
        else:
            bins.append([i])
            loads.append(n)
    return bins


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Packed:
    """Pack the real tokens (attention_mask True) of each row of (B, T) into rows of width max
    tokens per row. Position ids count each row's real tokens from 0 (as `positions_from_mask`), so
    left- and right-padded batches pack alike."""
    B, T = input_ids.shape
    mask = attention_mask.bool()
    lengths = mask.sum(-1)  # (B,)
    width = max(1, int(lengths.max()))
    bins = first_fit_decreasing(lengths.tolist(), width)
    # Where each source row starts in the packed layout (flat index of its first token).
    start = torch.zeros(B, dtype=torch.long)
    for b, rows in enumerate(bins):
        offset = b * width
        for i in rows:
            start[i] = offset
            offset += int(lengths[i])
    start = start.to(input_ids.device)
    rank = mask.long().cumsum(-1) - 1  # (B, T): index of each real token within its row
    rows, cols = mask.nonzero(as_tuple=True)  # real tokens, row-major
    source = rows * T + cols
    target = start[rows] + rank[rows, cols]
    N = max(1, len(bins))
    ids = input_ids.new_zeros(N * width).index_copy(0, target, input_ids.reshape(-1)[source])
    segments = torch.full((N * width,), -1, dtype=torch.int32, device=input_ids.device)
    segments = segments.index_copy(0, target, rows.to(torch.int32))
    positions = torch.zeros(N * width, dtype=torch.long, device=input_ids.device).index_copy(0, target,
                                                                                             rank[rows, cols])
    return Packed(ids.view(N, width), segments.view(N, width), positions.view(N, width), source, target, (B, T))
