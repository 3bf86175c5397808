# The newcomer's path: `make demo` and `make test` each set up .venv from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest demo bench docs docs-tables clean test-hosts

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# Hosts that cannot share .venv with FastApps (mcp 2.x, fastmcp 4.x) are tested in their own venv,
# kept inside .venv so it is ignored by git and linters and removed by `make clean`.
HOSTS := $(VENV)/hosts
test-hosts: $(STAMP)
	test -x $(HOSTS)/bin/python || $(PYTHON) -m venv $(HOSTS)
	test $(HOSTS)/.installed -nt pyproject.toml || { $(HOSTS)/bin/python -m pip install --quiet \
	  'mcp>=2,<3' 'fastmcp>=4,<5' -e '.[postgres,sqlite]' 'uvicorn>=0.30' pytest pytest-asyncio hypothesis \
	  && touch $(HOSTS)/.installed; }
	$(BIN)/mypy --python-executable $(HOSTS)/bin/python tests/hosts/*.py
	$(HOSTS)/bin/python -m pytest -p no:cacheprovider tests/hosts

test: lint typecheck pytest test-hosts docs

demo: $(STAMP)
	$(BIN)/fastapps-auth demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# The option tables written into docs/ pages from the plugins' options models (a test fails when one is stale).
docs-tables: $(STAMP)
	$(BIN)/python -m fastapps_auth.cli.options_tables --write docs

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
