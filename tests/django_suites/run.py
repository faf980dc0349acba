"""Django's own test suite against our backends, on the stand-ins, compared with stock Django.

    python tests/django_suites/run.py [--parallel 2] [--ttl 20] [--apps backends transactions ...]

Downloads the sdist of the installed Django (pip, cached in ``$DJANGO_SUITES_CACHE`` or
``~/.cache/django-azure-mi``), unpacks its ``tests/`` and runs ``runtests.py`` on a subset of apps, three
times on the same token-checking Postgres and enforcing Redis, with the identity endpoint's tokens living
``--ttl`` seconds (so they rotate during each run):

* ``stock``: Django's own ENGINE and RedisCache, signing in with a password;
* ``ours``: ``django_azure_mi.backends.postgresql`` and ``django_azure_mi.cache.RedisCache`` with tokens;
* ``ours-pool``: our ENGINE with Django's psycopg pool (``OPTIONS["pool"]``);

then GeoDjango's database tests on PostGIS (``GIS_APPS``), stock's PostGIS ENGINE with a password and
``django_azure_mi.backends.postgis`` with tokens (``--no-gis`` leaves them out; without PostGIS on the
machine they are skipped, saying why); then the apps but ``postgres_tests`` on the MySQL stand-in (MariaDB
behind the token-checking gateway), Django's MySQL ENGINE with a password and
``django_azure_mi.backends.mysql`` with tokens, both on PyMySQL (``--no-mysql`` leaves them out; without
MariaDB on the machine they are skipped, saying why).

Then django-redis's own suite (the installed version's sdist, :mod:`redis_suite`) twice on the same Redis:
stock with an ACL password, and with our connection factory (``--no-django-redis`` leaves it out).

Fails (exit 1) when a test fails in one of ours but not in stock, unless ALLOWED lists it with the reason,
or when a run did not complete. Prints the counts and the differences.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import django

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # this checkout's django_azure_mi, when run as a script

from django_azure_mi.testing.base import Missing  # noqa: E402
from django_azure_mi.testing.imds import IMDSEmulator  # noqa: E402
from django_azure_mi.testing.mysql import MySQLStandIn  # noqa: E402
from django_azure_mi.testing.postgres import PostgresStandIn  # noqa: E402
from django_azure_mi.testing.redis import POLICIES, RedisStandIn, redis_stand_in  # noqa: E402

sys.path.insert(0, str(HERE))
import channels_suite  # noqa: E402
import redis_suite  # noqa: E402
from sdist import sdist_tests  # noqa: E402

# Django's apps the run covers: the database backend end to end, and the Redis cache backend.
APPS = [
    "backends",
    "basic",
    "migrations",
    "expressions",
    "aggregation",
    "transactions",
    "transaction_hooks",
    "select_for_update",
    "get_or_create",
    "queries",
    "introspection",
    "schema",
    "dbshell",
    "db_functions",
    "model_fields",
    "postgres_tests",
]
CACHE_LABELS = ["cache.tests.RedisCacheTests", "azure_redis_cache"]
# GeoDjango's tests that talk to the database, on PostGIS (stock's engine and ours): runtests.py installs
# django.contrib.gis when the connection is spatial. inspectapp is left out: GDAL's own PostgreSQL driver
# signs in with the settings' PASSWORD, which an alias signing in with tokens has none of.
GIS_APPS = [
    "gis_tests.geoapp",
    "gis_tests.geogapp",
    "gis_tests.distapp",
    "gis_tests.relatedapp",
    "gis_tests.geo3d",
    "gis_tests.gis_migrations",
    "gis_tests.rasterapp",
]

# Tests that fail with our backends and pass on stock, on purpose. Test id -> reason.
ALLOWED = {
    "backends.tests.BackendTestCase.test_unicode_password": (
        "puts a PASSWORD into the connection's settings: our ENGINE refuses a PASSWORD while the identity "
        "signs in (E011, no secrets in settings). It passes while the open connection is reused and the "
        "alias was validated before"
    ),
    "cache.tests.RedisCacheTests.test_cache_client_class": (
        "asserts that the backend's client class is exactly Django's RedisCacheClient: ours is a subclass "
        "(its isinstance check passes) that takes a cluster client on Azure Managed Redis's OSS policy and "
        "sets many keys without MULTI, which a sharded Redis refuses across slots"
    ),
    "cache.tests.RedisCacheTests.test_get_client": (
        "asserts that the client is a redis.Redis: on Azure Managed Redis's OSS policy ours hands out a "
        "redis.RedisCluster, the only client that works there (stock's passes without sending a command; "
        "its every command gets MOVED)"
    ),
}
# The same on the MySQL ENGINE (it refuses a PASSWORD beside the identity as the Postgres one does)
MYSQL_ALLOWED = {test: reason for test, reason in ALLOWED.items() if test.startswith("backends.tests.")}
# postgres_tests' migrations create these (only a superuser may): made in template1 for every test database
EXTENSIONS = ["bloom", "btree_gin", "btree_gist", "citext", "hstore", "pg_trgm", "unaccent"]
ROLE = "app-identity"
STOCK_ROLE = "stock"
FAILURE = re.compile(r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \(([\w.]+)\)", re.M)
RAN = re.compile(r"^Ran (\d+) tests? in", re.M)


@dataclasses.dataclass
class Run:
    database: dict[str, Any]  # for both aliases Django's suite uses (default, other)
    caches: dict[str, Any]
    labels: list[str]  # test labels besides the apps
    gis: bool = False  # GeoDjango's tests on PostGIS instead of the apps
    mysql: bool = False  # on the MySQL stand-in: the apps but the Postgres-only ones

    def settings(self, test_prefix: str) -> dict[str, Any]:
        """DATABASES and CACHES for suite_settings; each run its own test databases (a failed run may leave
        them behind)."""
        databases = {
            alias: {**self.database, "TEST": {"NAME": f"{test_prefix}_{alias}"}}
            for alias in ("default", "other")
        }
        caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, **self.caches}
        return {"DATABASES": databases, "CACHES": caches}


def django_tests(cache: Path, workdir: Path) -> Path:
    """The installed Django's own tests/ directory, from its sdist, with our RedisCacheTests beside them."""
    version = django.__version__
    tests = sdist_tests(cache, workdir, f"Django=={version}", f"[dD]jango-{version}.tar.gz")
    shutil.copytree(HERE / "azure_redis_cache", tests / "azure_redis_cache")
    return tests


