# Two set-up commands for a fresh clone: `make demo` (the runtime only) and `make test` (adds the test
# and ray extras).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-extras: $(VENV)/.runtime
	$(BIN)/pip install --quiet -e ".[test,ray]"
	touch $@

install: $(VENV)/.runtime

demo: install
	$(BIN)/allscan predict sample_images --out results.xlsx

test: $(VENV)/.test-extras
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results.xlsx results.xlsx.allscan.sqlite*
