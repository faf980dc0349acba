"""System checks: one id per static misconfiguration, no network (nothing listens on these hosts)."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_azure_mi.checks import check_settings
from django_azure_mi.testing import reset_state

from .conftest import CLIENT_ID

OID = "6f1c1d3e-9a52-4c47-9a50-1f0c8f0c2b11"
PG = {"ENGINE": "django_azure_mi.backends.postgresql", "HOST": "srv.postgres.database.azure.com",
      "NAME": "app", "USER": "my-app"}  # fmt: skip
REDIS = {
    "BACKEND": "django_redis.cache.RedisCache",
    "LOCATION": "rediss://cache.redis.cache.windows.net:6380/0",
    "OPTIONS": {"CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory",
                "MANAGED_IDENTITY": {"USERNAME": OID}},
}  # fmt: skip
BUILTIN_REDIS = {"BACKEND": "django_azure_mi.cache.RedisCache", "LOCATION": REDIS["LOCATION"]}
STOCK_REDIS = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS["LOCATION"]}
STORAGE = {
    "BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage",
    "OPTIONS": {"account_name": "acct", "azure_container": "media", "expiration_secs": 3600},
}
STATIC = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}


def ids(**settings) -> list[str]:
    with override_settings(**settings):
        return [m.id.split(".")[-1] for m in check_settings()]


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("AZURE_KEY_VAULT_URL", raising=False)
    reset_state()
    yield
    reset_state()


def db(**changes):
    return {"DATABASES": {"default": {**PG, **changes}}}


def cache(base=REDIS, options=None, **changes):
    entry = {**base, **changes}
    if options is not None:
        entry["OPTIONS"] = {**base.get("OPTIONS", {}), **options}
    return {"CACHES": {"default": entry}}


def storage(**options):
    return {"STORAGES": {"default": {**STORAGE, "OPTIONS": {**STORAGE["OPTIONS"], **options}},
                         "staticfiles": STATIC}}  # fmt: skip


def test_a_correct_configuration_is_clean():
    assert ids(**db(), **cache(), **storage()) == []
    assert ids(**db(), **cache(BUILTIN_REDIS), AZURE_MANAGED_IDENTITY={"CLIENT_ID": CLIENT_ID}) == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"AZURE_MANAGED_IDENTITY": {"CLOUD": "mars"}}, "E001"),
        ({"AZURE_MANAGED_IDENTITY": {"REFRESH_MARGN": 300}}, "E001"),
        ({"AZURE_MANAGED_IDENTITY": {"CLIENT_ID": "my-identity"}}, "E002"),
        ({"AZURE_MANAGED_IDENTITY": {"CREDENTIAL": "no_such_module.make"}}, "E003"),
        ({"AZURE_MANAGED_IDENTITY": {"CREDENTIAL": "workload_identity"}}, "E004"),
        (db(OPTIONS={"managed_identity": {"scope": "ossrdbms"}}), "E005"),
        (db(OPTIONS={"managed_identity": {"clientid": CLIENT_ID}}), "E010"),
        (db(PASSWORD="hunter2"), "E011"),
        (db(USER=""), "E012"),
        (db(OPTIONS={"sslmode": "prefer"}), "E013"),
        (db(ENGINE="django.db.backends.postgresql"), "W010"),
        (db(ENGINE="django.contrib.gis.db.backends.postgis"), "W010"),
        (db(ENGINE="django_azure_mi.backends.postgis", PASSWORD="hunter2"), "E011"),
        (cache(options={"MANAGED_IDENTITY": {"USER": OID}}), "E020"),
        (cache(LOCATION="rediss://user:pw@cache.redis.cache.windows.net:6380/0"), "E021"),
        (cache(options={"PASSWORD": "key"}), "E021"),
        (cache(LOCATION="redis://cache.redis.cache.windows.net:6379/0"), "E022"),
        (cache(BUILTIN_REDIS, LOCATION="redis://cache.redis.cache.windows.net:6379/0"), "E022"),
        (cache(options={"CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool"}), "E023"),
        (cache(options={"CONNECTION_FACTORY": "django_redis.pool.ConnectionFactory"}), "E024"),
        (cache(options={"MANAGED_IDENTITY": {"USERNAME": "my-app"}}), "W020"),
        (cache(STOCK_REDIS), "W021"),
        (storage(account_key="a2V5"), "E030"),
        (storage(managed_identity={"clientid": CLIENT_ID}), "E031"),
        (storage(account_url="http://acct.blob.core.windows.net"), "E032"),
        (storage(account_name=None), "E033"),
        (storage(expiration_secs=8 * 86400), "E034"),
    ],
)
def test_each_misconfiguration_has_its_id(settings, expected, monkeypatch):
    for name in ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    assert ids(**settings) == [expected]


@pytest.mark.parametrize(
    ("settings", "expected", "words"),
    [
        (db(OPTIONS={"managed_identiy": {}}), "E010", "did you mean 'managed_identity'?"),
        (db(OPTIONS={"managed_identity": {"clientid": CLIENT_ID}}), "E010", "did you mean 'client_id'?"),
        (cache(options={"MANAGED_IDENTIY": {}}), "E020", "did you mean 'MANAGED_IDENTITY'?"),
        (cache(options={"MANAGED_IDENTITY": {"USER_NAME": OID}}), "E020", "did you mean 'USERNAME'?"),
        (storage(managed_identity={"clientid": CLIENT_ID}), "E031", "did you mean 'client_id'?"),
    ],
)
def test_a_near_miss_of_our_options_is_named_at_check_time(settings, expected, words):
    """A typo of our option (it used to reach psycopg as "invalid connection option" at the first
    connection, diagnosed as "see the error above") or of one of its keys: the check names the spelling."""
    with override_settings(**settings):
        (message,) = check_settings()
    assert message.id == f"django_azure_mi.{expected}", message
    assert words in message.msg + (message.hint or ""), message


def test_key_vault_url_must_be_https(monkeypatch):
    monkeypatch.setenv("AZURE_KEY_VAULT_URL", "http://my-vault.vault.azure.net")
    assert ids() == ["E040"]


def test_messages_name_the_setting_and_carry_a_hint():
    with override_settings(**db(PASSWORD="hunter2")):
        (message,) = check_settings()
    assert message.obj == "DATABASES['default']" and "['PASSWORD'] is set" in message.msg
    assert message.hint and message.hint.startswith("Remove PASSWORD")
    assert "hunter2" not in message.msg + message.hint


def test_manage_py_check_reports_them():
    with override_settings(**db(OPTIONS={"sslmode": "disable"})), pytest.raises(SystemCheckError) as exc:
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
    assert "django_azure_mi.E013" in str(exc.value)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"AZURE_MANAGED_IDENTITY": None}, "E001"),
        (db(OPTIONS={"managed_identity": {"scope": "https://storage.azure.com/.default"}}), "W005"),
        (db(OPTIONS={"password": "x"}), "E011"),
        (db(OPTIONS={"sslmode": "DISABLE"}), "E013"),
        (db(OPTIONS={"sslmode": "require"}), "E013"),
        (db(OPTIONS={"sslmode": "require", "managed_identity": {"verify_tls": False}}), "W011"),
        (db(HOST="", OPTIONS={"host": "srv.postgres.database.azure.com", "sslmode": "prefer"}), "E013"),
        (cache(options={"MANAGED_IDENTITY": True}), "E020"),
        (
            cache(
                options={"MANAGED_IDENTITY": {"USERNAME": OID, "SCOPE": "https://vault.azure.net/.default"}}
            ),
            "W005",
        ),
        (cache(BUILTIN_REDIS, OPTIONS={"password": "key"}), "E021"),
        (cache(options={"CONNECTION_POOL_KWARGS": {"ssl_cert_reqs": "none"}}), "E022"),
        (cache(BUILTIN_REDIS, OPTIONS={"ssl_check_hostname": False}), "E022"),
        (cache(LOCATION="rediss://cache.redis.cache.windows.net:6380/0?ssl_cert_reqs=none"), "E022"),
        (storage(expiration_secs=-1), "E034"),
        (storage(account_name="http://acct"), "E033"),
        (storage(client_options={"connection_verify": False}), "E032"),
        (storage(managed_identity={"scope": "https://ossrdbms-aad.database.windows.net/.default"}), "W005"),
    ],
)
def test_what_was_silently_accepted_is_now_reported(settings, expected):
    """Issue 11's list of settings that were accepted without a word (and one that crashed the check)."""
    assert ids(**settings) == [expected]


