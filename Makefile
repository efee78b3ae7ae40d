# Quick start:  make demo   |   make test
# Each target builds .venv from pyproject.toml first (once, and again when it changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test docs bench clean

$(STAMP): pyproject.toml
	bash .ci/packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/revstore demo

test: $(STAMP)
	bash .ci/services
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/mkdocs build --strict --site-dir /tmp/revstore-site-$$$$

bench: $(STAMP)
	bash .ci/services
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.all

clean:
	rm -rf $(VENV) dist build site
