"""Liveness and readiness views against the stand-ins."""

from __future__ import annotations

import pytest

from django_azure_mi.testing.postgres import free_port

from .test_azure_check import site  # noqa: F401 - the fixture
from .test_cache import cache_settings


def test_liveness(client):
    response = client.get("/health/live")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_readiness_ok_then_cached(site, client, azure_imds, azure_keyvault):  # noqa: F811
    response = client.get("/health/ready")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok" and body["cached"] is False
    assert [c["service"] for c in body["checks"]] == ["database", "cache", "storage", "keyvault"]
    assert all(c["ok"] for c in body["checks"])
    requests_before = azure_keyvault.requests
    again = client.get("/health/ready").json()
    assert again["cached"] is True and again["checked_at"] == body["checked_at"]
    assert azure_keyvault.requests == requests_before  # the cached answer made no calls
    for issued in azure_imds.issued:
        assert issued.token not in response.content.decode()


@pytest.mark.parametrize("broken", ["cache", "identity"])
def test_readiness_fails_with_503(site, client, azure_redis, azure_imds, broken):  # noqa: F811
    if broken == "cache":
        settings = cache_settings(azure_redis, "builtin")
        settings["LOCATION"] = f"rediss://127.0.0.1:{free_port()}/0"
        site.CACHES = {"default": settings}
    else:  # no token cached yet and the identity endpoint is down
        site.AZURE_MANAGED_IDENTITY = {"TIMEOUT": 1}
        azure_imds.pause()
    response = client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    failed = [c for c in body["checks"] if not c["ok"]]
    assert failed and all(c["diagnosis"] for c in failed)
    if broken == "cache":
        assert [c["service"] for c in failed] == ["cache"]
        assert "unreachable" in failed[0]["diagnosis"]
