# `make check` - the fast lane for every change: lint, types and the tests that start no server process
# (pytest -m "not integration and not slow"; the markers are set in tests/conftest.py and pyproject.toml).
# `make test` - everything CI runs: lint and types, then two chains side by side (`make -j2`; each one's
# output is printed when it ends), then the heavy tests alone:
#   newest    the whole suite, "once" tests included, on Django 6.1 / Python 3.13, then Django 6.1's own
#             test suites against our backends (tests/django_suites) (tox)
#   versions  Django 5.2 / Python 3.11 (this venv; the "once" tests left out), a smoke subset on Django 6.0 /
#             Python 3.12, the Postgres tests on psycopg2 and the MySQL tests on mysqlclient (tox), then
#             Django 5.2's own suites, then the
#             cache suites on Azure Managed Redis's Enterprise and Non-clustered policies (OSS: in newest)
# The suite mostly waits on servers and timers (the 5.2 run keeps 2 cores 27 % busy with 2 workers), so the
# chains and the extra workers fill each other's waits; the CPU-bound Django suites run last, mostly alone,
# so that the token-lifetime tests are not starved (three chains at once made a re-AUTH late).
#   heavy     the tests marked "heavy" (websocket chats, real Celery and RQ workers through token
#             rotations; Django 6.1 / Python 3.13), one at a time with the machine to themselves: they keep
#             the CPUs busy and judge timing, and beside the chains a chat fell tens of seconds behind
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest-xdist workers, each with its own stand-ins: the suite mostly waits on servers and timers
PYTEST_ARGS ?= -n 4 --dist worksteal
AZURITE := tools/azurite/node_modules/.bin/azurite-blob
# Python 3.12 and 3.13 for tox's envs come from pyenv (`pyenv versions`): put them on PATH
empty :=
space := $(empty) $(empty)
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null)
PYENV_BINS := $(wildcard $(PYENV_ROOT)/versions/3.12*/bin $(PYENV_ROOT)/versions/3.13*/bin)
tox newest versions heavy pytest django-suites: export PATH := $(subst $(space),:,$(strip $(PYENV_BINS) $(PATH)))

.PHONY: test lanes newest versions heavy postgis mysqlclient-lib sdist check fast demo venv lint type docs dist pytest tox django-suites bench clean

test: lint type docs postgis mysqlclient-lib
	$(MAKE) --no-print-directory -j2 --output-sync=target lanes
	$(MAKE) --no-print-directory heavy

lanes: newest versions

newest: $(STAMP) $(AZURITE) sdist
	$(RUN_61)
	$(RUN_SUITES_61)
	$(RUN_AMR_OSS)

versions: $(STAMP) $(AZURITE) sdist
	$(RUN_52)
	$(RUN_SMOKE)
	$(RUN_MYSQLCLIENT)
	$(RUN_SUITES_52)
	$(RUN_AMR_ENTERPRISE)
	$(RUN_AMR_NONE)
	$(RUN_AZCLI)

# One sdist for every tox env (tox --installpkg): concurrent tox runs never build in the checkout at once
SDIST_DIR := .tox/dist
sdist: $(STAMP)
	rm -rf $(SDIST_DIR)
	$(BIN)/python -m build -q --sdist --outdir $(SDIST_DIR) . > /dev/null
INSTALLPKG = --installpkg "$$(ls $(SDIST_DIR)/*.tar.gz)"

check: lint type fast

# MariaDB Connector/C's headers, which mysqlclient compiles against: Debian's package, installed when missing
# and this user may (root, apt); elsewhere the mysqlclient env is skipped, saying why
MARIADB_DEV := libmariadb-dev
mysqlclient-lib:
	@if ! pkg-config --exists libmariadb && ! pkg-config --exists mysqlclient; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(MARIADB_DEV) (Debian) for the mysqlclient tests"; \
	    apt-get install -y -qq --no-install-recommends $(MARIADB_DEV) >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends \
	        $(MARIADB_DEV) >/dev/null 2>&1; } || \
	      echo "$(MARIADB_DEV) could not be installed: the mysqlclient tests are skipped"; \
	  else \
	    echo "mysqlclient's build needs $(MARIADB_DEV) (apt-get install $(MARIADB_DEV)): its tests are skipped"; \
	  fi; \
	fi

# PostGIS for the Postgres stand-in (GeoDjango's tests): Debian's package for the newest server here (the
# one the stand-in runs), installed when missing and this user may (root, apt); elsewhere those tests are
# skipped, saying why
PG_MAJOR := $(shell ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)
POSTGIS_PACKAGE := postgresql-$(PG_MAJOR)-postgis-3
postgis:
	@if [ -n "$(PG_MAJOR)" ] && ! dpkg -s $(POSTGIS_PACKAGE) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(POSTGIS_PACKAGE) (Debian) for the PostGIS tests"; \
	    apt-get install -y -qq --no-install-recommends $(POSTGIS_PACKAGE) >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends \
	        $(POSTGIS_PACKAGE) >/dev/null 2>&1; } || \
	      echo "$(POSTGIS_PACKAGE) could not be installed: the PostGIS tests are skipped"; \
	  else \
	    echo "PostGIS is not installed (apt-get install $(POSTGIS_PACKAGE)): the PostGIS tests are skipped"; \
	  fi; \
	fi

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

