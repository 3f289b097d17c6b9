# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Torch comes from this pinned pair only; the constraints file stops anything pulling another.
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
# `make demo DEMO_ARGS="--seed 1"` passes options on to `capcli demo`.
DEMO_ARGS ?=

# The second torch release the suite runs on (CI): installed first, then capcli, which must keep it.
OTHER_TORCH := torch==2.13.0 torchvision==0.28.0
OTHER_VENV := .venv-torch2.13

.PHONY: demo test test-other-torch install lint docs clean gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml constraints.txt
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/capcli demo $(DEMO_ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

# The suite on $(OTHER_TORCH), in a venv of its own: the pair first, then capcli without
# constraints.txt, then a check that installing capcli kept the pair.
$(OTHER_VENV)/.installed: setup.cfg pyproject.toml Makefile
	rm -rf $(OTHER_VENV) && $(PYTHON) -m venv $(OTHER_VENV)
	$(OTHER_VENV)/bin/pip install --disable-pip-version-check -q $(OTHER_TORCH)
	$(OTHER_VENV)/bin/pip freeze | grep -E '^torch(vision)?==' > $(OTHER_VENV)/torch-pair
	$(OTHER_VENV)/bin/pip install --disable-pip-version-check -q -e '.[test]'
	$(OTHER_VENV)/bin/pip freeze | grep -E '^torch(vision)?==' | cmp -s - $(OTHER_VENV)/torch-pair || \
		{ echo "installing capcli replaced torch or torchvision:"; $(OTHER_VENV)/bin/pip freeze | grep -E '^torch'; exit 1; }
	touch $@

test-other-torch: $(OTHER_VENV)/.installed
	@echo "suite on $$(tr '\n' ' ' < $(OTHER_VENV)/torch-pair)"
	$(OTHER_VENV)/bin/python -m pytest -q -p no:cacheprovider

# On a machine with a CUDA GPU: the `gpu` tests and the bench on the GPU, figures in gpu-check/*.json.
gpu-check: $(VENV)/.installed-test
	@if ! $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		echo "gpu-check: no CUDA device here; skipped"; exit 0; fi; \
	rm -rf gpu-check && mkdir gpu-check && \
	$(BIN)/python -c "import json, torch; print(json.dumps({'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'cuda': torch.version.cuda}))" > gpu-check/device.json && \
	CAPCLI_GPU_CHECK_OUT=gpu-check $(BIN)/python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py && \
	$(BIN)/capcli bench --device cuda --quick --json-file gpu-check/bench.json

lint: $(VENV)/.installed-test
	$(BIN)/ruff check capcli tests

# docs/reference.md from the commands' own --help (tests/test_reference.py checks it is current).
docs: $(VENV)/.installed
	$(BIN)/python -m capcli.cli.reference > docs/reference.md

clean:
	rm -rf $(VENV) $(OTHER_VENV) build *.egg-info
