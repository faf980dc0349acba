"""Liveness and readiness views against the stand-ins."""

from __future__ import annotations

import json
import types

import pytest

from django_azure_mi.testing.net import free_port
from django_azure_mi.views import ReadinessView

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
    assert [c["service"] for c in body["checks"]] == ["postgres", "redis", "storage", "keyvault"]
    assert all(c["ok"] for c in body["checks"])
    requests_before = azure_keyvault.requests
    again = client.get("/health/ready").json()
    assert again["cached"] is True and again["checked_at"] == body["checked_at"]
    assert azure_keyvault.requests == requests_before  # the cached answer made no calls
    for issued in azure_imds.issued:
        assert issued.token not in response.content.decode()


@pytest.mark.parametrize("broken", ["cache", "identity"])
def test_readiness_fails_with_503(site, rf, azure_redis, azure_imds, broken):  # noqa: F811
    if broken == "cache":
        settings = cache_settings(azure_redis, "builtin")
        settings["LOCATION"] = f"rediss://127.0.0.1:{free_port()}/0"
        site.CACHES = {"default": settings}
    else:  # no token cached yet and the identity endpoint is down
        site.AZURE_MANAGED_IDENTITY = {"TIMEOUT": 1}
        azure_imds.pause()
    response = ReadinessView.as_view(details=True)(rf.get("/health/ready"))
    assert response.status_code == 503
    body = json.loads(response.content)
    assert body["status"] == "fail"
    failed = [c for c in body["checks"] if not c["ok"]]
    assert failed and all(c["diagnosis"] for c in failed)
    if broken == "cache":
        assert [c["service"] for c in failed] == ["redis"]
        assert "unreachable" in failed[0]["diagnosis"]


def test_anonymous_callers_learn_which_service_failed_and_nothing_else(
    site,  # noqa: F811
    client,
    rf,
    azure_postgres,
    azure_imds,
    use_databases,
):
    """The readiness body once told any unauthenticated caller the Postgres role names, the identity's
    resource name and object ids (in each failed check's diagnosis). Now: status, and which service and
    alias failed; the diagnosis for staff users and ``details=True``."""
    use_databases(default=azure_postgres.database_settings("No-Such-Role"))
    response = client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert [(c["service"], c["alias"]) for c in body["checks"] if not c["ok"]] == [("postgres", "default")]
    text = response.content.decode()
    claims = __import__("jwt").decode(azure_imds.issued[0].token, options={"verify_signature": False})
    for secret in ("No-Such-Role", "app-system", claims["oid"], "diagnosis", "elapsed_ms"):
        assert secret not in text, secret
    request = rf.get("/health/ready")
    request.user = types.SimpleNamespace(is_authenticated=True, is_staff=True)  # a staff user
    detailed = ReadinessView.as_view()(request)
    failed = [c for c in json.loads(detailed.content)["checks"] if not c["ok"]]
    assert "No-Such-Role" in failed[0]["diagnosis"]
