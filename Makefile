PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench gpu-check lint clean vision-references

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
	$(BIN)/python benchmarks/latency.py --onnx --openvino --with-bf16 --probe --json benchmarks/results/latency.json --update-readme docs/results.md

# The CUDA paths on a CUDA machine, under 8 minutes (benchmarks/gpu_check.sh).
gpu-check: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh

# torchvision's references/detection for tests/test_vision_references.py (else it skips), copied
# into the git-ignored third_party/vision_references/: make vision-references VISION=../vision
# (a pytorch/vision checkout, or a bare git directory of it).
vision-references:
	bash tests/get_vision_references.sh "$(VISION)"

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
