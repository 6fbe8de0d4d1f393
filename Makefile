# Every target works on a fresh clone: each depends on the venv, which `install` builds once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench bench-accuracy bench-accuracy-shapes gpu-check lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/pytest -n 2

demo: install
	$(BIN)/pipseg demo

bench: install
	$(BIN)/python benchmarks/run_all.py

# The hard benchmark's core grid, 3 seeds, scratch and pretrained (~30 min on 2 cores).
bench-accuracy: install
	$(BIN)/python benchmarks/accuracy_hard.py --json runs/accuracy-hard/results.json

# The embedded shapes (too easy to tell label sources apart; kept for the loss ablations).
bench-accuracy-shapes: install
	$(BIN)/python benchmarks/accuracy.py --ablations --json runs/accuracy/results.json

# On a CUDA machine: train, sync, loss, predict/eval/export checks (~5 min); without CUDA it exits 0.
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py --json runs/gpu-check/gpu_check.json

lint: install
	$(BIN)/ruff check pipseg tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
