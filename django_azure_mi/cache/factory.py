"""django-redis ``CONNECTION_FACTORY``: pools of Entra-authenticated connections."""

from __future__ import annotations

from typing import Any

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
from .connection import pool_class

try:
    from django_redis.pool import ConnectionFactory as _DjangoRedisFactory
except ImportError:  # pragma: no cover - django-redis is optional
    _DjangoRedisFactory = object


class Pools:
    """The factory's pools, apart from django-redis's (keyed by URL only): a runtime component."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, EntraSettings], Any] = {}

    def close(self) -> None:
        pools = list(self.pools.values())
        self.pools.clear()
        for pool in pools:
            pool.disconnect()


def validate(options: dict[str, Any], where: str = WHERE) -> EntraSettings:
    """The factory's OPTIONS checks (also run by the system checks): no network, no credential."""
    if _DjangoRedisFactory is object:
        raise SettingError(
            "E025", "EntraConnectionFactory needs django-redis:", "pip install 'django-azure-mi[redis]'"
        )
    refuse_credentials(options, ("PASSWORD", "USERNAME"), where)
    pool_class(options.get("CONNECTION_POOL_CLASS"), f"{where}['CONNECTION_POOL_CLASS']")
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

    def get_or_create_connection_pool(self, params: dict[str, Any]) -> Any:
        pools = runtime.get().component("redis-pools", Pools).pools
        key = (params["url"], self.entra_settings)
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = self.get_connection_pool(params)
        return pool

    def get_connection_pool(self, params: dict[str, Any]) -> Any:
        return self.pool_cls.from_url(**{**params, **self.pool_cls_kwargs})
