"""redis-py clients for code that is not a cache (django-rq/RQ, celery-redbeat, your own), signing in with
the managed identity and re-AUTHed before expiry on the same runtime and schedule as the caches.

    from django_azure_mi.cache import redis_client

    client = redis_client("default")            # CACHES['default']'s Redis, the cache's own pool
    client = redis_client(url="rediss://app.westeurope.redis.azure.net:10000/0",
                          managed_identity={"USERNAME": "<object id>"}, ssl_ca_certs=None)

On Azure Managed Redis's OSS clustering policy the client is a ``redis.RedisCluster`` (every node's
connections sign in and re-AUTH); elsewhere a ``redis.Redis``. What a cluster (or AMR's Enterprise proxy)
refuses still applies: a library that runs transactions over keys in several hash slots (RQ does) works
on Azure Cache for Redis and AMR's Non-clustered policy only.
"""

from __future__ import annotations

from typing import Any, Final

import redis
import redis.asyncio

from ..diagnostics import SettingError
from .auth import check_location, check_url_transport, parse_options
from .cluster import cluster_choice, cluster_client, is_cluster
from .connection import EntraConnectionPool

WHERE: Final = "redis_client(…)"


def redis_client(
    alias: str | None = None,
    *,
    url: str | None = None,
    managed_identity: dict[str, Any] | None = None,
    cluster: bool | str | None = None,
    **options: Any,
) -> Any:
    """A redis-py client signing in with the managed identity (see the module docstring).

    ``alias``: a ``CACHES`` entry of ours (django-redis with our factory, or our RedisCache); the client
    shares that cache's connections and cluster detection. Or ``url`` (``rediss://…``) with
    ``managed_identity`` (the cache option's keys: ``USERNAME``, ``CLIENT_ID``, ``SCOPE``, ``VERIFY_TLS``),
    ``cluster`` (True, False or "auto"; absent: "auto" on ``*.redis.azure.net``) and redis-py's
    connection options (``ssl_ca_certs``, ``socket_timeout``, ``decode_responses``…). Credentials in the
    URL or the options, and tokens over unverified TLS off loopback, are refused as in ``CACHES``."""
    if (alias is None) == (url is None):
        raise TypeError("redis_client() takes a CACHES alias or url=…, not both")
    if alias is not None:
        if managed_identity is not None or cluster is not None or options:
            raise TypeError("redis_client(alias) takes its settings from CACHES[alias]")
        return _from_cache(alias)
    assert url is not None
    settings = _checked(url, managed_identity, options, WHERE)
    choice = cluster_choice(cluster, "redis_client(cluster=…)", url)
    pool = None
    if choice is None or choice is False:
        pool = EntraConnectionPool.from_url(url, entra_settings=settings, **options)
        if choice is False or not is_cluster(pool):
            return redis.Redis(connection_pool=pool)
        pool.disconnect()
    return cluster_client(url, settings, **options)


def aredis_client(
    *, url: str, managed_identity: dict[str, Any] | None = None, **options: Any
) -> redis.asyncio.Redis:
    """A redis-py asyncio client for ``url`` signing in with the managed identity: the same options and
    refusals as :func:`redis_client`'s ``url=…`` form, connections that AUTH without blocking the event loop
    and re-AUTH before expiry on the loop (:mod:`.aio`). One endpoint: Azure Cache for Redis, Azure Managed
    Redis's Enterprise and Non-clustered policies. Like any asyncio client, use it on one event loop."""
    from .aio import AsyncEntraConnectionPool

    where = "aredis_client(…)"
    settings = _checked(url, managed_identity, options, where)
    return redis.asyncio.Redis(
        connection_pool=AsyncEntraConnectionPool.from_url(url, entra_settings=settings, **options)
    )


def _checked(url: str, managed_identity: dict[str, Any] | None, options: dict[str, Any], where: str) -> Any:
    """The identity option of a client built from a URL, after refusing credentials and applying the TLS
    rule to what redis-py will connect to."""
    for key in ("password", "username", "credential_provider"):
        if options.get(key):
            raise SettingError(
                "E021",
                f"{where} was given {key}= while it signs in with a managed identity.",
                "Remove it; give the identity's object id as managed_identity={'USERNAME': …} if needed.",
            )
    url_setting = f"{where.removesuffix('(…)')}(url=…)"
    settings = parse_options(managed_identity, where, url_setting=url_setting)
    check_location(url, url_setting)
    check_url_transport(url, options, settings, where)
    return settings


def _from_cache(alias: str) -> Any:
    from django.core.cache import caches

    from .backend import RedisCache
    from .factory import EntraConnectionFactory

    cache: Any = caches[alias]
    if isinstance(cache, RedisCache):
        return cache._cache.get_client(None, write=True)
    factory = getattr(getattr(cache, "client", None), "connection_factory", None)
    if isinstance(factory, EntraConnectionFactory):
        return cache.client.get_client(write=True)
    raise SettingError(
        "E024",
        f"redis_client({alias!r}): CACHES[{alias!r}] does not sign in with a managed identity.",
        "Use BACKEND 'django_azure_mi.cache.RedisCache', or django-redis with 'CONNECTION_FACTORY': "
        "'django_azure_mi.cache.EntraConnectionFactory'; or pass url=… instead of the alias.",
    )


__all__ = ["aredis_client", "redis_client"]
