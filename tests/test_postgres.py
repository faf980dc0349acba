"""The Postgres backend against a real token-checking Postgres (TLS + scram) and the real azure-identity."""

from __future__ import annotations

import logging
import sys
import time

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import OperationalError, close_old_connections, connections
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.test import RequestFactory
from django.views.debug import technical_500_response

from django_azure_mi import get_token_provider
from django_azure_mi.backends.postgresql.client import DatabaseClient
from django_azure_mi.testing.gateway import fingerprint
from django_azure_mi.testing.imds import IMDSEmulator

from .conftest import CLIENT_ID, claims, run_threads

PG_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
PG_RESOURCE = "https://ossrdbms-aad.database.windows.net"
ROLE = "app-identity"
# An Azure server we never connect to: for settings checks only.
REMOTE = {
    "ENGINE": "django_azure_mi.backends.postgresql",
    "HOST": "srv.postgres.database.azure.com",
    "NAME": "app",
    "USER": ROLE,
}
needs_pool = pytest.mark.skipif(not is_psycopg3, reason="Django's pool needs psycopg 3")
if is_psycopg3:
    import psycopg as driver
else:
    import psycopg2 as driver


def current_user(alias: str = "default") -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT current_user")
        return cursor.fetchone()[0]


def connect_raw(pg, token: str, user: str = ROLE):
    return driver.connect(
        host=pg.host,
        port=pg.port,
        dbname=pg.dbname,
        user=user,
        password=token,
        sslmode="require",
        connect_timeout=5,
    )


def test_orm_migrate_and_crud_over_tls(azure_postgres, use_databases):
    use_databases(default=azure_postgres.database_settings(ROLE))
    call_command("migrate", verbosity=0)
    user = User.objects.create(username="alice")
    user.first_name = "Alice"
    user.save()
    assert User.objects.get(username="alice").first_name == "Alice"
    assert User.objects.filter(username="alice").delete()[0] == 1
    assert current_user() == ROLE
    raw = connections["default"].connection  # TLS to the stand-in's gateway, as to Azure
    assert (raw.pgconn.ssl_in_use if is_psycopg3 else raw.info.ssl_in_use) is True
    # The token never went into settings.
    assert not connections["default"].settings_dict.get("PASSWORD")


def test_a_static_password_role_takes_unicode_passwords(azure_postgres):
    """Azure's built-in authentication: the right password signs in, a wrong one (non-ASCII, as in Django's
    test_unicode_password) is refused with Postgres' message, and the gateway stays up."""
    azure_postgres.add_role("static-role")
    azure_postgres.set_password("static-role", "fran\u00e7ois-\u00fc")
    try:
        with pytest.raises(
            driver.OperationalError, match='password authentication failed for user "static-role"'
        ):
            connect_raw(azure_postgres, "fran\u00e7ois", user="static-role")
        connect_raw(azure_postgres, "fran\u00e7ois-\u00fc", user="static-role").close()
    finally:
        azure_postgres.set_password("static-role", None)


def test_attachments_stack_and_an_adopting_emulator_speaks_for_the_same_identity(azure_postgres, azure_imds):
    """A test's emulator attached over the session's decides while attached; detaching it brings the
    session's back. An emulator that adopted another's identities issues tokens the role accepts."""
    with IMDSEmulator() as stranger, IMDSEmulator() as successor:
        detach = azure_postgres.attach(stranger)
        with pytest.raises(driver.OperationalError, match="belongs to another identity"):
            connect_raw(azure_postgres, azure_imds.mint(PG_RESOURCE, ttl=600).token)
        connect_raw(azure_postgres, stranger.mint(PG_RESOURCE, ttl=600).token).close()
        detach()
        connect_raw(azure_postgres, azure_imds.mint(PG_RESOURCE, ttl=600).token).close()
        successor.adopt(azure_imds)
        token = successor.mint(PG_RESOURCE, ttl=600)
        assert claims(token.token)["tid"] == azure_imds.tenant_id
        connect_raw(azure_postgres, token.token).close()


@pytest.mark.azure_imds(ttl=120)
def test_rotation_new_connections_use_new_token_and_old_sessions_live(
    azure_postgres, azure_imds, use_databases
):
    use_databases(default=azure_postgres.database_settings(ROLE))
    provider = get_token_provider(PG_SCOPE)
    assert current_user() == ROLE
    old_token = provider.get_token(PG_SCOPE).token
    old_session = connect_raw(azure_postgres, old_token)

    assert provider.refresh(wait=True)  # rotation: like Azure, the server accepts every unexpired token
    connect_raw(azure_postgres, old_token).close()
    cursor = old_session.cursor()
    cursor.execute("SELECT 1")
    assert cursor.fetchone() == (1,)  # sessions outlive their token
    old_session.close()

    connections["default"].close()
    assert current_user() == ROLE  # a new physical connection, with the new token
    assert azure_postgres.accepted_fingerprints()[-1] == fingerprint(provider.get_token(PG_SCOPE).token)


