# Two commands for a newcomer: `make demo` and `make test`. Both run `make setup` first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.avmdvae-installed
OUT    ?= demo_out

.PHONY: setup demo test test-slow lint bench bench-quality clean

setup: $(STAMP)

# torch: on our CPU machines `pip install torch==2.13.0` resolves to a local CPU wheel. If a torch
# >= 2.2 is already importable in the venv (e.g. a CUDA build on a GPU machine), it is kept.
# facenet-pytorch 2.5.3 goes in with --no-deps: its declared deps would pull torchvision.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 2))" 2>/dev/null \
		|| $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[metrics,dev]"
	@$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('facenet_pytorch') is None)" \
		|| $(PY) -m pip install --quiet --no-deps "facenet-pytorch==2.5.3"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/avmdvae demo $(OUT)

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check avmdvae tests bench examples

bench: setup
	$(PY) bench/run_all.py

# The quality benchmark (docs/results.md): 100-speaker corpus + new speakers, the CPU recipe, targets.
# About 100 minutes on 2 CPU cores; PROFILE=gpu for the reference sizes on a CUDA machine.
PROFILE ?= cpu
bench-quality: setup
	$(PY) bench/quality.py --profile $(PROFILE) --out runs/bench-quality-$(PROFILE)

clean:
	rm -rf $(VENV) build *.egg-info
