"""A pytest plugin loaded into channels_redis's own test suite (``-p channels_overlay``, by
channels_suite.py): its layers go to the enforcing Redis stand-in instead of localhost:6379, as stock
channels_redis with an ACL password or as our layers with tokens, from ``CHANNELS_REDIS_SUITE`` in the
environment. The suite's modules construct ``RedisChannelLayer`` / ``RedisPubSubChannelLayer`` by their
module-level names, which are replaced after collection with subclasses that rewrite ``hosts``."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

_TARGET = json.loads(os.environ["CHANNELS_REDIS_SUITE"])


def rewrite(hosts: Any) -> list[dict[str, Any]]:
    """The suite's hosts (``redis://localhost:6379/N``, or none: channels_redis's default) on the stand-in,
    database N kept (Azure Managed Redis: 0)."""
    moved = []
    for host in hosts or ["redis://localhost:6379"]:
        db = (urlsplit(host).path.strip("/") or "0") if isinstance(host, str) else "0"
        moved.append({"address": f"{_TARGET['url']}/{'0' if _TARGET.get('amr') else db}",
                      "ssl_ca_certs": _TARGET["ca_file"]})  # fmt: skip
    return moved


def _layers() -> tuple[type, type]:
    if _TARGET["ours"]:
        from django.conf import settings

        if not settings.configured:
            settings.configure()
        from django_azure_mi.channels import RedisChannelLayer as Core
        from django_azure_mi.channels import RedisPubSubChannelLayer as PubSub
    else:
        from channels_redis.core import RedisChannelLayer as Core
        from channels_redis.pubsub import RedisPubSubChannelLayer as PubSub

    class CoreLayer(Core):  # type: ignore[misc,valid-type]
        def __init__(self, hosts: Any = None, **kwargs: Any) -> None:
            super().__init__(hosts=rewrite(hosts), **kwargs)

    class PubSubLayer(PubSub):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            hosts = args[0] if args else kwargs.pop("hosts", None)
            super().__init__(hosts=rewrite(hosts), **kwargs)

    return CoreLayer, PubSubLayer


def pytest_collection_modifyitems(items: list[Any]) -> None:
    core, pubsub = _layers()
    for module in {item.module for item in items if getattr(item, "module", None) is not None}:
        if hasattr(module, "RedisChannelLayer"):
            module.RedisChannelLayer = core
        if hasattr(module, "RedisPubSubChannelLayer"):
            module.RedisPubSubChannelLayer = pubsub