def test_the_stand_in_checks_tokens_as_azure_does(azure_postgres, azure_imds):
    """Every unexpired token of the role's identity signs in, several at once; an expired one, one for
    another resource, another identity's and a forged one are refused, each with its own FATAL message."""
    azure_imds.add_identity(CLIENT_ID)
    tokens = [azure_imds.mint(PG_RESOURCE, ttl=600).token for _ in range(5)]
    sessions = [connect_raw(azure_postgres, token) for token in tokens]  # all at once
    assert all(s.cursor().execute("SELECT 1") or True for s in sessions)
    for session in sessions:
        session.close()
    refused = {
        "The access token has expired": azure_imds.mint(PG_RESOURCE, ttl=-30).token,
        "for another resource": azure_imds.mint("https://storage.azure.com", ttl=600).token,
        "belongs to another identity": azure_imds.mint(PG_RESOURCE, CLIENT_ID, ttl=600).token,
        'password authentication failed for user "app-identity"': tokens[0][:-8] + "AAAAAAAA",  # forged
    }
    for message, token in refused.items():
        with pytest.raises(driver.OperationalError, match=message):
            connect_raw(azure_postgres, token)
    with pytest.raises(driver.OperationalError, match="SSL connection is required"):
        driver.connect(host=azure_postgres.host, port=azure_postgres.port, dbname="app", user=ROLE,
                       password=tokens[0], sslmode="disable", connect_timeout=5)  # fmt: skip


@pytest.mark.azure_imds(ttl=120)
def test_persistent_connections_across_rotation(azure_postgres, use_databases):
    use_databases(default=azure_postgres.database_settings(ROLE, CONN_MAX_AGE=600, CONN_HEALTH_CHECKS=True))
    assert current_user() == ROLE
    first = connections["default"].connection
    assert get_token_provider(PG_SCOPE).refresh(wait=True)
    close_old_connections()  # end of request: the persistent connection stays
    assert current_user() == ROLE and connections["default"].connection is first
    azure_postgres.terminate_sessions(ROLE)  # a failover / restart drops it
    close_old_connections()
    assert current_user() == ROLE  # health check notices, reconnects with the new token
    assert connections["default"].connection is not first


@needs_pool
@pytest.mark.azure_imds(ttl=120)
def test_pool_opens_connections_with_the_current_token(azure_postgres, use_databases):
    pool_options = {"min_size": 2, "max_size": 4, "max_lifetime": 1.0, "timeout": 10}
    use_databases(
        default=azure_postgres.database_settings(
            ROLE, OPTIONS={"pool": pool_options}, CONN_HEALTH_CHECKS=True
        )
    )
    provider = get_token_provider(PG_SCOPE)
    assert current_user() == ROLE
    connections["default"].close()  # back to the pool
    pool = connections["default"].pool
    opened = pool.get_stats()["connections_num"]

    for _ in range(3):  # rotate; let max_lifetime recycle; then kill everything, as a failover would
        assert provider.refresh(wait=True)
        time.sleep(1.2)
        for _ in range(4):
            assert current_user() == ROLE
            connections["default"].close()
        azure_postgres.terminate_sessions(ROLE)
        for _ in range(4):
            assert current_user() == ROLE
            connections["default"].close()
        # the connections opened since the rotation signed in with the then-current token
        assert azure_postgres.accepted_fingerprints()[-1] == fingerprint(provider.get_token(PG_SCOPE).token)
    stats = pool.get_stats()
    assert stats["connections_num"] > opened + 3  # new physical connections were made after rotations
    assert stats.get("connections_errors", 0) == 0  # and each signed in with the then-current token


