# Quick start:  make demo   |   make test
# Each target builds .venv from pyproject.toml first (once, and again when it changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test docs bench soak clean

$(STAMP): pyproject.toml
	bash .ci/packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/revstore demo

# Every nox session in noxfile.py: the whole suite (3.11, Redis), the worker tests
# on RabbitMQ and at both ends of the supported range, the docs build (two lanes
# at once, see .ci/test).  Narrow it with e.g. NOX_ARGS="-s main" PYTEST_ARGS="tests/test_cli.py".
test: $(STAMP)
	bash .ci/services
	NOX_ARGS="$(NOX_ARGS)" bash .ci/test $(BIN)/nox $(PYTEST_ARGS)

bench: $(STAMP)
	bash .ci/services
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.all

# The randomized checker (tests/test_checker.py, issue 21) for SECONDS of random
# operations and faults, with a new seed each run (printed; CHECKER_SEED=N repeats
# one).  FAULTS: a comma list of checker.FAULT_KINDS or "all" (default: the kinds
# current code passes).  A failing run's history goes to .cache/checker/.
SECONDS ?= 1800
FAULTS ?=
soak: $(STAMP)
	bash .ci/services
	TEST_BROKER=$${TEST_BROKER:-redis://127.0.0.1:6379/5} CHECKER_SECONDS=$(SECONDS) CHECKER_FAULTS=$(FAULTS) \
		$(BIN)/python -m pytest tests/test_checker.py -k keep_the_promise

clean:
	rm -rf $(VENV) .nox .cache dist build site
