"""Celery on Entra-only Redis: a kombu transport (broker) and a result backend that sign in with the managed
identity's tokens and re-AUTH before expiry, on the same token core and runtime as the cache.

Settings (Django settings with ``app.config_from_object("django.conf:settings", namespace="CELERY")``)::

    CELERY_BROKER_URL = "rediss://<name>.redis.cache.windows.net:6380/0"
    CELERY_BROKER_TRANSPORT = "django_azure_mi.celery.transport:Transport"
    CELERY_RESULT_BACKEND = "django_azure_mi.celery.backend:RedisBackend+rediss://<name>.redis.cache.windows.net:6380/1"
    # optional, in either or both transport options:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"managed_identity": {"username": "<object id>", "client_id": "…"}}

Nothing is patched: these are kombu's and Celery's own extension points (a transport class named by
``broker_transport``, a backend class named in ``result_backend``).
"""

from __future__ import annotations

from typing import Final

from ..cache.spec import SPEC as _CACHE_SPEC
from ..options import OptionSpec
from .service import BACKEND, TRANSPORT


def result_backend(url: str) -> str:
    """``CELERY_RESULT_BACKEND`` for ``url``: ``"django_azure_mi.celery.backend:RedisBackend+" + url``."""
    return f"{BACKEND}+{url}"


# The transport options' identity dict: the cache's keys (a Redis identity, its scope), spelled in lower
# case as the dict it sits in, with its own check id.
SPEC: Final = OptionSpec(
    _CACHE_SPEC.service,
    "managed_identity",
    "E050",
    "{'username': '<object id of the identity>'}",
    extra=_CACHE_SPEC.extra,
)

__all__ = ["BACKEND", "SPEC", "TRANSPORT", "result_backend"]
