"""Redis with Microsoft Entra ID tokens: a django-redis connection factory and a backend for Django's
built-in RedisCache.

    CACHES = {"default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "rediss://cache.redis.cache.windows.net:6380/0",
        "OPTIONS": {"CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory",
                    "MANAGED_IDENTITY": {"USERNAME": "<object id>"}},   # + CLIENT_ID, SCOPE
    }}
    # or "BACKEND": "django_azure_mi.cache.RedisCache" with the same "MANAGED_IDENTITY" option.

``auth`` (identity, user name, re-AUTH schedule), ``connection`` (redis-py connections and pools that AUTH
and re-AUTH), ``factory`` (django-redis), ``backend`` (Django's RedisCache). This works for any number of
pools per identity (Django's RedisCache makes one per thread), which redis-py's own
``StreamingCredentialProvider`` (one ``on_next`` callback) does not. A connection the server closed anyway is
replaced transparently (retries on ConnectionError).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..services import lazy_exports

if TYPE_CHECKING:
    from .aio import AsyncEntraConnectionMixin, AsyncEntraConnectionPool, async_entra_connection_class
    from .auth import OPTION, EntraAuth, EntraSettings, check_location, get_auth, parse_options
    from .backend import RedisCache
    from .clients import aredis_client, redis_client
    from .cluster import cluster_client
    from .connection import EntraConnectionMixin, EntraConnectionPool, entra_connection_class
    from .factory import EntraClient, EntraConnectionFactory

# Loaded on first use, so that the package's light modules (service.py, spec.py) import without redis-py.
_LAZY = {
    "OPTION": "spec",
    "AsyncEntraConnectionMixin": "aio",
    "AsyncEntraConnectionPool": "aio",
    "async_entra_connection_class": "aio",
    "aredis_client": "clients",
    "EntraAuth": "auth",
    "EntraSettings": "auth",
    "check_location": "auth",
    "get_auth": "auth",
    "parse_options": "auth",
    "RedisCache": "backend",
    "cluster_client": "cluster",
    "redis_client": "clients",
    "EntraConnectionMixin": "connection",
    "EntraConnectionPool": "connection",
    "entra_connection_class": "connection",
    "EntraClient": "factory",
    "EntraConnectionFactory": "factory",
}


__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "OPTION",
    "AsyncEntraConnectionMixin",
    "AsyncEntraConnectionPool",
    "EntraAuth",
    "EntraClient",
    "EntraConnectionFactory",
    "EntraConnectionMixin",
    "EntraConnectionPool",
    "EntraSettings",
    "RedisCache",
    "aredis_client",
    "async_entra_connection_class",
    "check_location",
    "cluster_client",
    "entra_connection_class",
    "get_auth",
    "parse_options",
    "redis_client",
]
