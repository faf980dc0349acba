"""options.bind (the one validator of per-service option dicts) and the one TLS rule."""

from __future__ import annotations

import pytest

from django_azure_mi.backends.postgresql.config import SPEC as POSTGRES
from django_azure_mi.cache.auth import SPEC as REDIS
from django_azure_mi.diagnostics import SettingError
from django_azure_mi.options import bind, require_tls
from django_azure_mi.storage.backend import SPEC as STORAGE

from .conftest import CLIENT_ID


@pytest.mark.parametrize(
    ("spec", "key", "right", "check_id"),
    [(POSTGRES, "CLIENT_ID", "client_id", "E010"), (REDIS, "client_id", "CLIENT_ID", "E020"),
     (STORAGE, "Scope", "scope", "E031")],
)  # fmt: skip
def test_keys_take_the_casing_of_their_dict(spec, key, right, check_id):
    with pytest.raises(SettingError) as info:
        bind(spec, {key: CLIENT_ID}, "X['OPTIONS']")
    assert info.value.check_id == check_id
    assert f"unknown key {key!r} (in this dict it is spelled {right!r})" in str(info.value)
    assert info.value.problem.fix.startswith("allowed: ")


def test_a_binding_is_resolved_once_with_the_clouds_default_scope(settings):
    settings.AZURE_MANAGED_IDENTITY = {"CLOUD": "china"}
    binding = bind(REDIS, {"CLIENT_ID": CLIENT_ID, "USERNAME": "oid"}, "CACHES['x']['OPTIONS']")
    assert (binding.client_id, binding.scope) == (CLIENT_ID, "https://redis.azure.cn/.default")
    assert binding.values == {"username": "oid", "verify_tls": True}
    assert binding.where == "CACHES['x']['OPTIONS']['MANAGED_IDENTITY']"
    assert bind(POSTGRES, None, "D").values == {"enabled": True, "verify_tls": True}


def test_extra_keys_are_validated_with_the_services_check_id():
    with pytest.raises(SettingError, match=r"\['enabled'\] must be True or False") as info:
        bind(POSTGRES, {"enabled": "yes"}, "D")
    assert info.value.check_id == "E010"


@pytest.mark.parametrize(
    ("host", "tls", "allowed"),
    [("srv.postgres.database.azure.com", False, False), ("srv.postgres.database.azure.com", True, True),
     ("127.0.0.1", False, True), ("::1", False, True), ("[::1]", False, True), ("localhost", False, True),
     ("/var/run/postgresql", False, True), ("10.0.0.5", False, False), ("127.0.0.1.nip.io", False, False)],
)  # fmt: skip
def test_one_tls_rule(host, tls, allowed):
    if allowed:
        require_tls("E999", host, tls, "problem")
    else:
        with pytest.raises(SettingError, match="problem"):
            require_tls("E999", host, tls, "problem")


@pytest.mark.parametrize(
    ("url", "suggested"),
    [
        ("redis://cache.redis.cache.windows.net:6379/0", "rediss://cache.redis.cache.windows.net:6380/"),
        ("redis://cache.redis.cache.windows.net/0", "rediss://cache.redis.cache.windows.net:6380/"),
        ("redis://app.westeurope.redis.azure.net:6379/0", "rediss://app.westeurope.redis.azure.net:10000/"),
        ("redis://app.westeurope.redis.azure.net:10000/0", "rediss://app.westeurope.redis.azure.net:10000/"),
    ],
)
def test_a_plain_redis_url_is_told_the_tls_port(url, suggested):
    """E022's fix names the port Azure serves TLS on (6379 has none there; it used to be kept)."""
    from django_azure_mi.cache.auth import check_location
    from django_azure_mi.diagnostics import SettingError

    with pytest.raises(SettingError) as info:
        check_location(url)
    assert info.value.check_id == "E022" and suggested in str(info.value), str(info.value)


def test_an_http_account_url_is_told_to_use_https():
    from django_azure_mi.diagnostics import SettingError
    from django_azure_mi.storage import AzureManagedIdentityStorage

    with pytest.raises(SettingError) as info:
        AzureManagedIdentityStorage(account_url="http://acct.blob.core.windows.net", azure_container="media")
    assert info.value.check_id == "E032"
    assert "Use https://acct.blob.core.windows.net" in str(info.value), str(info.value)
