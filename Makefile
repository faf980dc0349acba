# `make test` - everything CI runs: lint, types, the test suite on Django 5.2, on Django 4.2, and the
# Postgres tests on psycopg2.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test venv lint type pytest tox bench clean

test: lint type pytest tox

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check django_azure_mi tests benchmarks
	$(BIN)/ruff format --check django_azure_mi tests benchmarks

type: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

tox: $(STAMP)
	$(BIN)/tox run -e django42,psycopg2 -- $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/tokens.py
	$(BIN)/python benchmarks/postgres.py
	$(BIN)/python benchmarks/redis.py

clean:
	rm -rf $(VENV) .tox .pytest_cache .mypy_cache .ruff_cache *.egg-info
