"""What Azure's Redis must have for each channel layer of ours (:mod:`django_azure_mi.provision`): the same
as a cache's (:func:`~django_azure_mi.cache.provision.redis_steps`), for every host of the layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..provision import Plan


def provision(plan: Plan, name: str, option: str, ours: Callable[[Any], bool]) -> None:
    """The steps of every layer that is ``ours``, its identity in ``CONFIG[option]``, as ``name``."""
    from channels_redis.utils import decode_hosts
    from django.conf import settings

    from ..cache.auth import parse_options
    from ..cache.provision import redis_steps

    for alias, entry in (getattr(settings, "CHANNEL_LAYERS", None) or {}).items():
        if not ours(entry):
            continue
        config = entry.get("CONFIG") or {}
        where = f"CHANNEL_LAYERS[{alias!r}]"
        entra = parse_options(config.get(option), f"{where}['CONFIG']", url_setting=f"{where}['CONFIG']")
        hosts = [host.get("address", "") for host in decode_hosts(config.get("hosts"))]
        redis_steps(plan, name, plan.identity(entra.binding.client_id), entra.username, hosts, where)
