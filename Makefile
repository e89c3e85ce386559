# The two commands of the README, and the checks the test command runs.
# Each target creates or updates its own virtualenv (.venv) with uv, from uv.lock.

PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test check lint typecheck pytest install install-dev node-deps bench clean

up: install  ## install and run the platform on embedded defaults (Ctrl-C stops it)
	$(BIN)/aiot up --demo

test: install-dev node-deps check pytest  ## install everything and run the whole test suite

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --python $(PYTHON) --extra embedded

install-dev:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --python $(PYTHON) --extra embedded --extra dev

node-deps:  ## Azurite (Azure Blob emulator) for the blob store tests
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: Azure blob tests will skip (or fail in CI)"; fi

check: lint typecheck

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
