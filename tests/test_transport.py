"""The token never travels in clear or to an unverified peer: each path tried against a rogue server on a
test host of our own (a network namespace: a non-loopback address), which records whatever arrives."""

from __future__ import annotations

import os
import subprocess

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, connections

from django_azure_mi import get_token_provider
from django_azure_mi.backends.postgresql.client import DatabaseClient

from .conftest import reset_connections

PG_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
ENGINE = "django_azure_mi.backends.postgresql"


def settings_for(rogue, **entry):
    options = entry.pop("OPTIONS", {})
    return {
        "ENGINE": ENGINE,
        "NAME": "app",
        "USER": "app-identity",
        "PORT": rogue.port,
        "OPTIONS": options,
        **entry,
    }


# How a careless configuration points the token at the rogue: each must end in verify-full (the rogue's
# self-signed certificate is refused before the password is sent) or in an error naming the setting.
ROUTES = {
    "HOST": lambda r: ({"HOST": r.address}, {}),
    "OPTIONS host, empty HOST": lambda r: ({"HOST": "", "OPTIONS": {"host": r.address}}, {}),
    "OPTIONS hostaddr, HOST localhost":
        lambda r: ({"HOST": "localhost", "OPTIONS": {"hostaddr": r.address}}, {}),
    "multi-host HOST": lambda r: ({"HOST": f"localhost,{r.address}"}, {}),
    "PGHOST": lambda r: ({"HOST": ""}, {"PGHOST": r.address}),
    "PGHOSTADDR, HOST localhost": lambda r: ({"HOST": "localhost"}, {"PGHOSTADDR": r.address}),
    "sslmode=require": lambda r: ({"HOST": r.address, "OPTIONS": {"sslmode": "require"}}, {}),
    "PGSSLMODE=require": lambda r: ({"HOST": r.address}, {"PGSSLMODE": "require"}),
    "sslmode=prefer, OPTIONS host":
        lambda r: ({"HOST": "", "OPTIONS": {"host": r.address, "sslmode": "prefer"}}, {}),
}  # fmt: skip


@pytest.fixture
def database(settings, django_db_blocker, monkeypatch):
    def configure(entry, environ):
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        reset_connections()
        settings.DATABASES = {"default": entry}
        reset_connections()
        return connections["default"]

    with django_db_blocker.unblock():
        yield configure
    reset_connections()


@pytest.mark.parametrize("route", list(ROUTES))
def test_postgres_token_never_reaches_a_rogue(route, rogue_postgres, database, azure_imds):
    entry, environ = ROUTES[route](rogue_postgres)
    connection = database(settings_for(rogue_postgres, **entry), environ)
    token = get_token_provider(PG_SCOPE).get_token(PG_SCOPE).token
    with pytest.raises((OperationalError, ImproperlyConfigured)) as info:
        connection.ensure_connection()
    received = rogue_postgres.received()
    assert token.encode() not in received and token.split(".")[2].encode() not in received
    if isinstance(info.value, ImproperlyConfigured):  # refused before connecting: names the setting and fix
        assert "sslmode" in str(info.value) and ("verify-full" in str(info.value))
    else:  # verify-full refused the rogue's certificate
        assert received.count(b"\x04\xd2\x16\x2f") <= 1  # at most the SSLRequest
        assert "certificate" in str(info.value).lower() or "ssl" in str(info.value).lower()


def test_the_opt_out_is_explicit_and_reported(rogue_postgres, database, azure_imds):
    """``verify_tls=False`` lets ``sslmode=require`` through (the documented risk): the rogue gets the token,
    and ``manage.py check`` says so."""
    from django_azure_mi.checks import check_settings

    entry = {
        "HOST": rogue_postgres.address,
        "OPTIONS": {"sslmode": "require", "managed_identity": {"verify_tls": False}},
    }
    connection = database(settings_for(rogue_postgres, **entry), {})
    assert [m.id for m in check_settings()] == ["django_azure_mi.W011"]
    with pytest.raises(OperationalError):
        connection.ensure_connection()
    token = get_token_provider(PG_SCOPE).get_token(PG_SCOPE).token
    assert token.encode() in rogue_postgres.received()  # exactly what the warning is about


def test_dbshell_follows_the_same_rule(rogue_postgres, database, azure_imds):
    connection = database(settings_for(rogue_postgres, HOST="", OPTIONS={"host": rogue_postgres.address}), {})
    args, env = DatabaseClient.settings_to_cmd_args_env(connection.settings_dict, ["-c", "select 1"])
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", "system")
    psql = subprocess.run(args, env={**os.environ, **env}, capture_output=True, timeout=20)
    assert psql.returncode != 0
    assert env["PGPASSWORD"].encode() not in rogue_postgres.received()


@pytest.mark.parametrize(
    ("entry", "environ"),
    [({"HOST": "", "OPTIONS": {"service": "app"}}, {}), ({"HOST": ""}, {"PGSERVICE": "app"})],
)
def test_an_unknown_target_counts_as_remote(entry, environ, database, azure_imds):
    connection = database({"ENGINE": ENGINE, "NAME": "app", "USER": "app-identity", **entry}, environ)
    params = connection.get_connection_params()
    assert (params["sslmode"], params["sslrootcert"]) == ("verify-full", "system")


def test_an_old_libpq_cannot_use_the_os_trust_store_and_says_what_to_do(database, azure_imds, monkeypatch):
    """libpq < 16 has no sslrootcert=system: no libpq that old is installed here, so its version is faked."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if is_psycopg3:
        import psycopg

        monkeypatch.setattr(psycopg.pq, "version", lambda: 150008)
    else:
        import psycopg2.extensions

        monkeypatch.setattr(psycopg2.extensions, "libpq_version", lambda: 150008)
    connection = database({"ENGINE": ENGINE, "NAME": "app", "USER": "app-identity", "HOST": "db.example"}, {})
    with pytest.raises(ImproperlyConfigured, match=r"needs libpq >= 16; this driver uses libpq 15") as info:
        connection.get_connection_params()
    assert info.value.check_id == "E015" and "sslrootcert" in info.value.problem.fix