def celery(**extra):
    from django_azure_mi.celery import TRANSPORT

    return {
        "CELERY_BROKER_TRANSPORT": TRANSPORT,
        "CELERY_BROKER_URL": "rediss://cache.redis.cache.windows.net:6380/0",
        **extra,
    }


@pytest.mark.parametrize(
    ("settings", "expected", "words"),
    [
        (celery(), None, ""),
        (celery(CELERY_BROKER_URL="cache.redis.cache.windows.net"), "E051", "not a Redis URL"),
        (celery(CELERY_BROKER_URL="redis://cache.redis.cache.windows.net:6379/0"), "E022", ":6380/"),
        (celery(CELERY_BROKER_PASSWORD="key"), "E050", "CELERY_BROKER_PASSWORD is set"),
        (
            celery(CELERY_BROKER_TRANSPORT_OPTIONS={"managed_identiy": {}}),
            "E050",
            "did you mean 'managed_identity'?",
        ),
        (
            celery(CELERY_BROKER_TRANSPORT_OPTIONS={"managed_identity": {"clientid": CLIENT_ID}}),
            "E050",
            "did you mean 'client_id'?",
        ),
    ],
)
def test_celery_settings_are_checked_by_manage_py_check(settings, expected, words):
    """Celery's settings for our transport were validated only when a worker started (or by azure_check
    --celery): `manage.py check` names the setting now."""
    with override_settings(**settings):
        messages = check_settings()
    if expected is None:
        assert messages == []
        return
    (message,) = messages
    assert message.id == f"django_azure_mi.{expected}", message
    assert words in message.msg + (message.hint or ""), message
