"""What Azure's Redis must have for Celery's broker and result backend of ours
(:mod:`django_azure_mi.provision`): the same as a cache's
(:func:`~django_azure_mi.cache.provision.redis_steps`)."""

from __future__ import annotations

from ..options import OptionSpec
from ..provision import Plan


def provision(plan: Plan, name: str, found: list[tuple[str, str, str]], spec: OptionSpec) -> None:
    """The steps of each of Celery's Redis clients of ours, ``found`` as (the URL's setting, the URL, the
    options' setting), their identity option being ``spec``, as service ``name``."""
    from django.conf import settings

    from ..cache.auth import parse_options
    from ..cache.provision import redis_steps

    for setting, url, where in found:
        options = getattr(settings, where, None) or {}
        entra = parse_options(options.get("managed_identity"), where, spec, setting)
        redis_steps(plan, name, plan.identity(entra.binding.client_id), entra.username, [url], setting)