def run_suite(
    tests: Path, name: str, config: dict[str, Any], labels: list[str], parallel: int
) -> tuple[int, set[str], str]:
    """runtests.py with ``config``: (tests run or -1, the failed test ids, the output)."""
    env = {
        **os.environ,
        "DJANGO_SUITE_CONFIG": json.dumps(config),
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent.parent)]),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "runtests.py",
            "--settings=suite_settings",
            f"--parallel={parallel}",
            "--noinput",
            *labels,
        ],
        cwd=tests,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = done.stdout + done.stderr
    ran = RAN.search(output)
    failures = {
        f"{where}.{test}" if not where.endswith(f".{test}") else where
        for _, test, where in FAILURE.findall(output)
    }
    failures = {
        f.replace("azure_redis_cache.tests.AzureRedisCacheTests", "cache.tests.RedisCacheTests")
        for f in failures
    }
    print(
        f"{name:<10} ran {ran[1] if ran else '?':>5} tests in {time.monotonic() - started:5.0f} s, "
        f"{len(failures)} failures/errors",
        flush=True,
    )
    return (int(ran[1]) if ran else -1), failures, output


def configurations(pg: PostgresStandIn, redis: RedisStandIn, imds: IMDSEmulator) -> dict[str, Run]:
    """The three runs, on the same servers: stock (passwords), ours (tokens), ours with Django's pool."""
    pg.add_role(ROLE)
    pg.add_role(STOCK_ROLE)
    stock_password = os.urandom(12).hex()
    pg.set_password(STOCK_ROLE, stock_password)  # Azure's built-in authentication, at the same gateway
    pg.attach(imds)
    pg.create_extensions(*EXTENSIONS)  # as an Azure admin allow-lists and creates them; the role cannot
    redis.add_identity(imds.object_id())
    redis.attach(imds)
    stock_db = {
        **pg.database_settings(STOCK_ROLE, PASSWORD=stock_password),
        "ENGINE": "django.db.backends.postgresql",
    }
    ours_db = pg.database_settings(ROLE)
    pooled_db = pg.database_settings(ROLE, OPTIONS={"pool": {"min_size": 1, "max_size": 4}})
    location = redis.url.removesuffix("/0")  # test_redis_pool_options sets the db in OPTIONS
    stock_cache = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": location.replace("://", f"://admin:{redis.admin_password}@"),
        "OPTIONS": {"ssl_ca_certs": redis.ca_file},
    }
    ours_cache = {**redis.cache_settings("builtin"), "LOCATION": location}
    runs = {
        "stock": Run(stock_db, {"redis": stock_cache}, CACHE_LABELS),
        "ours": Run(ours_db, {"redis": ours_cache}, CACHE_LABELS),
        "ours-pool": Run(pooled_db, {}, []),
        "stock-gis": Run(
            {**stock_db, "ENGINE": "django.contrib.gis.db.backends.postgis"}, {}, GIS_APPS, True
        ),
        "ours-gis": Run({**ours_db, "ENGINE": "django_azure_mi.backends.postgis"}, {}, GIS_APPS, True),
    }
    if redis.policy != "single":  # Azure Managed Redis: the cache's tests only
        runs = {name: run for name, run in runs.items() if name in ("stock", "ours")}
    return runs


