"""The machine's matmul peak, the yardstick of model FLOPs utilisation (MFU): the best sustained
FLOP/s of square matrix products, fp32 on the CPU (with the given threads), and fp32 and bf16 on a
CUDA GPU when there is one.

    python bench/matmul_peak.py [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch


def matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu", sizes=(512, 1024, 2048),
                seconds: float = 1.0) -> float:
    """Best FLOP/s (2·n³ per product) over the sizes, each run for about `seconds` after a warm-up."""
    best = 0.0
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        torch.mm(a, b)  # warm-up: thread pools, kernels
        reps, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            reps += 1
            if device == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, 2 * n ** 3 * reps / elapsed)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    print(f"cpu fp32, {args.threads} threads: {matmul_peak() / 1e9:.1f} GFLOP/s")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for dtype in (torch.float32, torch.bfloat16):
            peak = matmul_peak(dtype, "cuda", sizes=(4096, 8192))
            print(f"{name} {str(dtype).removeprefix('torch.')}: {peak / 1e12:.1f} TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
