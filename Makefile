# `make test` - everything CI runs: lint, types, the test suite on Django 5.2, on Django 4.2, and the
# Postgres tests on psycopg2.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# two pytest workers (pytest-xdist), each with its own stand-ins: the suite mostly waits on servers and timers
PYTEST_ARGS ?= -n 2
AZURITE := tools/azurite/node_modules/.bin/azurite-blob

.PHONY: test demo venv lint type pytest tox bench clean

test: lint type pytest tox

# `make demo` - the example site on local stand-ins; `make demo ARGS=--once` stops after the walkthrough.
demo: $(STAMP) $(AZURITE)
	$(BIN)/python example_project/demo.py $(ARGS)

venv: $(STAMP) $(AZURITE)

# Azurite (the storage stand-in), pinned by tools/azurite/package-lock.json
$(AZURITE): tools/azurite/package-lock.json
	cd tools/azurite && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check django_azure_mi tests benchmarks example_project
	$(BIN)/ruff format --check django_azure_mi tests benchmarks example_project

type: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(AZURITE)
	$(BIN)/pytest $(PYTEST_ARGS)

tox: $(STAMP) $(AZURITE)
	$(BIN)/tox run -e django42,psycopg2 -- $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/tokens.py
	$(BIN)/python benchmarks/postgres.py
	$(BIN)/python benchmarks/redis.py
	$(BIN)/python benchmarks/storage.py

clean:
	rm -rf $(VENV) .tox .pytest_cache .mypy_cache .ruff_cache *.egg-info tools/azurite/node_modules

