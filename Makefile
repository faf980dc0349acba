# `make check` - the fast lane for every change: lint, types and the tests that start no server process
# (pytest -m "not integration and not slow"; the markers are set in tests/conftest.py and pyproject.toml).
# `make test` - everything CI runs: lint, types, the test suite on Django 5.2 / Python 3.11 (this venv; the
# "once" tests left out), in full on Django 6.1 / Python 3.13 and a smoke subset on Django 6.0 / Python 3.12
# (tox), the Postgres tests on psycopg2, and Django's own test suites against our backends (tests/django_suites).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# two pytest workers (pytest-xdist), each with its own stand-ins: the suite mostly waits on servers and timers
PYTEST_ARGS ?= -n 2 --dist worksteal
AZURITE := tools/azurite/node_modules/.bin/azurite-blob
# Python 3.12 and 3.13 for tox's envs come from pyenv (`pyenv versions`): put them on PATH
empty :=
space := $(empty) $(empty)
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null)
PYENV_BINS := $(wildcard $(PYENV_ROOT)/versions/3.12*/bin $(PYENV_ROOT)/versions/3.13*/bin)
tox django-suites: export PATH := $(subst $(space),:,$(strip $(PYENV_BINS) $(PATH)))

.PHONY: test check fast demo venv lint type pytest tox django-suites bench clean

test: lint type pytest tox django-suites

check: lint type fast

fast: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS) -m "not integration and not slow"

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

# Django 5.2 runs everything but the fleet, outage, herd and real-worker tests (marked "once"): those run on
# the newest Django only, in tox's py313-django61
pytest: $(STAMP) $(AZURITE)
	$(BIN)/pytest $(PYTEST_ARGS) -m "not once"

# py313-django61 runs the once lane too: those tests mostly wait (token lifetimes, outages), so a third
# worker on this 2-core machine fills their waits (measured: 688 s -> 532 s of test time)
ONCE_ARGS ?= -n 3 --dist worksteal

tox: $(STAMP) $(AZURITE)
	$(BIN)/tox run -e py313-django61 -- $(ONCE_ARGS)
	$(BIN)/tox run -e py312-django60,psycopg2 -- $(PYTEST_ARGS)

# Django's own test suites (a subset) against our ENGINE (plain and pooled) and RedisCache on the stand-ins,
# compared with stock Django: Django 5.2 here, Django 6.1 through tox
django-suites: $(STAMP)
	$(BIN)/python tests/django_suites/run.py
	$(BIN)/tox run -e suites-django61

bench: $(STAMP)
	$(BIN)/python benchmarks/tokens.py
	$(BIN)/python benchmarks/postgres.py
	$(BIN)/python benchmarks/redis.py
	$(BIN)/python benchmarks/storage.py
	$(BIN)/python benchmarks/fleet.py
	$(BIN)/python benchmarks/celery.py

clean:
	rm -rf $(VENV) .tox .pytest_cache .mypy_cache .ruff_cache *.egg-info tools/azurite/node_modules

