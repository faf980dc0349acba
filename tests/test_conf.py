"""AZURE_MANAGED_IDENTITY validation: every bad value raises ImproperlyConfigured naming key and fix."""

from __future__ import annotations

import os
import stat

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_azure_mi import conf, get_token_provider, runtime, services
from django_azure_mi.testing import reset_state

from .conftest import CLIENT_ID, STORAGE


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("AZURE_CLIENT_ID", raising=False)
    reset_state()
    yield
    reset_state()


def test_defaults():
    config = conf.build_config(None, environ={})
    assert config.credential == "managed_identity"
    assert config.client_id is None
    assert config.cloud.name == "public"
    assert services.get("postgres").scope(config.cloud.name) == (
        "https://ossrdbms-aad.database.windows.net/.default"
    )
    assert services.get("redis").scope(config.cloud.name) == "https://redis.azure.com/.default"
    assert services.get("storage").scope(config.cloud.name) == "https://storage.azure.com/.default"
    assert services.get("keyvault").scope(config.cloud.name) == "https://vault.azure.net/.default"
    assert config.refresh_margin == 300
    assert config.token_cache_dir is None


def test_client_id_from_environment_and_setting_wins():
    assert conf.build_config({}, environ={"AZURE_CLIENT_ID": CLIENT_ID}).client_id == CLIENT_ID
    other = "99999999-2222-3333-4444-555555555555"
    assert conf.build_config({"CLIENT_ID": other}, environ={"AZURE_CLIENT_ID": CLIENT_ID}).client_id == other


@pytest.mark.parametrize("cloud", ["usgovernment", "china"])
def test_sovereign_clouds_have_their_own_hosts(cloud):
    config = conf.build_config({"CLOUD": cloud}, environ={})
    suffix = "usgovcloudapi.net" if cloud == "usgovernment" else "chinacloudapi.cn"
    assert services.get("postgres").scope(config.cloud.name).endswith(f"{suffix}/.default")
    assert "windows.net" not in services.get("keyvault").scope(config.cloud.name)


@pytest.mark.parametrize(
    ("raw", "must_mention"),
    [
        ("managed_identity", ["must be a dict"]),
        ({"CLIENTID": CLIENT_ID}, ["'CLIENTID'", "not a known key", "Did you mean 'CLIENT_ID'"]),
        ({"CREDENTIAL": "msi"}, ["['CREDENTIAL']", "'managed_identity'", "'workload_identity'", "'default'"]),
        ({"CREDENTIAL": 3}, ["['CREDENTIAL']", "dotted path"]),
        ({"CLIENT_ID": "my-identity"}, ["['CLIENT_ID']", "GUID", "az identity show"]),
        ({"CLOUD": "germany"}, ["['CLOUD']", "'public'", "'usgovernment'", "'china'"]),
        ({"REFRESH_MARGIN": "300"}, ["['REFRESH_MARGIN']", "seconds"]),
        ({"REFRESH_MARGIN": -1}, ["['REFRESH_MARGIN']"]),
        ({"REFRESH_MARGIN": True}, ["['REFRESH_MARGIN']"]),
        ({"IDLE_LIFETIMES": -1}, ["['IDLE_LIFETIMES']", "lifetimes"]),
        ({"IDLE_LIFETIMES": "2"}, ["['IDLE_LIFETIMES']"]),
        ({"TOKEN_CACHE_DIR": 5}, ["['TOKEN_CACHE_DIR']", "directory"]),
        ({"TIMEOUT": 0}, ["['TIMEOUT']", "seconds"]),
    ],
)
def test_bad_settings_raise_naming_the_key(raw, must_mention):
    with pytest.raises(ImproperlyConfigured) as info:
        conf.build_config(raw, environ={})
    message = str(info.value)
    assert "AZURE_MANAGED_IDENTITY" in message
    for text in must_mention:
        assert text in message


def test_bad_client_id_in_environment_names_the_variable():
    with pytest.raises(ImproperlyConfigured, match="AZURE_CLIENT_ID environment variable"):
        conf.build_config({}, environ={"AZURE_CLIENT_ID": "not-a-guid"})


def test_settings_are_read_through_django_and_reread_on_change(settings):
    settings.AZURE_MANAGED_IDENTITY = {"CLOUD": "china", "REFRESH_MARGIN": 120}
    assert runtime.get().config.cloud.name == "china"
    settings.AZURE_MANAGED_IDENTITY = {"CLOUD": "bogus"}
    with pytest.raises(ImproperlyConfigured, match="CLOUD"):
        runtime.get().config


def test_bad_credential_path_fails_on_first_use(settings, azure_imds):
    settings.AZURE_MANAGED_IDENTITY = {"CREDENTIAL": "tests.nowhere.make_credential"}
    with pytest.raises(ImproperlyConfigured, match=r"\['CREDENTIAL'\].*cannot be imported"):
        get_token_provider(STORAGE)


def make_not_a_credential():
    return object()


def test_credential_path_must_return_a_token_credential(settings, azure_imds):
    settings.AZURE_MANAGED_IDENTITY = {"CREDENTIAL": "tests.test_conf.make_not_a_credential"}
    with pytest.raises(ImproperlyConfigured, match="get_token"):
        get_token_provider(STORAGE)


def test_workload_identity_without_its_environment_says_what_is_missing(settings, monkeypatch, azure_imds):
    for name in ("AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    settings.AZURE_MANAGED_IDENTITY = {"CREDENTIAL": "workload_identity"}
    with pytest.raises(
        ImproperlyConfigured, match="AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID"
    ):
        get_token_provider(STORAGE)


def test_get_token_provider_rejects_a_bad_client_id(azure_imds):
    with pytest.raises(ImproperlyConfigured, match="client_id"):
        get_token_provider(STORAGE, client_id="app-identity")


def test_token_cache_dir_open_to_others_is_refused(settings, tmp_path, azure_imds):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    settings.AZURE_MANAGED_IDENTITY = {"TOKEN_CACHE_DIR": str(shared)}
    with pytest.raises(ImproperlyConfigured, match=r"TOKEN_CACHE_DIR.*chmod 700"):
        get_token_provider(STORAGE)


def test_token_cache_dir_is_created_private(settings, tmp_path, azure_imds):
    target = tmp_path / "tokens"
    settings.AZURE_MANAGED_IDENTITY = {"TOKEN_CACHE_DIR": str(target)}
    get_token_provider(STORAGE).get_token(STORAGE)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    files = [p for p in target.iterdir() if p.suffix == ".json"]
    assert len(files) == 1
    assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600


def test_our_backends_say_when_the_app_is_not_installed(caplog):
    """Without 'django_azure_mi' in INSTALLED_APPS our checks and azure_check are off: the first use says
    so, naming INSTALLED_APPS (a new user's PASSWORD passed `check` and failed only at connect)."""
    from django.test import override_settings

    from django_azure_mi import runtime

    with override_settings(INSTALLED_APPS=["django.contrib.contenttypes"]):
        runtime.reset()
        caplog.set_level("WARNING", logger="django_azure_mi")
        assert runtime.get().config  # what every backend reads first
    assert "Add 'django_azure_mi' to INSTALLED_APPS" in caplog.text
    caplog.clear()
    runtime.reset()
    assert runtime.get().config
    assert "INSTALLED_APPS" not in caplog.text
