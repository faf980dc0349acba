"""manage.py azure_check against the stand-ins (Postgres, Redis, Azurite, Key Vault), real azure-identity."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from django_azure_mi.keyvault import secret
from django_azure_mi.testing.imds import Fault

from .test_cache import cache_settings

STORAGE_BACKEND = "django_azure_mi.storage.AzureManagedIdentityStorage"
OTHER_OID = "0b9b3c9e-1c1f-4f38-8b1d-5a1b7b1a2c3d"
UNKNOWN_CLIENT = "99999999-8888-7777-6666-555555555555"


@pytest.fixture
def site(azure_postgres, azure_redis, azure_storage, azure_keyvault, use_databases, settings):
    """A site using all four services through django-azure-mi, like example_project."""
    use_databases(default=azure_postgres.database_settings("app-identity"))
    settings.CACHES = {"default": cache_settings(azure_redis, "django-redis")}
    container = f"c{uuid.uuid4().hex[:12]}"
    options = azure_storage.storage_options(container, expiration_secs=600)
    settings.STORAGES = {**settings.STORAGES, "media": {"BACKEND": STORAGE_BACKEND, "OPTIONS": options}}
    from django.core.files.storage import storages

    storages["media"].client.create_container()
    azure_keyvault.set_secret("django-secret-key", "not-shown-anywhere")
    assert secret("django-secret-key") == "not-shown-anywhere"  # as settings.py would
    return settings


def azure_check(*args: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("azure_check", *args, stdout=out, no_color=True)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def assert_no_tokens(output: str, imds) -> None:
    assert imds.issued, "no token was issued?"
    for issued in imds.issued:
        assert issued.token not in output
        assert issued.token.split(".")[1][:40] not in output  # not even the claims part
    assert "not-shown-anywhere" not in output


def test_healthy_site(site, azure_imds, caplog):
    caplog.set_level(logging.DEBUG)  # urllib3 logs every URL it fetches at DEBUG, signed ones included
    output, error = azure_check()
    assert error is None, output
    for service in ("postgres", "redis", "storage", "keyvault"):
        assert any(line.startswith(f"✓  {service}") for line in output.splitlines()), output
    assert "user app-identity, TLS" in output  # psycopg2 names the version too (TLSv1.3)
    assert "PING, SET/GET/DEL ok, ACL WHOAMI " + azure_imds.object_id() in output
    assert "write/read/delete, signed URL ok" in output
    assert "secret django-secret-key (enabled)" in output
    assert f"oid {azure_imds.object_id()}" in output and f"tid {azure_imds.tenant_id}" in output
    assert "4 of 4 healthy." in output
    assert_no_tokens(output, azure_imds)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "sig=<redacted>" in logged  # the probe's signed-URL fetch, logged without its signature
    assert not re.search(r"sig=(?!<redacted>)", logged)
    assert_no_tokens(logged, azure_imds)


def test_json_document(site, azure_imds):
    output, error = azure_check("--json")
    assert error is None
    document = json.loads(output)
    assert document["ok"] is True and isinstance(document["elapsed_ms"], float)
    by_service = {r["service"]: r for r in document["results"]}
    assert set(by_service) == {"postgres", "redis", "storage", "keyvault"}
    for result in document["results"]:
        assert set(result) == {
            "service", "alias", "ok", "elapsed_ms", "identity", "details", "error", "diagnosis", "fix", "kind"
        }  # fmt: skip
        assert result["ok"] is True and result["error"] is None
        identity = result["identity"]
        assert identity["oid"] == azure_imds.object_id() and identity["tid"] == azure_imds.tenant_id
        assert identity["expires_in_s"] > 0 and identity["credential"] == "system-assigned managed identity"
    assert by_service["postgres"]["details"]["current_user"] == "app-identity"
    assert by_service["postgres"]["details"]["tls"] is True
    assert by_service["redis"]["details"]["user"] == azure_imds.object_id()
    assert by_service["storage"]["details"]["signed_url"] is True
    assert by_service["keyvault"]["details"]["secrets"][0]["name"] == "django-secret-key"
    assert by_service["postgres"]["identity"]["audience"] == "https://ossrdbms-aad.database.windows.net"
    assert_no_tokens(output, azure_imds)


def test_limit_to_aliases(site):
    output, error = azure_check("--json", "--cache", "default", "--storage", "media")
    assert error is None
    assert [r["service"] for r in json.loads(output)["results"]] == ["redis", "storage"]
    output, error = azure_check("--database", "nope")
    assert "there is no DATABASES['nope']" in str(error)
    site.CACHES = {**site.CACHES, "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    output, error = azure_check("--cache", "local")
    assert "--cache local: it does not use django-azure-mi" in str(error)


def test_identity_endpoint_down(site, azure_imds):
    site.AZURE_MANAGED_IDENTITY = {"TIMEOUT": 2}
    azure_imds.pause()
    started = time.monotonic()
    output, error = azure_check("--timeout", "10")
    assert time.monotonic() - started < 15
    assert error is not None and error.returncode == 1 and "4 of 4 checks failed" in str(error)
    assert output.count("Diagnosis: No token: the managed identity endpoint (IMDS) is unreachable") == 4
    assert "'CREDENTIAL': 'default'" in output and "az login" in output


def test_hung_identity_endpoint_hits_the_deadline(site, azure_imds):
    azure_imds.fail_always(Fault.hang())
    started = time.monotonic()
    output, error = azure_check("--json", "--timeout", "1.5", "--database", "default")
    assert time.monotonic() - started < 5 and error is not None
    (result,) = json.loads(output)["results"]
    assert result["ok"] is False and result["error"] == "no answer within 1.5 s"
    # the stuck probe is not started again while it hangs (readiness checks cannot pile up threads)
    requests_before = azure_imds.request_count()
    output, error = azure_check("--json", "--timeout", "1.5", "--database", "default")
    (result,) = json.loads(output)["results"]
    assert result["error"].startswith("the previous probe has not answered for")
    assert azure_imds.request_count() == requests_before
    azure_imds.release_hangs()


def test_wrong_database_user(site, azure_postgres, use_databases, azure_imds):
    use_databases(default=azure_postgres.database_settings("somebody-else"))
    output, error = azure_check("--database", "default")
    assert error is not None
    assert "✗ postgres 'default'" in output
    assert "DATABASES['default']['USER'] must be the identity's Postgres role" in output
    assert "pgaadauth_create_principal" in output
    assert_no_tokens(output, azure_imds)


def test_database_without_tls(site, azure_postgres, use_databases):
    use_databases(default=azure_postgres.database_settings("app-identity", OPTIONS={"sslmode": "disable"}))
    output, error = azure_check("--database", "default")
    assert error is not None
    assert "TLS problem between Django and Postgres" in output


def test_wrong_redis_object_id(site, azure_redis):
    site.CACHES = {"default": cache_settings(azure_redis, "builtin", USERNAME=OTHER_OID)}
    output, error = azure_check("--cache", "default")
    assert error is not None
    assert f"USERNAME'] is '{OTHER_OID}' but the token's object id is" in output
    assert "access-policy-assignment" in output


def test_redis_refuses_an_identity_without_access(site, azure_redis, azure_imds):
    azure_imds.add_identity(UNKNOWN_CLIENT)  # the emulator knows it; Redis has no user for it
    site.CACHES = {"default": cache_settings(azure_redis, "django-redis", CLIENT_ID=UNKNOWN_CLIENT)}
    output, error = azure_check("--cache", "default")
    assert error is not None
    assert "invalid username-password pair" in output and "no access policy" in output


def test_redis_without_tls(site, azure_redis):
    settings = cache_settings(azure_redis, "builtin")
    settings["LOCATION"] = azure_redis.url.replace("rediss://", "redis://")
    del settings["OPTIONS"]["ssl_ca_certs"]
    site.CACHES = {"default": settings}
    output, error = azure_check("--cache", "default", "--timeout", "10")
    assert error is not None
    assert "TLS problem between Django and Redis" in output and "rediss://" in output


def test_a_refused_signed_url_is_not_called_a_missing_role(site, azure_storage):
    """Write/read/delete worked with the token, the user delegation key came back, the SAS was refused
    (here: signed for another account name): the diagnosis says so, not "no data role"."""
    options = {**site.STORAGES["media"]["OPTIONS"], "account_name": "otheraccount"}
    site.STORAGES = {**site.STORAGES, "media": {"BACKEND": STORAGE_BACKEND, "OPTIONS": options}}
    output, error = azure_check("--storage", "media")
    assert error is not None
    assert "refused the signed URL (403" in output and "not the identity's data role" in output
    assert "azurite@3.37.0" in output and "Storage Blob Data" not in output


def test_an_old_azurite_is_refused_with_the_version_to_install(tmp_path, monkeypatch):
    from django_azure_mi.testing.azurite import AzuriteStandIn

    old = tmp_path / "azurite-blob"
    old.write_text("#!/bin/sh\necho 3.35.0\n")  # what `npm install azurite` gave a wheel user once
    old.chmod(0o755)
    monkeypatch.setenv("AZURITE_BIN", str(old))
    with pytest.raises(RuntimeError, match=r"Azurite 3\.35\.0 .* too old.*npm install azurite@3\.37\.0"):
        AzuriteStandIn().start()


def test_storage_refuses_the_token(site, azure_storage):
    options = {
        **site.STORAGES["media"]["OPTIONS"],
        "managed_identity": {"scope": "https://vault.azure.net/.default"},
    }
    site.STORAGES = {**site.STORAGES, "media": {"BACKEND": STORAGE_BACKEND, "OPTIONS": options}}
    output, error = azure_check("--storage", "media")
    assert error is not None
    assert "403" in output and "rejected the token (audience/scope" in output


def test_nothing_configured(settings, monkeypatch):
    monkeypatch.delenv("AZURE_KEY_VAULT_URL", raising=False)
    settings.DATABASES = {}
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    output, error = azure_check()
    assert error is None and "Nothing to check" in output


def test_misconfiguration_is_reported_with_its_check_id(site, azure_postgres, use_databases):
    use_databases(default=azure_postgres.database_settings("app-identity", PASSWORD="hunter2"))
    output, error = azure_check("--database", "default")
    assert error is not None
    assert (
        "Diagnosis: Misconfiguration (django_azure_mi.E011): DATABASES['default']['PASSWORD'] is set"
        in output
    )
    assert "Fix: Remove PASSWORD" in output and "hunter2" not in output


def test_keyvault_flag_without_a_vault(settings, monkeypatch):
    monkeypatch.delenv("AZURE_KEY_VAULT_URL", raising=False)
    _, error = azure_check("--keyvault")
    assert "AZURE_KEY_VAULT_URL is not set" in str(error)


def test_cache_policy_without_acl_whoami_is_still_healthy(site, azure_redis, azure_imds):
    """A narrower access policy may refuse ACL WHOAMI (NOPERM): the cache still works, so it is healthy."""
    azure_redis.admin().execute_command("ACL", "SETUSER", azure_imds.object_id(), "-acl|whoami")
    output, error = azure_check("--json", "--cache", "default")
    assert error is None, output
    (result,) = json.loads(output)["results"]
    assert result["ok"] and result["details"]["user"].startswith("(ACL WHOAMI refused: ")
    assert result["details"]["set_get_del"] is True


def test_named_secret_and_a_missing_one(site, azure_keyvault):
    azure_keyvault.set_secret("other-secret", "x")
    output, error = azure_check("--json", "--keyvault", "--secret", "other-secret")
    assert error is None
    (result,) = json.loads(output)["results"]
    assert [s["name"] for s in result["details"]["secrets"]] == ["other-secret"]
    output, error = azure_check("--keyvault", "--secret", "not-there")
    assert error is not None and "'not-there' does not exist" in output


def test_celery_broker_and_result_backend(azure_redis, azure_imds, settings):
    """With Celery's settings on our transport and backend, azure_check probes both like a cache (identity,
    PING, ACL WHOAMI, a probe key); a wrong username is named by its Celery setting."""
    for name, value in azure_redis.celery_settings().items():
        setattr(settings, f"CELERY_{name.upper()}", value)
    output, error = azure_check("--celery")
    assert error is None, output
    for setting in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        assert any(line.startswith("✓  celery") and f" {setting} " in line for line in output.splitlines()), (
            output
        )
    assert output.count("PING, SET/GET/DEL ok, ACL WHOAMI " + azure_imds.object_id()) == 2, output
    assert "2 of 2 healthy." in output
    assert_no_tokens(output, azure_imds)
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"managed_identity": {"username": OTHER_OID}}
    output, error = azure_check("--celery")
    assert error is not None and "1 of 2 healthy." in output, output
    assert f"CELERY_BROKER_TRANSPORT_OPTIONS['managed_identity']['username'] is '{OTHER_OID}'" in output
