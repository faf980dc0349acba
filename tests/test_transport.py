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
    import ssl

    bundle = ssl.get_default_verify_paths().openssl_cafile  # the OS trust store, for a psql older than 16
    connection = database(
        settings_for(
            rogue_postgres, HOST="", OPTIONS={"host": rogue_postgres.address, "sslrootcert": bundle}
        ),
        {},
    )
    args, env = DatabaseClient.settings_to_cmd_args_env(connection.settings_dict, ["-c", "select 1"])
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"], env["PGHOST"]) == (
        "verify-full",
        bundle,
        rogue_postgres.address,
    )
    psql = subprocess.run(args, env={**os.environ, **env}, capture_output=True, timeout=20)
    assert psql.returncode != 0
    assert b"certificate" in psql.stderr
    assert env["PGPASSWORD"].encode() not in rogue_postgres.received()


def test_dbshell_connects_where_the_rule_judged_hostaddr_included(rogue_postgres, database, azure_imds):
    """HOST remote plus ``OPTIONS["hostaddr"]`` on loopback (a tunnel or sidecar): the rule judged the
    connection local, so psql must go to hostaddr too; it once got ``-h HOST`` alone, libpq's ``prefer``,
    and the rogue at HOST got the token."""
    connection = database(
        settings_for(rogue_postgres, HOST=rogue_postgres.address, OPTIONS={"hostaddr": "127.0.0.1"}), {}
    )
    args, env = DatabaseClient.settings_to_cmd_args_env(connection.settings_dict, ["-c", "select 1"])
    assert env["PGHOSTADDR"] == "127.0.0.1"
    subprocess.run(args, env={**os.environ, **env}, capture_output=True, timeout=20)
    assert env["PGPASSWORD"].encode() not in rogue_postgres.received()
    assert rogue_postgres.received() == b""


def test_dbshell_with_a_psql_older_than_16_says_what_to_do(database, azure_imds):
    """``sslrootcert=system`` with the system's psql 15: psql itself is asked whether its libpq knows it."""
    from django_azure_mi.backends.postgresql.client import check_psql_for_system_roots

    connection = database({"ENGINE": ENGINE, "NAME": "app", "USER": "app-identity", "HOST": "db.example"}, {})
    try:
        check_psql_for_system_roots("psql", "here")
    except ImproperlyConfigured:
        with pytest.raises(ImproperlyConfigured, match="needs libpq >= 16") as info:
            DatabaseClient.settings_to_cmd_args_env(connection.settings_dict, [])
        assert info.value.check_id == "E015" and "sslrootcert" in info.value.problem.fix
    else:
        _, env = DatabaseClient.settings_to_cmd_args_env(connection.settings_dict, [])
        assert env["PGSSLROOTCERT"] == "system"


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


# ---------------------------------------------------------------------------------------------- Redis

REDIS_ROUTES = {
    "rediss (default: verified TLS)": ({}, ""),
    "connection_class=redis.Connection on rediss": ({"connection_class": "redis.Connection"}, ""),
    "ssl_cert_reqs=none": ({"ssl_cert_reqs": "none"}, ""),
    "ssl_check_hostname=False": ({"ssl_check_hostname": False}, ""),
    "?ssl_cert_reqs=none in the URL": ({}, "?ssl_cert_reqs=none"),
    # the rogue's certificate chains to a CA the client trusts, but names another host: only the host name
    # check stands between it and the token, and these values turn it off in redis-py
    "ssl_check_hostname=None, trusted CA": ({"ssl_check_hostname": None, "ssl_ca_certs": "CA"}, ""),
    "ssl_check_hostname='', trusted CA": ({"ssl_check_hostname": "", "ssl_ca_certs": "CA"}, ""),
    "ssl_cert_reqs=0": ({"ssl_cert_reqs": 0}, ""),
    "trusted CA, defaults": ({"ssl_ca_certs": "CA"}, ""),
}