# The documentation site (mkdocs.yml) into site/; --strict: a broken link, anchor or nav entry fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# What a release uploads: the sdist and the wheel in dist/, checked by twine, then the packaging tests on
# those very files (each extra alone in a clean venv, a new project's first hour from the wheel)
dist: $(STAMP) $(AZURITE)
	rm -rf dist
	$(BIN)/python -m build -q --outdir dist . > /dev/null
	$(BIN)/twine check --strict dist/*
	DJANGO_AZURE_MI_DIST=$(CURDIR)/dist $(BIN)/pytest -p no:cacheprovider -n 3 tests/test_packaging.py

lint: $(STAMP)
	$(BIN)/ruff check django_azure_mi tests benchmarks example_project
	$(BIN)/ruff format --check django_azure_mi tests benchmarks example_project

type: $(STAMP)
	$(BIN)/mypy

# Django 5.2 runs everything but the fleet, outage, herd and real-worker tests (marked "once"): those run on
# the newest Django only, in tox's py313-django61. Then the smoke subset on 6.0 and psycopg2.
RUN_52 = $(BIN)/pytest $(PYTEST_ARGS) -m "not once and not heavy"
RUN_SMOKE = $(BIN)/tox run --workdir .tox/smoke $(INSTALLPKG) -e py312-django60,psycopg2 -- $(PYTEST_ARGS)
# The MySQL ENGINE's tests on mysqlclient (Django's own driver; elsewhere they run on PyMySQL), which compiles
# against MariaDB Connector/C's headers (mysqlclient-lib); without them the env is skipped, saying why
RUN_MYSQLCLIENT = @if pkg-config --exists libmariadb || pkg-config --exists mysqlclient; then \
	  $(BIN)/tox run --workdir .tox/smoke $(INSTALLPKG) -e mysqlclient -- $(PYTEST_ARGS); \
	else echo "mysqlclient: skipped: no MariaDB Connector/C headers (apt-get install $(MARIADB_DEV))"; fi

pytest: $(STAMP) $(AZURITE) sdist postgis
	$(RUN_52)
	$(RUN_SMOKE)

# py313-django61 runs the once lane too: the fleets and outages mostly wait on token lifetimes
ONCE_ARGS ?= -n 4 --dist worksteal

RUN_61 = $(BIN)/tox run --workdir .tox/full $(INSTALLPKG) -e py313-django61 -- $(ONCE_ARGS) -m "not heavy"
# the heavy tests, one at a time (conftest.py's lock), with nothing else running
RUN_HEAVY = $(BIN)/tox run --workdir .tox/full $(INSTALLPKG) -e py313-django61 -- -n 0 -m heavy

tox: $(STAMP) $(AZURITE) sdist postgis
	$(RUN_61)
	$(RUN_HEAVY)

heavy: $(STAMP) $(AZURITE) sdist
	$(RUN_HEAVY)

# Django's own test suites (a subset) against our ENGINE (plain and pooled) and RedisCache on the stand-ins,
# compared with stock Django: Django 5.2 here, Django 6.1 through tox
RUN_SUITES_52 = $(BIN)/python tests/django_suites/run.py
# ... and on each Azure Managed Redis policy, on one Django version (5.2, this venv): the cache suites only,
# one process each (database 0 only). Non-clustered: Django's cache tests (django-redis's client is the one
# of Azure Cache for Redis, above). The OSS run goes in the other chain, to even the two out.
RUN_AMR_OSS = $(BIN)/python tests/django_suites/run.py --redis-policy oss
RUN_AMR_ENTERPRISE = $(BIN)/python tests/django_suites/run.py --redis-policy enterprise
RUN_AMR_NONE = $(BIN)/python tests/django_suites/run.py --redis-policy none --no-django-redis
# every az command azure_setup generates, parsed by azure-cli's own parser (azure-cli in its own tox env)
RUN_AZCLI = $(BIN)/tox run --workdir .tox/azcli $(INSTALLPKG) -e azcli
RUN_SUITES_61 = $(BIN)/tox run --workdir .tox/suites $(INSTALLPKG) -e suites-django61

django-suites: $(STAMP) sdist postgis
	$(RUN_SUITES_52)
	$(RUN_SUITES_61)
	$(RUN_AMR_OSS)
	$(RUN_AMR_ENTERPRISE)
	$(RUN_AMR_NONE)

bench: $(STAMP)
	$(BIN)/python benchmarks/tokens.py
	$(BIN)/python benchmarks/postgres.py
	$(BIN)/python benchmarks/redis.py
	$(BIN)/python benchmarks/storage.py
	$(BIN)/python benchmarks/fleet.py
	$(BIN)/python benchmarks/celery.py
	$(BIN)/python benchmarks/channels.py

clean:
	rm -rf $(VENV) site dist .tox .pytest_cache .mypy_cache .ruff_cache *.egg-info tools/azurite/node_modules

