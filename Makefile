# Two set-up commands: `make serve` (install and run) and `make test` (install test tools and run every test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test install install-test lint bench chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

serve: install
	$(BIN)/labelloop serve

lint: install-test
	$(BIN)/ruff check src tests bench

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`); installed once.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@test -x /usr/bin/chromium || ($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

test: install-test lint chromium
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/bench_embedding.py
