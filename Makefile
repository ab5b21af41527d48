# spikeformers: `make demo` trains the default model on Fashion-MNIST, `make test` runs the tests.
# Both set everything up on a fresh machine (virtualenv, CPU torch, the package, the data) and
# skip what is already done on a second run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spikeformers-installed
# On a CPU-only Linux machine this must resolve to the CPU wheel of torch; elsewhere set e.g.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu (CPU build) or TORCH_SPEC="torch>=2.4" (CUDA machine).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
FMNIST_SYSTEM := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: setup data demo test test-all test-triton clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test]"
	touch $@

data: setup
	@if [ -f $(FMNIST_SYSTEM) ] || $(PY) -c "from spikeformers.data import find_fashion_mnist as f; f()" 2>/dev/null; then \
		echo "Fashion-MNIST: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
		echo "Fashion-MNIST: installed with apt-get"; \
	else \
		$(PY) -m spikeformers download fashion-mnist; \
	fi

demo: data
	$(PY) -m spikeformers train --resume
	$(PY) -m spikeformers eval --checkpoint runs/a2os2a_fmnist/best.safetensors

test: data
	$(PY) -m pytest -q

test-all: data
	$(PY) -m pytest -q -m ""

# The Triton (GPU) neuron kernels under Triton's CPU interpreter, in a virtualenv of their own: the
# Triton wheel is ~1 GB and stays out of the main environment. CI runs it after `make test`.
TVENV ?= .venv-triton
TSTAMP := $(TVENV)/.spikeformers-installed

$(TSTAMP): pyproject.toml
	test -x $(TVENV)/bin/python || python3 -m venv $(TVENV)
	$(TVENV)/bin/python -m pip install -q --upgrade pip
	$(TVENV)/bin/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(TVENV)/bin/python -m pip install -q -e ".[test,triton]"
	touch $@

test-triton: $(TSTAMP)
	$(TVENV)/bin/python -m pytest -q tests/test_triton_interpreter.py

clean:
	rm -rf $(VENV) $(TVENV) runs .pytest_cache