@needs_pool
def test_copies_without_the_pool_and_the_nodb_cursor_sign_in_themselves(azure_postgres, use_databases):
    """Django's ``no_pool_connection()`` (a ``copy()`` with ``OPTIONS["pool"] = False``, as test database
    clones) and ``_nodb_cursor()`` (test database creation) share the alias of a live pool: each must sign
    in with its own token, not take the pool's parameters."""
    use_databases(default=azure_postgres.database_settings(ROLE, OPTIONS={"pool": {"min_size": 1}}))
    assert current_user() == ROLE  # the alias's pool is live
    copy = connections["default"].copy()
    copy.settings_dict["OPTIONS"]["pool"] = False
    try:
        assert copy.pool is None
        with copy.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone() == (ROLE,)
    finally:
        copy.close()
    with connections["default"]._nodb_cursor() as cursor:
        cursor.execute("SELECT current_database(), current_user")
        assert cursor.fetchone() == ("postgres", ROLE)


@needs_pool
def test_pool_with_psycopg_pool_too_old_is_refused(azure_postgres, use_databases, monkeypatch):
    import psycopg_pool

    monkeypatch.setattr(psycopg_pool, "__version__", "3.2.6")
    use_databases(default=azure_postgres.database_settings(ROLE, OPTIONS={"pool": True}))
    with pytest.raises(ImproperlyConfigured, match=r"psycopg-pool >= 3.3 \(found 3.2.6\)"):
        connections["default"].get_connection_params()


def test_two_aliases_with_their_own_identities(azure_postgres, azure_imds, use_databases):
    azure_imds.add_identity(CLIENT_ID)  # a user-assigned identity of the host
    azure_postgres.add_role("reader-identity", client_id=CLIENT_ID)
    use_databases(
        default=azure_postgres.database_settings(ROLE),
        replica=azure_postgres.database_settings("reader-identity", client_id=CLIENT_ID),
    )
    assert current_user("default") == ROLE
    assert current_user("replica") == "reader-identity"
    oids = {claims(t.token)["oid"] for t in azure_imds.issued}
    assert oids == {azure_imds.object_id(None), azure_imds.object_id(CLIENT_ID)}


