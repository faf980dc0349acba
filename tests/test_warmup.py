"""Warm-up: each configured service's token (and first connections) before the first request."""

from __future__ import annotations

import time
import uuid

import pytest
from django.apps import apps
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import storages

from django_azure_mi import get_token_provider
from django_azure_mi.warmup import warm_up

from .conftest import in_child

RESOURCES = {
    "postgres": "https://ossrdbms-aad.database.windows.net",
    "redis": "https://redis.azure.com",
    "storage": "https://storage.azure.com",
}


@pytest.fixture
def services(azure_postgres, azure_redis, azure_storage, use_databases, settings):
    """A database (Django's pool), a django-redis cache and a storage, all on the stand-ins."""
    pool = {"pool": {"min_size": 1, "max_size": 2}}
    use_databases(default=azure_postgres.database_settings("app-identity", OPTIONS=pool))
    settings.CACHES = {"default": azure_redis.cache_settings()}
    container = f"c{uuid.uuid4().hex[:12]}"
    settings.STORAGES = {"default": azure_storage.storage_settings(container)}
    storages["default"].client.create_container()


def test_warm_up_fetches_each_token_and_opens_the_first_connections(services, azure_imds, azure_redis):
    result = warm_up(wait=True)
    assert result.done.is_set() and result.errors == {}
    assert set(result.tokens) == {"postgres 'default'", "redis 'default'", "storage 'default'"}
    before = {service: azure_imds.request_count(resource) for service, resource in RESOURCES.items()}
    assert before == {"postgres": 1, "redis": 1, "storage": 1}
    assert azure_redis.client_count >= 1  # a connection waits in the cache's pool
    # the first "request": no identity-endpoint call, no new Redis connection
    clients = azure_redis.client_count
    caches["default"].set("greeting", "hi")
    from django.db import connections

    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
    storages["default"].exists("nothing.txt")
    assert {service: azure_imds.request_count(resource) for service, resource in RESOURCES.items()} == before
    assert azure_redis.client_count == clients


def test_tokens_only_at_app_ready_then_inherited_by_a_forked_worker(services, azure_imds, settings):
    """WARM_UP="tokens" (a gunicorn --preload master): the app's ready() fetches the tokens in the
    background; a worker forked afterwards uses them and asks the identity endpoint nothing."""
    settings.AZURE_MANAGED_IDENTITY = {"WARM_UP": "tokens"}  # a new runtime: no token yet
    start = {r: azure_imds.request_count(r) for r in RESOURCES.values()}
    apps.get_app_config("django_azure_mi").warm_up()
    deadline = time.time() + 10
    while time.time() < deadline and any(azure_imds.request_count(r) == start[r] for r in start):
        time.sleep(0.05)
    time.sleep(0.2)
    assert {r: azure_imds.request_count(r) - start[r] for r in start} == dict.fromkeys(start, 1)
    before = sum(azure_imds.request_count(r) for r in RESOURCES.values())

    def worker() -> dict:
        for resource in RESOURCES.values():
            get_token_provider(f"{resource}/.default").get_token(f"{resource}/.default")
        return {}

    assert in_child(worker)["ok"]
    assert sum(azure_imds.request_count(r) for r in RESOURCES.values()) == before


def test_a_failed_warm_up_is_a_log_line(services, azure_imds, caplog):
    from django_azure_mi.testing.imds import Fault

    azure_imds.fail_always(Fault.error(500))
    result = warm_up(wait=True, timeout=2)
    # (the storage token was fetched before the outage, when the fixture created the container)
    assert {"postgres 'default'", "redis 'default'"} <= set(result.errors)
    assert "warm-up:" in caplog.text and "failed" in caplog.text


def test_warm_up_setting_is_checked():
    from django_azure_mi import conf

    with pytest.raises(ImproperlyConfigured, match=r"\['WARM_UP'\].*\"tokens\""):
        conf.build_config({"WARM_UP": "yes"}, environ={})
