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
    """What Celery validates only when a worker builds our transport and backend, at ``check`` time: the
    URLs (a Redis URL, TLS, no credentials), no broker user or password, the ``managed_identity`` option
    (and a near miss of its name), the key prefix and cluster switch."""
    from django.conf import settings

    from ..checks import run_check

    found = configured(settings)
    if found and found[0][0] == "CELERY_BROKER_URL":
        for name in ("CELERY_BROKER_USER", "CELERY_BROKER_PASSWORD"):
            run_check(errors, name, _no_credential, getattr(settings, name, None), name)
    for url_setting, url, where in found:
        run_check(errors, url_setting, _url, url, url_setting)
        run_check(errors, where, _options, getattr(settings, where, None), where, url, url_setting)


def configured(settings: Any) -> list[tuple[str, str, str]]:
    """(the URL's setting, the URL, the options' setting) of the broker and the result backend on ours."""
    found = []
    if getattr(settings, "CELERY_BROKER_TRANSPORT", None) == TRANSPORT:
        url = getattr(settings, "CELERY_BROKER_URL", None) or ""
        found.append(("CELERY_BROKER_URL", url, "CELERY_BROKER_TRANSPORT_OPTIONS"))
    backend = getattr(settings, "CELERY_RESULT_BACKEND", None)
    if isinstance(backend, str) and backend.startswith(f"{BACKEND}+"):
        found.append(
            ("CELERY_RESULT_BACKEND", backend.split("+", 1)[1], "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS")
        )
    return found


def _url(url: Any, where: str) -> None:
    from ..cache.auth import check_location
    from ..diagnostics import SettingError

    if not isinstance(url, str) or "://" not in url:
        raise SettingError(
            "E051",
            f"{where} is {url!r}, not a Redis URL.",
            "Use rediss://<name>.redis.cache.windows.net:6380/0 (Azure Managed Redis: port 10000).",
        )
    check_location(url, where)


def _no_credential(value: Any, where: str) -> None:
    from ..diagnostics import SettingError

    if value:
        raise SettingError(
            "E050",
            f"{where} is set while the broker signs in with a managed identity.",
            "Remove it: the identity's object id and token are sent instead.",
        )


def _options(options: Any, where: str, url: str, url_setting: str) -> None:
    from ..cache.auth import parse_options
    from ..cache.slots import pinned_slot
    from ..options import refuse_near_miss
    from . import SPEC

    if not isinstance(options, dict):
        return
    refuse_near_miss(options, "managed_identity", where, SPEC.check_id)
    parse_options(options.get("managed_identity"), where, SPEC, url_setting)
    pinned_slot(options, where, url)


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
    import redis

    from ..cache import get_auth
    from ..cache.service import probe_client

    with _app().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.default_channel
        transport = connection.transport
        client = redis.Redis(connection_pool=channel.pool)  # kombu's Client prefixes SET but not GET
        result.details["url"] = connection.as_uri()
        settings = transport.entra_settings
        probe_client(result, get_auth(settings), client, deep, settings, key_prefix=transport.entra_prefix)


def probe_results(result: Any, deep: bool) -> None:
    from ..cache import get_auth
    from ..cache.service import probe_client

    backend = _app().backend
    settings = backend.entra_settings
    probe_client(result, get_auth(settings), backend.client, deep, settings, key_prefix=backend.entra_prefix)


CHECK_IDS: Final = (
    CheckId(
        "E050",
        "Celery's `managed_identity` transport option malformed, or a user/password set for the "
        "broker or result backend",
    ),
    CheckId("E051", "`CELERY_BROKER_URL` is not a Redis URL"),
    CheckId(
        "E052",
        "Celery's `global_keyprefix` has no hash tag while its Redis may be sharded (Azure Managed Redis)",
    ),
)


def provision(plan: Any) -> None:
    """What Azure must have for it (``azure_setup``): .provision."""
    from django.conf import settings

    from . import SPEC
    from .provision import provision as steps

    steps(plan, NAME, configured(settings), SPEC)


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
    provision=provision,
)
