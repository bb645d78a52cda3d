PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench gpu-check lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# The torch / torchvision this machine has on disk; pyproject.toml only declares a range.
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/blendmask demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/latency.py --onnx --with-bf16 --json benchmarks/results/latency.json --update-readme README.md

# The CUDA paths on a CUDA machine, under 8 minutes (benchmarks/gpu_check.sh).
gpu-check: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# The oldest torch / torchvision pyproject.toml allows, and the torch-free onnxruntime install,
# each in a scratch venv under build/ (downloads torch the first time; not part of `test`).
.PHONY: check-min-torch
check-min-torch:
	PYTHON=$(PYTHON) bash scripts/check_min_torch.sh
