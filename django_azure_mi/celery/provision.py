"""What Azure's Redis must have for Celery's broker and result backend of ours
(:mod:`django_azure_mi.provision`): the same as a cache's
(:func:`~django_azure_mi.cache.provision.redis_steps`)."""

from __future__ import annotations

from ..options import OptionSpec
from ..provision import Plan


def provision(plan: Plan, name: str, transport: str, backend_path: str, spec: OptionSpec) -> None:
    """The steps of the broker on ``transport`` and the result backend ``backend_path`` (their identity
    option: ``spec``), as ``name``."""
    from django.conf import settings

    from ..cache.auth import parse_options
    from ..cache.provision import redis_steps

    found = []
    if getattr(settings, "CELERY_BROKER_TRANSPORT", None) == transport:
        url = getattr(settings, "CELERY_BROKER_URL", None) or ""
        found.append(("CELERY_BROKER_URL", url, "CELERY_BROKER_TRANSPORT_OPTIONS"))
    backend = getattr(settings, "CELERY_RESULT_BACKEND", None)
    if isinstance(backend, str) and backend.startswith(f"{backend_path}+"):
        url = backend.split("+", 1)[1]
        found.append(("CELERY_RESULT_BACKEND", url, "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS"))
    for setting, url, where in found:
        options = getattr(settings, where, None) or {}
        entra = parse_options(options.get("managed_identity"), where, spec, setting)
        redis_steps(plan, name, plan.identity(entra.binding.client_id), entra.username, [url], setting)
