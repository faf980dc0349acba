"""Django's built-in ``RedisCache`` signing in with Entra tokens."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

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
from .connection import pool_class


def validate(location: Any, params: dict[str, Any]) -> tuple[EntraSettings, dict[str, Any]]:
    """The backend's checks (also run by the system checks): no network, no credential. Returns the
    settings and the OPTIONS to hand to Django's backend (without ours)."""
    where = f"{alias_of('CACHES', params.get('OPTIONS'))}['OPTIONS']"
    options = dict(params.get("OPTIONS") or {})
    refuse_credentials(options, ("password", "username"), where)
    settings = parse_options(options.pop(OPTION, None), where)
    options["pool_class"] = pool_class(options.get("pool_class"), f"{where}['pool_class']")
    for url in split_locations(location):
        check_location(url, where.replace("['OPTIONS']", "['LOCATION']"))
        pool_kwargs = {
            k: v for k, v in options.items() if k not in ("pool_class", "parser_class", "serializer")
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

    @cached_property
    def _cache(self) -> Any:
        if self._invalid is not None:
            raise self._invalid.with_traceback(None)
        return super()._cache
