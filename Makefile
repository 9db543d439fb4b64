# The two commands of the README: `make demo` and `make test`. Both install what they need first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test lint down status clean-state

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Python packages, Kafka jars (Maven), PostgreSQL 15 (Debian packages), the Compose schema for tests.
setup: $(VENV)/.installed
	$(BIN)/observer stack install
	bash scripts/fetch_compose_schema.sh

# For now the main job is: bring the stack up and prove it end to end (issue 8 turns this into the demo).
demo: setup
	$(BIN)/observer stack up
	$(BIN)/observer smoke
	$(BIN)/observer stack status

lint: $(VENV)/.installed
	$(BIN)/ruff check app tests $(wildcard bench)
	$(BIN)/ruff format --check app tests $(wildcard bench)
	$(BIN)/mypy app

test: setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

status: $(VENV)/.installed
	$(BIN)/observer stack status

down: $(VENV)/.installed
	$(BIN)/observer stack down
