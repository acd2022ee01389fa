# `make demo` and `make test` each build .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: demo test fetch lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the pinned CPU build comes from local disk here; an unpinned one pulls GBs of CUDA.
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,mlx]'
	touch $@

fetch: $(VENV)/.installed
	$(PY) -m sadt.lm.fetch

demo: fetch
	$(PY) -m search.demo --config configs/demo/airpassengers.yaml

test: fetch
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) outputs