def mysql_configurations(mysql: MySQLStandIn, imds: IMDSEmulator) -> dict[str, Run]:
    """Stock's MySQL ENGINE with a password and ours with tokens, at the same gateway (as on Azure, where
    a server takes both); each user may create the test databases, as the suite needs."""
    mysql.add_user(ROLE)  # the system-assigned identity's Entra user
    stock_password = os.urandom(12).hex()
    mysql.set_password(STOCK_ROLE, stock_password)
    mysql.attach(imds)
    stock_db = {
        **mysql.database_settings(STOCK_ROLE, PASSWORD=stock_password),
        "ENGINE": "django.db.backends.mysql",
    }
    return {
        "stock-mysql": Run(stock_db, {}, [], mysql=True),
        "ours-mysql": Run(mysql.database_settings(ROLE), {}, [], mysql=True),
    }


def postgis(pg: PostgresStandIn) -> str | None:
    """PostGIS in every test database made from now on (after the other runs, whose introspection tests
    would see its tables), as Azure's allow-list lets an admin create it; why not, if it can't be."""
    from django_azure_mi.testing.pgaadauth import ExtensionMissing

    try:
        from django.contrib.gis.geos import geos_version

        geos_version()
        pg.create_extensions("postgis", "postgis_raster")  # rasterapp's migration wants the raster one
    except ExtensionMissing as exc:
        return str(exc)
    except Exception as exc:  # GeoDjango's libraries (GEOS, GDAL) are not installed
        return f"GeoDjango's libraries are missing: {exc}"
    return None


def explain(output: str, test: str) -> str:
    """The lines of ``output`` that say why ``test`` failed (at most 20)."""
    short = test.rsplit(".", 1)[-1].split("::")[-1]
    lines = [
        line for line in output.splitlines() if short in line or line.startswith(("FAILED", "AssertionError"))
    ]
    return "\n    ".join(lines[:20])


