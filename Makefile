# Two set-up commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/allscan: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,ray]"
	touch $(BIN)/allscan

install: $(BIN)/allscan

demo: install
	$(BIN)/allscan predict sample_images --out results.xlsx

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results.xlsx results.xlsx.allscan.sqlite*
