# `make test` - everything CI runs: lint, types, the test suite on Django 5.2 and on Django 4.2.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test venv lint type pytest django42 bench clean

test: lint type pytest django42

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

django42: $(STAMP)
	$(BIN)/tox run -e django42 -- $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/tokens.py

clean:
	rm -rf $(VENV) .tox .pytest_cache .mypy_cache .ruff_cache *.egg-info