def redis_config(backend: str, rogue, pool_kwargs: dict, query: str, **identity) -> dict:
    import redis

    swap = {"redis.Connection": redis.Connection, "CA": rogue.ca_file}
    kwargs = {k: swap.get(v, v) if isinstance(v, str) else v for k, v in pool_kwargs.items()}
    location = f"rediss://{rogue.address}:{rogue.port}/0{query}"
    if backend == "django-redis":
        options = {
            "CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory",
            "MANAGED_IDENTITY": identity,
            "CONNECTION_POOL_KWARGS": {"socket_timeout": 3, "socket_connect_timeout": 3, **kwargs},
        }
        return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": location, "OPTIONS": options}
    options = {"MANAGED_IDENTITY": identity, "socket_timeout": 3, "socket_connect_timeout": 3, **kwargs}
    return {"BACKEND": "django_azure_mi.cache.RedisCache", "LOCATION": location, "OPTIONS": options}


@pytest.mark.parametrize("backend", ["django-redis", "builtin"])
@pytest.mark.parametrize("route", list(REDIS_ROUTES))
def test_redis_token_never_reaches_a_rogue(route, backend, rogue_sniffer, azure_imds):
    from .test_cache import build_cache

    pool_kwargs, query = REDIS_ROUTES[route]
    token = get_token_provider("https://redis.azure.com/.default").get_token(
        "https://redis.azure.com/.default"
    )
    with pytest.raises(Exception) as info:
        build_cache(redis_config(backend, rogue_sniffer, pool_kwargs, query)).get("x")
    received = rogue_sniffer.received()
    assert token.token.encode() not in received and token.token.split(".")[2].encode() not in received
    if isinstance(info.value, ImproperlyConfigured):
        assert info.value.check_id == "E022" and "TLS" in str(info.value)
    else:
        assert "certificate" in str(info.value).lower() or "ssl" in str(info.value).lower(), info.value


@pytest.mark.slow
def test_redis_opt_out_is_explicit_and_reported(rogue_sniffer, azure_imds, settings):
    from django_azure_mi.checks import check_settings

    from .test_cache import build_cache

    config = redis_config("builtin", rogue_sniffer, {"ssl_cert_reqs": "none"}, "", VERIFY_TLS=False)
    settings.CACHES = {"default": config}
    assert [m.id for m in check_settings() if m.id.endswith("W022")] == ["django_azure_mi.W022"]
    with pytest.raises(Exception):
        build_cache(config).get("x")
    token = get_token_provider("https://redis.azure.com/.default").get_token(
        "https://redis.azure.com/.default"
    )
    assert token.token.encode() in rogue_sniffer.received()  # exactly what the warning is about


# ---------------------------------------------------------------------------------------------- Storage


def storage_options(rogue, **options):
    return {
        "account_url": f"https://{rogue.address}:{rogue.port}/acct",
        "azure_container": "media",
        **options,
    }


def test_storage_token_never_reaches_a_rogue(rogue_sniffer, azure_imds):
    """Default: the SDK verifies the certificate (the rogue's is self-signed); connection_verify=False is
    refused without the opt-out."""
    from django.core.files.base import ContentFile

    from django_azure_mi.storage import AzureManagedIdentityStorage

    storage = AzureManagedIdentityStorage(
        **storage_options(rogue_sniffer, client_options={"retry_total": 0, "connection_timeout": 3})
    )
    with pytest.raises(Exception) as info:
        storage.save("x.txt", ContentFile(b"x"))
    assert "certificate" in str(info.value).lower() or "ssl" in str(info.value).lower(), info.value
    with pytest.raises(ImproperlyConfigured, match="connection_verify'\\] = False") as refused:
        AzureManagedIdentityStorage(
            **storage_options(rogue_sniffer, client_options={"connection_verify": False})
        )
    assert refused.value.check_id == "E032" and "verify_tls" in refused.value.problem.fix
    for off in (0, "", None):  # requests skips verification for each of these
        with pytest.raises(ImproperlyConfigured) as refused:
            AzureManagedIdentityStorage(
                **storage_options(rogue_sniffer, client_options={"connection_verify": off})
            )
        assert refused.value.check_id == "E032"
    token = get_token_provider("https://storage.azure.com/.default").get_token(
        "https://storage.azure.com/.default"
    )
    assert token.token.encode() not in rogue_sniffer.received()


