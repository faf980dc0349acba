"""django-redis ``CONNECTION_FACTORY``: pools of Entra-authenticated connections."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from .. import runtime
from ..diagnostics import SettingError
from ..options import alias_of
from .auth import (
    OPTION,
    WHERE,
    EntraSettings,
    UsesEntra,
    check_location,
    check_url_transport,
    parse_options,
    refuse_credentials,
)
from .cluster import NoMulti, cluster_choice, cluster_client_like, is_cluster
from .connection import pool_class

try:
    from django_redis.pool import ConnectionFactory as _DjangoRedisFactory
except ImportError:  # pragma: no cover - django-redis is optional
    _DjangoRedisFactory = object


class Pools:
    """The factory's pools, apart from django-redis's (keyed by URL only): a runtime component."""

    def __init__(self) -> None:
        self.pools: dict[tuple[Any, ...], Any] = {}

    def close(self) -> None:
        pools = list(self.pools.values())
        self.pools.clear()
        for pool in pools:  # a pool, or a cluster client (its node pools)
            (pool.disconnect if hasattr(pool, "disconnect") else pool.close)()


def validate(options: dict[str, Any], where: str = WHERE) -> EntraSettings:
    """The factory's OPTIONS checks (also run by the system checks): no network, no credential."""
    if _DjangoRedisFactory is object:
        raise SettingError(
            "E025", "EntraConnectionFactory needs django-redis:", "pip install 'django-azure-mi[redis]'"
        )
    refuse_credentials(options, ("PASSWORD", "USERNAME"), where)
    pool_class(options.get("CONNECTION_POOL_CLASS"), f"{where}['CONNECTION_POOL_CLASS']")
    cluster_choice(options.get("CLUSTER"), f"{where}['CLUSTER']")
    return parse_options(options.get(OPTION), where)


def validate_url(url: str, options: dict[str, Any], settings: EntraSettings) -> None:
    """A LOCATION URL with the pool kwargs it will get (also run by the system checks)."""
    where = settings.where
    check_location(url, where.replace("['OPTIONS']", "['LOCATION']"))
    check_url_transport(url, dict(options.get("CONNECTION_POOL_KWARGS") or {}), settings, where)


class EntraConnectionFactory(UsesEntra, _DjangoRedisFactory):  # type: ignore[misc]
    """django-redis ``CONNECTION_FACTORY``: pools of Entra-authenticated connections."""

    def __init__(self, options: dict[str, Any]) -> None:
        where = f"{alias_of('CACHES', options)}['OPTIONS']"
        settings = validate(options, where)
        super().__init__(options)
        self.pool_cls = pool_class(options.get("CONNECTION_POOL_CLASS"), f"{where}['CONNECTION_POOL_CLASS']")
        self.entra_settings = settings

    def make_connection_params(self, url: str) -> dict[str, Any]:
        validate_url(url, self.options, self.entra_settings)
        params: dict[str, Any] = super().make_connection_params(url)
        params["entra_settings"] = self.entra_settings
        return params

    def connect(self, url: str) -> Any:
        """A client for ``url``: a cluster client when the endpoint is a cluster (``OPTIONS['CLUSTER']``, or
        asked once), else django-redis's client on our pool."""
        params = self.make_connection_params(url)
        choice = cluster_choice(self.options.get("CLUSTER"), "", url)
        if choice is False:
            return self.get_connection(params)
        pools = runtime.get().component("redis-pools", Pools).pools
        key = ("cluster", params["url"], self.entra_settings)
        client = pools.get(key)
        if client is not None:
            return client
        if choice is None and not self._asks_cluster(params):
            return self.get_connection(params)
        options = {**params, **self.pool_cls_kwargs}
        client = pools[key] = cluster_client_like(params["url"], self.entra_settings, options)
        return client

    def _asks_cluster(self, params: dict[str, Any]) -> bool:
        """Whether the endpoint is a cluster. If it can't be asked, the error is django-redis's
        ConnectionInterrupted (IGNORE_EXCEPTIONS applies), and the next use asks again."""
        from django_redis.exceptions import ConnectionInterrupted
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return is_cluster(self.get_or_create_connection_pool(params))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise ConnectionInterrupted(connection=None) from exc

    def get_or_create_connection_pool(self, params: dict[str, Any]) -> Any:
        pools = runtime.get().component("redis-pools", Pools).pools
        key = (params["url"], self.entra_settings)
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = self.get_connection_pool(params)
        return pool

    def get_connection_pool(self, params: dict[str, Any]) -> Any:
        return self.pool_cls.from_url(**{**params, **self.pool_cls_kwargs})


try:
    from django_redis.client import DefaultClient as _DefaultClient
except ImportError:  # pragma: no cover - django-redis is optional
    _DefaultClient = object


class EntraClient(_DefaultClient):  # type: ignore[misc]
    """django-redis ``CLIENT_CLASS`` for every Azure Redis: django-redis's own client, except that
    ``set_many`` and ``delete_pattern`` pipeline without MULTI and ``get_many`` reads across slots, which a
    sharded Redis (Azure Managed Redis, OSS and Enterprise clustering policies) requires."""

    def set_many(
        self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None, client: Any = None
    ) -> None:
        return super().set_many(data, timeout, version, NoMulti(client or self.get_client(write=True)))  # type: ignore[no-any-return]

    def delete_pattern(
        self, pattern: str, version: Any = None, prefix: Any = None, client: Any = None, itersize: Any = None
    ) -> int:
        client = NoMulti(client or self.get_client(write=True))
        return super().delete_pattern(pattern, version, prefix, client, itersize)  # type: ignore[no-any-return]

    def get_many(self, keys: Any, version: Any = None, client: Any = None) -> dict[Any, Any]:
        return super().get_many(keys, version, NoMulti(client or self.get_client(write=False)))  # type: ignore[no-any-return]
