# The two commands of the README, and the checks the test command runs.
# Each target creates or updates its own virtualenv (.venv) with uv, from uv.lock.

PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test check lint typecheck pytest install install-dev bytecode kafka node-deps bench clean
PACKAGES := platform_sdk platform_core bootstrapper service_agent node_manager heartbeat logger web aiot \
	benchmarks ai_manager deployer device_manager simulators app_manager scheduler

up: install  ## install and run the platform on embedded defaults (Ctrl-C stops it)
	$(BIN)/aiot up --demo

test: install-dev node-deps check pytest  ## install everything and run the whole test suite

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --python $(PYTHON) --extra embedded
	$(MAKE) --no-print-directory bytecode kafka

install-dev:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --python $(PYTHON) --extra embedded --extra dev
	$(MAKE) --no-print-directory bytecode kafka

# Every service start imports the platform; where PYTHONDONTWRITEBYTECODE is set imports cache
# nothing, so compile once here: a service then starts in about half the time.
bytecode:
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib $(PACKAGES) >/dev/null

# Apache Kafka's jars from Maven Central, once per machine (needs Java 17+ and Maven; without them
# `aiot up` falls back to the bundled Tansu broker and this says so).
kafka:
	$(BIN)/aiot broker fetch

node-deps:  ## Azurite (Azure Blob emulator) for the blob store tests
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: Azure blob tests will skip (or fail in CI)"; fi

check: lint typecheck

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

# Two workers (pytest-xdist): most of an end-to-end test is waiting for a platform. Each test module
# runs on one worker, the models and apps end-to-end modules together (tests/conftest.py);
# PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= 2

# --durations: the slowest tests in every run's output, for the suite's 15-minute budget.
pytest:
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30 $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
