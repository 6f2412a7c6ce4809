# Set-up and entry points. Every target creates (or reuses) the isolated environment in .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.assigndet-installed
KERNEL_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: install demo test lint clean

install: $(STAMP)

# Step 1 installs the declared dependencies (torch among them); step 2 compiles assigndet._C
# against that torch, so it needs --no-build-isolation.
$(STAMP): pyproject.toml setup.py $(KERNEL_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

# The demo: train FCOS on the generated shapes dataset on CPU, evaluate it, then draw predictions
# next to ground truth and plot the loss curves, all under $(DEMO_DIR).
DEMO_DIR ?= output/demo
demo: $(STAMP)
	$(PY) train_net.py --config-file configs/quickstart/fcos_shapes.yaml OUTPUT_DIR $(DEMO_DIR)
	$(PY) tools/visualize.py --config-file configs/quickstart/fcos_shapes.yaml \
		--output $(DEMO_DIR)/pictures --metrics $(DEMO_DIR)/metrics.json \
		MODEL.WEIGHTS $(DEMO_DIR)/model_final.pth

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf build assigndet/_C*.so $(VENV)
