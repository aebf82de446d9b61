# Everything installs itself into ./.venv: `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdflow-installed

.PHONY: install test test-all demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# The CPU build of torch, pinned first so that nothing pulls a CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# The bundled model on the bundled sample photos: SR and DS, an HTML report in ./sdflow-demo.
demo: $(STAMP)
	$(PY) -m sdflow demo -o sdflow-demo

test-all: $(STAMP)
	$(PY) -m pytest -m ''

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info sdflow-demo
