"""Masked attention: the Triton kernel vs PyTorch SDPA (boolean mask) vs eager (matmul-softmax-matmul).

Time and peak memory against sequence length, forward and forward+backward, causal with a random
left-padding mask (the shape PPO scoring sees). The kernel runs only on a CUDA GPU; on a CPU the
script measures SDPA and eager and says the kernel was skipped (the interpreter is for tests, not
timing).

    python bench/attention.py [--lengths 512 1024 2048 4096] [--batch 4 --heads 16 --head-dim 64]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from functools import partial

import torch


def eager(q, k, v, *, causal, key_padding_mask, scale=None):
    """The textbook path: materialise (B, H, T, S) scores, mask, softmax, multiply (no fused kernel)."""
    from models.attention import build_attention_mask

    T, S = q.shape[2], k.shape[2]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    mask = build_attention_mask(T, S, causal=causal, key_padding_mask=key_padding_mask, device=q.device)
    scores = (q @ k.transpose(-1, -2)) * (scale or 1 / math.sqrt(q.shape[-1]))  # (B, H, T, S)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
    return weights @ v


def measure(fn, inputs, backward: bool, repeats: int) -> tuple[float, float]:
    """Median milliseconds and peak MiB (CUDA only; NaN on CPU) of one call, after one warm-up call."""
    cuda = inputs[0].is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def once():
        with torch.set_grad_enabled(backward):
            out = fn()
        if backward:
            out.backward(torch.ones_like(out))
        sync()

    once()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    times = []
    for _ in range(repeats):
        for t in inputs:
            t.grad = None
        start = time.perf_counter()
        once()
        times.append((time.perf_counter() - start) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")  # printed as n/a
    return statistics.median(times), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    from models.attention import sdpa_attention

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    lengths = args.lengths or ([512, 1024, 2048, 4096, 8192] if cuda else [128, 256, 512, 1024])
    paths = {"sdpa": sdpa_attention, "eager": eager}
    if cuda:
        from models.kernels.flash_attention import flash_attention

        paths = {"triton": flash_attention, **paths}
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"# {name}, {dtype}, B={args.batch}, H={args.heads}, Hkv={args.kv_heads or args.heads}, D={args.head_dim}, "
          f"causal + left padding, median of {args.repeats}" + ("" if cuda else "; Triton kernel skipped (no GPU)"))
    print("| T | path | forward ms | fwd+bwd ms | fwd+bwd peak MiB |")
    print("| --- | --- | --- | --- | --- |")
    for T in lengths:
        g = torch.Generator().manual_seed(T)
        shape_q = (args.batch, args.heads, T, args.head_dim)
        shape_kv = (args.batch, args.kv_heads or args.heads, T, args.head_dim)
        q, k, v = (torch.randn(s, generator=g).to(device, dtype).requires_grad_()
                   for s in (shape_q, shape_kv, shape_kv))
        lengths_b = torch.randint(T // 2, T + 1, (args.batch,), generator=g)
        kpm = (torch.arange(T)[None, :] >= T - lengths_b[:, None]).to(device)  # left padding
        for path, fn in paths.items():
            call = partial(fn, q, k, v, causal=True, key_padding_mask=kpm)
            try:
                fwd, _ = measure(call, [q, k, v], backward=False, repeats=args.repeats)
                both, peak = measure(call, [q, k, v], backward=True, repeats=args.repeats)
                mib = f"{peak:.0f}" if cuda else "n/a"
                print(f"| {T} | {path} | {fwd:.2f} | {both:.2f} | {mib} |")
            except torch.OutOfMemoryError:
                print(f"| {T} | {path} | OOM | OOM | OOM |")
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
