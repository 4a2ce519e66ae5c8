#!/usr/bin/env bash
# The benchmark table on a CUDA machine, in one command (from the repository root, after `make install`):
#
#     bash bench/gpu.sh [--trl-python /path/to/trl-venv/bin/python]
#
# Prints the matmul peak (fp32 and bf16), the fused Triton attention kernel against SDPA and eager
# attention (time and memory against sequence length), the kernel's GPU tests, and the #16 targets
# table (bench/targets.py: PPO and critic-free samples/s, against TRL when its venv is given, train
# MFU against the bf16 peak, generation against transformers, ZeRO-3 bytes per rank), and the PPO
# reference configuration on Ray under ppo.schedule sync, async (the generator on its own share) and
# colocated (every role on one share, its state on the GPU only while it works: the allocated peak).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this recipe is for GPUs')"
"$PY" bench/matmul_peak.py
"$PY" bench/attention.py
"$PY" -m pytest -q -m gpu tests/models/test_flash_attention.py tests/models/test_hf_interop.py
"$PY" bench/targets.py --threads "$(nproc)" "$@"
for schedule in sync async colocated; do
  "$PY" bench/ppo_throughput.py --backend ray --threads "$(nproc)" --schedule "$schedule" --steps 10
done
