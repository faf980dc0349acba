"""Django's built-in ``RedisCache`` signing in with Entra tokens."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

from ..options import split_locations
from .auth import (
    OPTION,
    WHERE,
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
    options = dict(params.get("OPTIONS") or {})
    refuse_credentials(options, ("password", "username"))
    settings = parse_options(options.pop(OPTION, None))
    options["pool_class"] = pool_class(options.get("pool_class"), f"{WHERE}['pool_class']")
    for url in split_locations(location):
        check_location(url)
        pool_kwargs = {
            k: v for k, v in options.items() if k not in ("pool_class", "parser_class", "serializer")
        }
        check_url_transport(url, pool_kwargs, settings, WHERE)
    return settings, options


class RedisCache(DjangoRedisCache):
    """Django's ``django.core.cache.backends.redis.RedisCache`` signing in with Entra tokens."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        settings, options = validate(server, params)
        options["entra_settings"] = settings
        super().__init__(server, {**params, "OPTIONS": options})
