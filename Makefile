# The two commands of the README: `make demo` and `make test`. Both install what they need first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup test-tools demo soak bench test lint down status clean-state

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Python packages, Kafka jars (Maven), PostgreSQL 15 (Debian packages), the Compose schema for tests.
setup: $(VENV)/.installed
	$(BIN)/observer stack install
	bash scripts/fetch_compose_schema.sh

# The main job on the simulator: stack, simulator, bridge, worker and sink for a simulated KRX morning in
# about a minute, then the audit of the day. DEMO_ARGS=--json for the summary as JSON.
DEMO_ARGS ?=
demo: setup
	$(BIN)/observer demo $(DEMO_ARGS)

# A whole simulated session (09:00-15:30 KST, ~11 min) under faults, then its checks. SOAK_ARGS=--short: ~4 min.
SOAK_ARGS ?=
soak: setup
	$(BIN)/observer soak $(SOAK_ARGS)

# Every benchmark under bench/, then one table of each result beside its same-run baseline (~15 min).
BENCH_ARGS ?=
bench: setup
	$(PY) bench/run_all.py $(BENCH_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check app tests $(wildcard bench)
	$(BIN)/ruff format --check app tests $(wildcard bench)
	$(BIN)/mypy app

# kustomize, the Prometheus Operator's CRDs and Strimzi's schemas, for tests/test_k8s.py only (Go and npm).
test-tools:
	bash scripts/install_k8s_tools.sh

test: setup test-tools lint
	$(BIN)/pytest $(PYTEST_ARGS)

status: $(VENV)/.installed
	$(BIN)/observer stack status

down: $(VENV)/.installed
	$(BIN)/observer stack down
