"""Celery (its broker and result backend on Redis) as a service of django-azure-mi
(:mod:`django_azure_mi.services`): found in Django's settings (namespace ``CELERY``, as Celery's Django guide
sets it up), probed as a Redis client of ours. Its tokens are the cache's (the Redis scopes). Not part of
readiness or warm-up: a web process's health does not hang on the task queue."""

from __future__ import annotations

from typing import Any, Final

from ..cache.diagnosis import diagnose
from ..cache.service import summary
from ..services import Argument, CheckId, Selection, Service, Target

NAME: Final = "celery"
TRANSPORT: Final = "django_azure_mi.celery.transport:Transport"  # as in the package, without importing it
BACKEND: Final = "django_azure_mi.celery.backend:RedisBackend"


def check(errors: list[Any]) -> None:
    """Nothing static: the transport and the backend validate their options when Celery builds them."""


def targets(selection: Selection) -> list[Target]:
    from django.conf import settings

    if not selection.wants("celery"):
        return []
    found: list[Target] = []
    if getattr(settings, "CELERY_BROKER_TRANSPORT", None) == TRANSPORT:
        found.append(Target(NAME, "CELERY_BROKER_URL", "CELERY_BROKER_URL", probe_broker))
    backend = getattr(settings, "CELERY_RESULT_BACKEND", None)
    if isinstance(backend, str) and backend.startswith(f"{BACKEND}+"):
        found.append(Target(NAME, "CELERY_RESULT_BACKEND", "CELERY_RESULT_BACKEND", probe_results))
    if found:
        # Celery's package loads its names lazily, and two probe threads importing it at once can see it
        # half-built ("cannot import name 'Celery'"): import it here, before the probes run in parallel.
        from celery import Celery  # noqa: F401
    return found


def _app() -> Any:
    from celery import Celery

    app = Celery("azure_check", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    return app


def probe_broker(result: Any, deep: bool) -> None:
    from ..cache import get_auth
    from ..cache.service import probe_client

    with _app().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.default_channel
        settings = connection.transport.entra_settings
        client = channel.Client(connection_pool=channel.pool)
        result.details["url"] = connection.as_uri()
        probe_client(result, get_auth(settings), client, deep, settings)


def probe_results(result: Any, deep: bool) -> None:
    from ..cache import get_auth
    from ..cache.service import probe_client

    backend = _app().backend
    settings = backend.entra_settings
    probe_client(result, get_auth(settings), backend.client, deep, settings)


CHECK_IDS: Final = (
    CheckId(
        "E050",
        "Celery's `managed_identity` transport option malformed, or a user/password set for the "
        "broker or result backend",
    ),
    CheckId("E051", "`CELERY_BROKER_URL` is not a Redis URL"),
)


SERVICE: Final = Service(
    name=NAME,
    check_ids=CHECK_IDS,
    title="Celery",
    extra="celery",
    scope_of="redis",
    check=check,
    targets=targets,
    summary=summary,
    diagnose=diagnose,
    arguments=(Argument("celery", "only Celery's broker and result backend (CELERY_* settings)"),),
    purposes=frozenset({"check"}),
)
