"""keyvault.secret(): Key Vault (stand-in, real SecretClient and azure-identity) or environment / .env."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import requests
from django.test import override_settings

from django_azure_mi.keyvault import SecretError, secret, secret_info
from django_azure_mi.testing import reset_state

from .conftest import CLIENT_ID

VALUE = "correct-horse-battery-staple"


@pytest.fixture
def no_vault(azure_imds, monkeypatch, tmp_path):
    """No vault configured; cwd without a .env file."""
    monkeypatch.delenv("AZURE_KEY_VAULT_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    reset_state()
    return tmp_path


def test_reads_from_vault_with_the_challenge_flow_and_caches(azure_keyvault, azure_imds, caplog):
    azure_keyvault.set_secret("db-password", "old")
    version = azure_keyvault.set_secret("db-password", VALUE)
    caplog.set_level(logging.DEBUG)

    assert secret("db-password") == VALUE
    assert azure_keyvault.challenges == 1  # first request without a token, then the bearer request
    assert azure_imds.request_count("https://vault.azure.net") == 1
    requests_before = azure_keyvault.requests
    assert secret("db-password") == VALUE  # cached per process
    assert azure_keyvault.requests == requests_before
    assert VALUE not in caplog.text and "db-password" in caplog.text and version in caplog.text


def test_vault_wins_over_environment_and_a_specific_version_can_be_pinned(azure_keyvault, monkeypatch):
    first = azure_keyvault.set_secret("api-key", "v1")
    azure_keyvault.set_secret("api-key", "v2")
    monkeypatch.setenv("API_KEY", "from-env")
    assert secret("api-key") == "v2"
    assert secret("api-key", version=first) == "v1"


def test_missing_secret_in_vault(azure_keyvault):
    with pytest.raises(SecretError) as exc:
        secret("not-there")
    message = str(exc.value)
    assert "'not-there' does not exist" in message and azure_keyvault.url in message
    assert "az keyvault secret set" in message and "default=" in message
    assert secret("not-there", default="fallback") == "fallback"


def test_identity_without_access_gets_the_rbac_fix_and_no_value(azure_keyvault, azure_imds):
    azure_keyvault.set_secret("db-password", VALUE)
    azure_keyvault.revoke(azure_imds.object_id())
    with pytest.raises(SecretError) as exc:
        secret("db-password")
    message = str(exc.value)
    assert "Key Vault Secrets User" in message and "403" in message and "ForbiddenByRbac" in message
    assert "system-assigned" in message
    assert VALUE not in message and exc.value.__cause__ is None and exc.value.__suppress_context__


def test_user_assigned_identity_from_settings(azure_keyvault, azure_imds):
    azure_imds.add_identity(CLIENT_ID)
    azure_keyvault.set_secret("db-password", VALUE)
    azure_keyvault.revoke(azure_imds.object_id())
    azure_keyvault.grant(azure_imds.object_id(CLIENT_ID))
    with override_settings(AZURE_MANAGED_IDENTITY={"CLIENT_ID": CLIENT_ID}):
        assert secret("db-password") == VALUE
    assert azure_imds.last_token("https://vault.azure.net").identity.client_id == CLIENT_ID


def test_identity_endpoint_down(azure_keyvault, azure_imds):
    azure_keyvault.set_secret("db-password", VALUE)
    azure_imds.pause()
    started = time.monotonic()
    with override_settings(AZURE_MANAGED_IDENTITY={"TIMEOUT": 2}), pytest.raises(SecretError) as exc:
        secret("db-password")
    assert time.monotonic() - started < 15
    assert "no token for" in str(exc.value) and "'db-password'" in str(exc.value)


def test_vault_must_be_https(no_vault):
    with pytest.raises(SecretError, match="is not an https URL"):
        secret("x", vault_url="http://vault.example")


def test_unreachable_vault(azure_imds, no_vault):
    from django_azure_mi.testing.net import free_port

    with pytest.raises(SecretError, match="unreachable"):
        secret("x", vault_url=f"https://127.0.0.1:{free_port()}")


def test_secret_info_has_no_value(azure_keyvault):
    version = azure_keyvault.set_secret("db-password", VALUE)
    info = secret_info("db-password")
    assert info.version == version and info.enabled is True and info.updated
    assert VALUE not in repr(info)


def test_environment_then_dotenv_then_default(no_vault, monkeypatch):
    (no_vault / ".env").write_text("DB_PASSWORD=from-dotenv\nOTHER=x\n")
    assert secret("db-password") == "from-dotenv"
    reset_state()
    monkeypatch.setenv("DB_PASSWORD", "from-env")
    assert secret("db-password") == "from-env"  # the environment beats .env
    assert secret("db-password", env="OTHER") == "x"  # env= names the variable
    assert secret("absent", default="d") == "d"


def test_missing_everywhere_names_the_places(no_vault):
    (no_vault / ".env").write_text("")
    with pytest.raises(SecretError) as exc:
        secret("django-secret-key")
    message = str(exc.value)
    assert "DJANGO_SECRET_KEY" in message and str(no_vault / ".env") in message
    assert "AZURE_KEY_VAULT_URL" in message


def test_dotenv_can_configure_the_vault(azure_keyvault, monkeypatch, tmp_path):
    monkeypatch.delenv("AZURE_KEY_VAULT_URL")
    env_file = tmp_path / "site.env"
    env_file.write_text(f"AZURE_KEY_VAULT_URL={azure_keyvault.url}\n")
    azure_keyvault.set_secret("db-password", VALUE)
    assert secret("db-password", env_file=env_file) == VALUE


def test_bad_names_and_files(no_vault):
    with pytest.raises(SecretError, match="letters, digits and dashes"):
        secret("db_password")
    assert secret("x", env_file=no_vault / "missing.env", default="d") == "d"  # no .env on Azure
    with pytest.raises(SecretError, match=r"is a directory, not a \.env file.*BASE_DIR / '\.env'"):
        secret("x", env_file=no_vault, default="d")


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ("None", r"AZURE_MANAGED_IDENTITY is None\. Remove it"),
        ("{'CLOUD': 'mars'}", r"AZURE_MANAGED_IDENTITY\['CLOUD'\] is 'mars'\. Use one of"),
    ],
)
def test_a_bad_setting_above_secret_is_refused(identity, message, azure_keyvault, tmp_path):
    """secret() reads the vault with the AZURE_MANAGED_IDENTITY defined above it: a bad one is an error
    there, naming the setting and the fix (it used to be read as the defaults)."""
    (tmp_path / "bad_settings.py").write_text(
        f"from django_azure_mi.keyvault import secret\nAZURE_MANAGED_IDENTITY = {identity}\n"
        "SECRET_KEY = secret('django-secret-key')\n"
    )
    code = "import bad_settings"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode != 0
    assert re.search(message, out.stderr), out.stderr[-1500:]


def test_stand_in_rejects_foreign_and_wrong_audience_tokens(azure_keyvault, azure_imds):
    azure_keyvault.set_secret("s", VALUE)
    url = f"{azure_keyvault.url}/secrets/s?api-version=7.5"
    verify = azure_keyvault.ca_file
    challenge = requests.get(url, verify=verify, timeout=5)
    assert (
        challenge.status_code == 401
        and 'resource="https://vault.azure.net"' in challenge.headers["WWW-Authenticate"]
    )
    minted = azure_imds.mint("https://vault.azure.net").token  # not issued over HTTP
    wrong_aud = azure_imds.mint("https://storage.azure.com").token
    for token, code in ((minted, "AKV10032"), (wrong_aud, "AKV10022")):
        answer = requests.get(url, verify=verify, timeout=5, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401 and code in answer.json()["error"]["message"]


def test_settings_module_uses_the_identity_it_defines(azure_keyvault, azure_imds, tmp_path):
    """secret() runs while settings.py is still executing: the AZURE_MANAGED_IDENTITY defined above it
    picks the identity (here a user-assigned one)."""
    azure_imds.add_identity(CLIENT_ID)
    azure_keyvault.set_secret("django-secret-key", VALUE)
    azure_keyvault.revoke(azure_imds.object_id())
    azure_keyvault.grant(azure_imds.object_id(CLIENT_ID))
    (tmp_path / "site_settings.py").write_text(
        textwrap.dedent(
            f"""
            from django_azure_mi.keyvault import secret
            AZURE_MANAGED_IDENTITY = {{"CLIENT_ID": "{CLIENT_ID}", "TIMEOUT": 5}}
            SECRET_KEY = secret("django-secret-key")
            INSTALLED_APPS = ["django_azure_mi"]
            """
        )
    )
    code = (
        "import django; from django.conf import settings; django.setup(); "
        f"print(settings.SECRET_KEY == {VALUE!r})"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "site_settings", "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
    assert azure_imds.last_token("https://vault.azure.net").identity.client_id == CLIENT_ID


@pytest.mark.slow
@pytest.mark.azure_imds(ttl=6)
def test_the_vault_token_read_at_startup_stops_being_refreshed(azure_keyvault, azure_imds, settings):
    """The settings pattern: secrets are read once at import. The vault-scope token then goes idle after
    IDLE_LIFETIMES token lifetimes without a caller (its worker thread exits); the next read wakes it."""
    from django_azure_mi import get_token_provider

    settings.AZURE_MANAGED_IDENTITY = {"IDLE_LIFETIMES": 1}
    azure_keyvault.set_secret("api-key", "first")
    azure_keyvault.set_secret("later-key", "second")
    assert secret("api-key") == "first"
    refresher = get_token_provider("https://vault.azure.net/.default")._refresher
    deadline = time.time() + 30
    while not refresher.idleness.idled and time.time() < deadline:
        time.sleep(0.2)
    assert refresher.idleness.idled == 1 and refresher._thread is None
    idle_count = azure_imds.request_count("https://vault.azure.net")
    assert idle_count <= 4  # startup, then renewals during one lifetime
    time.sleep(9)  # one and a half lifetimes: an active token would have been renewed
    assert azure_imds.request_count("https://vault.azure.net") == idle_count
    assert secret("later-key") == "second"  # wakes it: the token had expired, so this call waited for one
    assert azure_imds.request_count("https://vault.azure.net") == idle_count + 1
