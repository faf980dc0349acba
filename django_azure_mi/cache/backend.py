"""Django's built-in ``RedisCache`` signing in with Entra tokens."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient

from ..diagnostics import SettingError
from ..options import alias_of, split_locations
from .auth import (
    OPTION,
    EntraSettings,
    check_location,
    check_url_transport,
    parse_options,
    refuse_credentials,
)
from .cluster import cluster_choice, cluster_client_like, is_cluster
from .connection import pool_class


def validate(location: Any, params: dict[str, Any]) -> tuple[EntraSettings, dict[str, Any]]:
    """The backend's checks (also run by the system checks): no network, no credential. Returns the
    settings and the OPTIONS to hand to Django's backend (without ours)."""
    where = f"{alias_of('CACHES', params.get('OPTIONS'))}['OPTIONS']"
    options = dict(params.get("OPTIONS") or {})
    refuse_credentials(options, ("password", "username"), where)
    settings = parse_options(options.pop(OPTION, None), where)
    raw_cluster = options.pop("cluster", None)
    cluster = cluster_choice(raw_cluster, f"{where}['cluster']", next(iter(split_locations(location)), ""))
    options["cluster"] = cluster
    options["pool_class"] = pool_class(options.get("pool_class"), f"{where}['pool_class']")
    for url in split_locations(location):
        check_location(url, where.replace("['OPTIONS']", "['LOCATION']"))
        pool_kwargs = {
            k: v
            for k, v in options.items()
            if k not in ("pool_class", "parser_class", "serializer", "cluster")
        }
        check_url_transport(url, pool_kwargs, settings, where)
    return settings, options


class RedisCache(DjangoRedisCache):
    """Django's ``django.core.cache.backends.redis.RedisCache`` signing in with Entra tokens.

    A misconfiguration is raised on first use, not by the constructor: Django's own system checks build
    every configured cache (``check_file_based_cache_is_absolute``), and ``manage.py check`` must report
    our error (the same one, with its id), not die with a traceback."""

    _invalid: SettingError | None = None

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        try:
            settings, options = validate(server, params)
        except SettingError as exc:
            self._invalid = exc
            super().__init__(server, {**params, "OPTIONS": {}})
            return
        options["entra_settings"] = settings
        super().__init__(server, {**params, "OPTIONS": options})
        self._class = EntraCacheClient

    @cached_property
    def _cache(self) -> Any:
        if self._invalid is not None:
            raise self._invalid.with_traceback(None)
        return super()._cache


class EntraCacheClient(RedisCacheClient):
    """Django's cache client on every Redis we support: a single server (Azure Cache for Redis, Azure
    Managed Redis non-clustered), AMR's Enterprise clustering policy (one proxy endpoint: no transaction
    may span slots) and its OSS policy (a cluster client: :func:`~.cluster.cluster_client`).

    ``set_many`` sends one ``SET key value EX timeout`` per key in a pipeline without MULTI (Django's runs
    MSET and EXPIREs in MULTI, which a sharded Redis refuses across slots): each key is set with its
    timeout atomically, the keys together are not - as on any sharded store."""

    # Django's client's own attributes (untyped in django-stubs)
    _servers: list[str]
    _pool_options: dict[str, Any]
    _serializer: Any
    _get_connection_pool: Callable[[bool], Any]

    def __init__(self, servers: list[str], *, cluster: bool | None = None, **options: Any) -> None:
        super().__init__(servers, **options)
        self._cluster_choice = cluster
        self._cluster_lock = threading.Lock()

    @cached_property
    def _cluster(self) -> Any:
        """The cluster client when the endpoint is a cluster (``cluster`` True, or None and the endpoint
        says so), else None."""
        with self._cluster_lock:
            choice = self._cluster_choice
            if choice is None:
                choice = is_cluster(self._get_connection_pool(True))
            if not choice:
                return None
            options = self._pool_options
            return cluster_client_like(self._servers[0], options["entra_settings"], options)

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        cluster = self._cluster
        return cluster if cluster is not None else super().get_client(key, write=write)

    def get_many(self, keys: Any) -> dict[Any, Any]:
        cluster = self._cluster
        if cluster is None:
            return super().get_many(keys)
        values = cluster.mget_nonatomic(keys)
        return {k: self._serializer.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def set_many(self, data: Mapping[Any, Any], timeout: Any) -> None:
        client = self.get_client(None, write=True)
        pipeline = client.pipeline(transaction=False)
        for key, value in data.items():
            if timeout == 0:
                pipeline.delete(key)
            else:
                pipeline.set(key, self._serializer.dumps(value), ex=timeout)
        pipeline.execute()