def test_storage_opt_out_is_explicit_and_reported(rogue_sniffer, azure_imds, settings):
    from django.core.files.base import ContentFile

    from django_azure_mi.checks import check_settings
    from django_azure_mi.storage import AzureManagedIdentityStorage

    options = storage_options(
        rogue_sniffer,
        client_options={"connection_verify": False, "retry_total": 0, "read_timeout": 3},
        managed_identity={"verify_tls": False},
    )
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage", "OPTIONS": options},
    }
    assert "django_azure_mi.W032" in [m.id for m in check_settings()]
    with pytest.raises(Exception):
        AzureManagedIdentityStorage(**options).save("x.txt", ContentFile(b"x"))
    token = get_token_provider("https://storage.azure.com/.default").get_token(
        "https://storage.azure.com/.default"
    )
    assert token.token.encode() in rogue_sniffer.received()  # exactly what the warning is about


# ---------------------------------------------------------------------------------------------- Key Vault


def test_keyvault_token_never_reaches_a_rogue(rogue_sniffer, azure_imds):
    """The SDK verifies the vault's certificate and there is no option to turn that off; an http vault URL
    is refused before any request (E040)."""
    from django_azure_mi.keyvault import SecretError, secret

    url = f"https://{rogue_sniffer.address}:{rogue_sniffer.port}"
    with pytest.raises(SecretError) as info:
        secret("db-password", vault_url=url)
    assert "certificate" in str(info.value).lower() or "ssl" in str(info.value).lower(), info.value
    with pytest.raises(SecretError) as plain:
        secret("db-password", vault_url=f"http://{rogue_sniffer.address}:{rogue_sniffer.port}")
    assert plain.value.check_id == "E040"
    token = get_token_provider("https://vault.azure.net/.default").get_token(
        "https://vault.azure.net/.default"
    )
    assert token.token.encode() not in rogue_sniffer.received()
    assert rogue_sniffer.received() == b""  # not even an unauthenticated request got through the handshake


@pytest.mark.parametrize("off", [0, ""])
def test_storage_falsy_connection_verify_sent_the_token_to_a_rogue(off, rogue_sniffer, azure_imds):
    """``connection_verify=0`` or ``""``: requests skips verification; refused (E032) like False."""
    from django.core.files.base import ContentFile

    from django_azure_mi.storage import AzureManagedIdentityStorage

    options = storage_options(rogue_sniffer, client_options={"connection_verify": off, "retry_total": 0})
    with pytest.raises(Exception) as info:
        AzureManagedIdentityStorage(**options).save("x.txt", ContentFile(b"x"))
    token = get_token_provider("https://storage.azure.com/.default").get_token(
        "https://storage.azure.com/.default"
    )
    assert token.token.encode() not in rogue_sniffer.received()
    assert isinstance(info.value, ImproperlyConfigured) and info.value.check_id == "E032"


@pytest.mark.parametrize("where", ["broker_use_ssl", "redis_backend_use_ssl"])
@pytest.mark.parametrize("hostname", [None, ""])
def test_celery_ssl_check_hostname_off_is_refused(where, hostname, rogue_sniffer, azure_imds):
    """Celery's SSL dicts with a falsy ssl_check_hostname and a CA the rogue's certificate chains to."""
    pytest.importorskip("celery")
    from celery import Celery

    from django_azure_mi.celery import TRANSPORT, result_backend

    url = f"rediss://{rogue_sniffer.address}:{rogue_sniffer.port}/0"
    ssl_options = {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": hostname,
        "ssl_ca_certs": rogue_sniffer.ca_file,
    }
    app = Celery("rogue", set_as_current=False)
    app.conf.broker_url = url
    app.conf.broker_transport = TRANSPORT
    app.conf.broker_connection_retry_on_startup = False
    app.conf.broker_connection_max_retries = 0
    app.conf.result_backend = result_backend(url)
    app.conf[where] = ssl_options
    with pytest.raises(Exception) as info:
        if where == "broker_use_ssl":
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                conn.default_channel.client.ping()
        else:
            app.backend.client.ping()
    token = get_token_provider("https://redis.azure.com/.default").get_token(
        "https://redis.azure.com/.default"
    )
    assert token.token.encode() not in rogue_sniffer.received()
    chain = [info.value, info.value.__cause__, info.value.__context__]
    assert any(isinstance(e, ImproperlyConfigured) and e.check_id == "E022" for e in chain), repr(info.value)