def verdict(
    results: dict[str, tuple[int, set[str], str]],
    stock: str,
    ours: list[str],
    flaky: dict[str, str] | None = None,
    allowed: dict[str, str] | None = None,
) -> int:
    """0 when ``ours`` fail nothing that ``stock`` passes (but ALLOWED, and ``flaky``: tests that failed once
    and passed three reruns of their own, printed with the first failure) and every run completed."""
    stock_ran, stock_failures, _ = results[stock]
    status = 0
    for name in ours:
        ran, failures, output = results[name]
        if ran <= 0:
            print(f"{name}: the run did not complete:\n{output[-3000:]}")
            status = 1
            continue
        extra = failures - stock_failures
        allowed = ALLOWED if allowed is None else allowed  # Django's suite's; the others allow nothing
        for test, reason in allowed.items():
            print(f"{name}: allowed: {test} ({'fails' if test in extra else 'passes'} here): {reason}")
        for test, failure in (flaky or {}).items():
            print(f"{name}: FLAKY, failed once and passed 3 reruns on its own: {test}\n    {failure}")
        unexpected = sorted(extra - set(allowed) - set(flaky or {}))
        for test in unexpected:
            print(f"{name}: FAILS, passes on stock: {test}\n    {explain(output, test)}")
        status |= bool(unexpected)
    if stock_ran <= 0:
        print(f"{stock}: the run did not complete")
        status = 1
    if stock_failures:
        shown = sorted(stock_failures)[:20]
        more = f" and {len(stock_failures) - len(shown)} more" if len(stock_failures) > len(shown) else ""
        print(f"({stock}'s own {len(stock_failures)} failures here, ignored: {', '.join(shown)}{more})")
    return status


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--apps", nargs="*", default=APPS)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--ttl", type=float, default=20, help="lifetime of the identity endpoint's tokens")
    parser.add_argument("--keep", action="store_true", help="keep the unpacked tests and the outputs")
    parser.add_argument(
        "--django-redis", action=argparse.BooleanOptionalAction, default=True, help="django-redis's suite too"
    )
    parser.add_argument(
        "--channels-redis",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_redis's suite too (on Azure Cache for Redis, the single-node stand-in)",
    )
    parser.add_argument(
        "--gis",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GeoDjango's tests on PostGIS, stock and ours (skipped, saying why, without PostGIS here)",
    )
    parser.add_argument(
        "--mysql",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the apps on the MySQL stand-in, stock and ours (skipped, saying why, without MariaDB here)",
    )
    parser.add_argument(
        "--redis-policy",
        choices=POLICIES,
        default="single",
        help="the Redis: Azure Cache for Redis ('single', with the database apps too), or Azure Managed "
        "Redis with the Non-clustered ('none'), OSS or Enterprise clustering policy (the cache suites only)",
    )
    args = parser.parse_args()
    if args.redis_policy != "single":
        # The cache's tests only; one process: Django's parallel runner can't pickle the CROSSSLOT errors
        # stock gets (redis-py's exception holds a module), and dies instead of reporting them.
        args.apps, args.parallel, args.mysql = [], 1, False
    cache = Path(os.environ.get("DJANGO_SUITES_CACHE", Path.home() / ".cache" / "django-azure-mi"))
    workdir = Path(tempfile.mkdtemp(prefix="django-suites-"))
    print(
        f"Django {django.__version__}: {', '.join(args.apps) or 'no database apps'} + Redis cache "
        f"({args.redis_policy}); tokens live {args.ttl:g} s"
    )
    results = {}
    flaky: dict[str, str] = {}
    try:
        tests = django_tests(cache, workdir)
        with (
            IMDSEmulator(ttl=args.ttl) as imds,
            imds.patched_environ(),
            PostgresStandIn() as pg,
            redis_stand_in(args.redis_policy) as redis,
            contextlib.ExitStack() as stack,
        ):
            no_gis: str | None = None
            runs = configurations(pg, redis, imds)
            if args.mysql:
                try:
                    runs.update(mysql_configurations(stack.enter_context(MySQLStandIn()), imds))
                except Missing as exc:
                    print(f"stock-mysql, ours-mysql: skipped: {exc}")
            for name, run in runs.items():
                if run.gis and (not args.gis or (no_gis := no_gis or postgis(pg))):
                    print(f"{name}: skipped: {no_gis or '--no-gis'}")
                    continue
                config = run.settings(f"test_{name.replace('-', '_')}")
                apps = [app for app in args.apps if app != "postgres_tests"] if run.mysql else args.apps
                labels = run.labels if run.gis else [*apps, *run.labels]
                results[name] = run_suite(tests, name, config, labels, args.parallel)
                if args.keep:
                    (workdir / f"{name}.log").write_text(results[name][2])
            if args.django_redis:
                redis_tests = redis_suite.unpack(cache, workdir)
                url = redis.url.rsplit("/", 1)[0]
                targets = {
                    "django-redis stock": {"url": url.replace("://", f"://admin:{redis.admin_password}@")},
                    "django-redis ours": {"url": url, "ours": True},
                }
                for name, target in targets.items():
                    sharded = redis.policy != "single"  # ours: our client class, the endpoint asked once
                    targets[name] = target = {
                        "ours": False,
                        "ca_file": redis.ca_file,
                        "amr": sharded,
                        **target,
                    }
                    results[name] = redis_suite.run(redis_tests, name, target)
                    if args.keep:
                        (workdir / f"{name.replace(' ', '-')}.log").write_text(results[name][2])
                # A test that fails with ours alone runs three more times on its own, so that a one-off (xdist
                # timing, a loaded CI machine) is told apart from a difference; verdict() reports both.
                ran, failures, output = results["django-redis ours"]
                unexpected = sorted(failures - results["django-redis stock"][1])
                if unexpected and ran > 0:
                    again = redis_suite.rerun(redis_tests, targets["django-redis ours"], unexpected)
                    flaky = {t: redis_suite.explain(output, t) for t in unexpected if t not in again}
            if args.channels_redis and redis.policy == "single":
                channels_tests = channels_suite.unpack(cache, workdir)
                url = redis.url.rsplit("/", 1)[0]
                for name, target in {
                    "channels stock": {"url": url.replace("://", f"://admin:{redis.admin_password}@")},
                    "channels ours": {"url": url, "ours": True},
                }.items():
                    target = {"ours": False, "ca_file": redis.ca_file, **target}
                    results[name] = channels_suite.run(channels_tests, name, target)
                    if args.keep:
                        (workdir / f"{name.replace(' ', '-')}.log").write_text(results[name][2])
            print(
                f"tokens issued by the identity endpoint: {len(imds.issued)}; "
                f"Redis connections closed at expiry: {redis.closed_connections}"
            )
    finally:
        if args.keep:
            print(f"kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    status = verdict(results, "stock", [name for name in ("ours", "ours-pool") if name in results])
    if "ours-gis" in results:
        status |= verdict(results, "stock-gis", ["ours-gis"])
    if "ours-mysql" in results:
        status |= verdict(results, "stock-mysql", ["ours-mysql"], allowed=MYSQL_ALLOWED)
    if args.django_redis:
        status |= verdict(results, "django-redis stock", ["django-redis ours"], flaky, allowed={})
    if "channels ours" in results:
        status |= verdict(results, "channels stock", ["channels ours"], allowed={})
    print("django suites: " + ("ok" if status == 0 else "FAILED"))
    return status


if __name__ == "__main__":
    sys.exit(main())