def test_assume_role_and_pgbouncer_settings_keep_working(azure_postgres, use_databases):
    azure_postgres.execute(
        "DO $$ BEGIN CREATE ROLE app_owner NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    azure_postgres.execute(f'GRANT app_owner TO "{ROLE}"')
    use_databases(
        default=azure_postgres.database_settings(
            ROLE, OPTIONS={"assume_role": "app_owner", "prepare_threshold": None}
        )
    )
    assert current_user() == "app_owner"


def test_cold_process_50_threads_one_imds_request(azure_postgres, azure_imds, use_databases):
    use_databases(default=azure_postgres.database_settings(ROLE))

    def work():
        try:
            return current_user()
        finally:
            connections["default"].close()

    assert run_threads(50, work, timeout=60) == [ROLE] * 50
    assert azure_imds.request_count(PG_RESOURCE) == 1


def test_enabled_false_is_a_plain_password_backend(azure_postgres, use_databases, azure_imds):
    azure_postgres.execute(
        "DO $$ BEGIN CREATE ROLE local_dev LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    azure_postgres.set_password("local_dev", "dev-password")  # built-in PostgreSQL authentication
    settings_dict = azure_postgres.database_settings(
        "local_dev", PASSWORD="dev-password", OPTIONS={"managed_identity": {"enabled": False}}
    )
    use_databases(default=settings_dict)
    assert current_user() == "local_dev"
    assert azure_imds.request_count() == 0


def test_sslmode_defaults_to_verify_full_with_the_os_trust_store_off_loopback(azure_imds, use_databases):
    use_databases(
        default=dict(REMOTE)  # Django setdefault()s into settings dicts
    )
    params = connections["default"].get_connection_params()
    assert (params["sslmode"], params["sslrootcert"]) == ("verify-full", "system")
    assert "managed_identity" not in params
    assert "password" not in params  # the token joins only the driver's call
    assert params.token.value not in repr(params) and params.token.value in str(params.connect_kwargs())


@pytest.mark.parametrize(
    ("settings_dict", "message"),
    [
        ({"PASSWORD": "hunter2"}, r"DATABASES\['default'\]\['PASSWORD'\] is set.*'enabled': False"),
        ({"USER": ""}, r"DATABASES\['default'\]\['USER'\] is empty.*pgaadauth_create_principal"),
        (
            {"OPTIONS": {"sslmode": "prefer"}},
            r"\['sslmode'\] = 'prefer' may send the access token unencrypted",
        ),
        ({"OPTIONS": {"sslmode": "disable"}}, r"\['sslmode'\] = 'disable'"),
        ({"OPTIONS": {"managed_identity": {"clientid": "x"}}}, r"unknown key 'clientid'"),
        (
            {"OPTIONS": {"managed_identity": {"client_id": "my-identity"}}},
            r"\['client_id'\] must be the client id",
        ),
        (
            {"OPTIONS": {"managed_identity": {"scope": "ossrdbms"}}},
            r"\['scope'\] = 'ossrdbms' is not a scope",
        ),
    ],
)
def test_misconfiguration_names_the_setting(azure_imds, use_databases, settings_dict, message):
    use_databases(default={**REMOTE, **settings_dict})
    with pytest.raises(ImproperlyConfigured, match=message):
        connections["default"].get_connection_params()


def test_insecure_sslmode_is_fine_on_loopback(azure_postgres, use_databases):
    use_databases(default=azure_postgres.database_settings(ROLE, OPTIONS={"sslmode": "prefer"}))
    assert current_user() == ROLE


def test_auth_failure_explains_without_the_token(azure_postgres, azure_imds, use_databases, caplog):
    caplog.set_level(logging.DEBUG)
    use_databases(default=azure_postgres.database_settings("App-Identity"))  # wrong case: no such role
    with pytest.raises(OperationalError) as info:
        current_user()
    token = get_token_provider(PG_SCOPE).get_token(PG_SCOPE).token
    message = str(info.value)
    assert "'App-Identity'" in message and "system-assigned managed identity" in message
    assert "pgaadauth_create_principal" in message and PG_SCOPE in message
    assert f"oid={azure_imds.object_id(None)}" in message and f"aud={PG_RESOURCE}" in message
    assert token not in message and token not in caplog.text


def test_a_token_for_another_resource_is_diagnosed_as_such(azure_postgres, azure_imds, use_databases):
    """The scope set to Storage's: the server says the token is for another resource, and the diagnosis
    leads with that (it led with "USER must be the identity's Postgres role")."""
    storage = "https://storage.azure.com/.default"
    options = {"OPTIONS": {"managed_identity": {"scope": storage}}}
    use_databases(default=azure_postgres.database_settings(ROLE, **options))
    with pytest.raises(OperationalError) as info:
        current_user()
    message = str(info.value)
    assert "because it is for another resource (aud https://storage.azure.com)" in message, message
    assert "['OPTIONS']['managed_identity']['scope']" in message
    assert "must be the identity's Postgres role" not in message


def test_azure_check_says_each_part_of_a_refusal_once(azure_postgres, azure_imds, use_databases, caplog):
    """azure_check's report of a refused sign-in: the server's reason once, the diagnosis in the table and
    under it, the fix once; the adapter's own WARNING (the whole message again, and on stderr when logging
    is not configured) is held back, and printed with -v 2."""
    import io

    from django.core.management.base import CommandError

    storage = "https://storage.azure.com/.default"
    options = {"OPTIONS": {"managed_identity": {"scope": storage}}}
    use_databases(default=azure_postgres.database_settings(ROLE, **options))
    for verbosity in (1, 2):
        out, err = io.StringIO(), io.StringIO()
        caplog.clear()
        with pytest.raises(CommandError):
            call_command("azure_check", "--database", "default", stdout=out, stderr=err, verbosity=verbosity)
        report = out.getvalue()
        said = "The access token is for another resource (https://storage.azure.com)"
        diagnosis = "Postgres refused the token because it is for another resource"
        fix = "Remove DATABASES['default']['OPTIONS']['managed_identity']['scope']"
        expected = 1 if verbosity == 1 else 2  # -v 2: the held log record (the whole message) too
        assert report.count(said) == expected, report
        assert report.count(diagnosis) == expected + 1, report  # the table's row, the Diagnosis line
        assert report.count(fix) == expected, report
        assert err.getvalue() == ""
        assert not [r for r in caplog.records if r.name.startswith("django_azure_mi")]
        assert ("Logged while probing:" in report) == (verbosity == 2)


def test_rejected_token_explains_without_the_token(azure_postgres, azure_imds, use_databases, caplog):
    use_databases(default=azure_postgres.database_settings(ROLE))
    token = get_token_provider(PG_SCOPE).get_token(PG_SCOPE).token
    azure_postgres.set_password(ROLE, "something else")  # e.g. Entra auth not enabled for this principal
    with pytest.raises(OperationalError, match="password authentication failed") as info:
        current_user()
    assert "Microsoft Entra authentication" in str(info.value)
    assert token not in str(info.value) and token not in caplog.text


@pytest.mark.parametrize("failure", ["auth", "unreachable"])
def test_debug_page_does_not_show_the_token(azure_postgres, use_databases, settings, failure):
    settings.DEBUG = True
    settings_dict = azure_postgres.database_settings(ROLE)
    if failure == "unreachable":
        settings_dict["PORT"] = 1  # connection refused
    use_databases(default=settings_dict)
    token = get_token_provider(PG_SCOPE).get_token(PG_SCOPE).token
    if failure == "auth":
        azure_postgres.set_password(ROLE, "something else")
    html = render_debug_page_of(current_user)  # the traceback starts there: no test locals in it
    assert "OperationalError" in html
    assert failure == "unreachable" or "rejected the Microsoft Entra token" in html
    assert token not in html
    assert token[:40] not in html


def render_debug_page_of(fn) -> str:
    try:
        fn()
    except OperationalError:
        return technical_500_response(RequestFactory().get("/"), *sys.exc_info()).content.decode()
    pytest.fail("the connection should have failed")


def test_dbshell_gets_the_token_through_the_environment(azure_postgres, use_databases, capfd):
    use_databases(default=azure_postgres.database_settings(ROLE))
    token = get_token_provider(PG_SCOPE).get_token(PG_SCOPE).token
    args, env = DatabaseClient.settings_to_cmd_args_env(
        connections["default"].settings_dict, ["-c", "SELECT 1"]
    )
    assert env["PGPASSWORD"] == token
    assert not any(token in arg for arg in args)
    call_command("dbshell", "--", "-A", "-t", "-c", "SELECT current_user")
    assert capfd.readouterr().out.strip() == ROLE


def test_dbshell_defaults_sslmode_verify_full_off_loopback(azure_imds, use_databases, monkeypatch):
    use_databases(
        default=dict(REMOTE)  # Django setdefault()s into settings dicts
    )
    from django_azure_mi.backends.postgresql import client

    monkeypatch.setattr(client, "check_psql_for_system_roots", lambda *args: None)  # psql 16+ (see below)
    args, env = DatabaseClient.settings_to_cmd_args_env(connections["default"].settings_dict, [])
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", "system")
    assert "managed_identity" not in " ".join(args)


@pytest.mark.skipif(is_psycopg3, reason="psycopg2 only")
def test_psycopg2_pool_keeps_djangos_message(azure_postgres, use_databases):
    use_databases(default=azure_postgres.database_settings(ROLE, OPTIONS={"pool": True}))
    with pytest.raises(ImproperlyConfigured, match="Database pooling requires psycopg >= 3"):
        connections["default"].get_connection_params()


def test_database_url_with_dj_database_url_and_django_environ(azure_postgres, azure_imds, use_databases):
    """Twelve-factor settings: ``azurepostgres://`` (registered with dj-database-url) and a plain
    ``postgres://`` URL with the engine given (django-environ, dj-database-url) reach the stand-in as the
    URL's role; ``client_id`` in the query picks a user-assigned identity; no password anywhere."""
    import dj_database_url
    import environ

    from django_azure_mi.backends.postgresql.url import ENGINE, register_scheme

    register_scheme()
    azure_imds.add_identity(CLIENT_ID)
    azure_postgres.add_role("reader", client_id=CLIENT_ID)
    tls = f"sslmode=verify-full&sslrootcert={azure_postgres.ca_file}"
    where = f"{azure_postgres.host}:{azure_postgres.port}/{azure_postgres.dbname}"
    configs = {
        "default": dj_database_url.parse(f"azurepostgres://{ROLE}@{where}?{tls}"),
        "reader": dj_database_url.parse(f"azurepostgres://reader@{where}?{tls}&client_id={CLIENT_ID}"),
        "environ": environ.Env.db_url_config(f"postgres://{ROLE}@{where}?{tls}", engine=ENGINE),
        "plain": dj_database_url.parse(f"postgres://{ROLE}@{where}?{tls}", engine=ENGINE),
    }
    assert configs["reader"]["OPTIONS"]["managed_identity"] == {"client_id": CLIENT_ID}
    assert all(not config.get("PASSWORD") and config["ENGINE"] == ENGINE for config in configs.values())
    use_databases(**configs)
    assert [current_user(alias) for alias in configs] == [ROLE, "reader", ROLE, ROLE]


def test_database_url_with_a_password_is_refused_without_showing_it():
    import dj_database_url

    from django_azure_mi.backends.postgresql.url import register_scheme

    register_scheme()
    with pytest.raises(ImproperlyConfigured, match="has a password") as raised:
        dj_database_url.parse("azurepostgres://app:s3cr3t-pw@srv.postgres.database.azure.com/app")
    assert "s3cr3t-pw" not in str(raised.value)
