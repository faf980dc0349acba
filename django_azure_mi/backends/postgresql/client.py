"""``manage.py dbshell``: psql gets a fresh token through ``PGPASSWORD`` in its environment, never on argv."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.backends.postgresql import client as postgresql

from ... import conf


class DatabaseClient(postgresql.DatabaseClient):
    @classmethod
    def settings_to_cmd_args_env(
        cls, settings_dict: dict[str, Any], parameters: Iterable[str]
    ) -> tuple[list[str], dict[str, str] | None]:
        from .base import OPTION, managed_identity

        options = {k: v for k, v in (settings_dict.get("OPTIONS") or {}).items() if k != OPTION}
        args, env = super().settings_to_cmd_args_env({**settings_dict, "OPTIONS": options}, parameters)
        identity = managed_identity(settings_dict, _alias_of(settings_dict))
        if identity is None:
            return args, env
        env = dict(env or {})
        env["PGPASSWORD"] = identity.provider.get_token(identity.scope).token
        if "sslmode" not in options and not conf.is_loopback(identity.host):
            env["PGSSLMODE"] = "require"
        return args, env


def _alias_of(settings_dict: dict[str, Any]) -> str:
    """The DATABASES alias of ``settings_dict`` (for error messages)."""
    from django.db import connections

    for alias in connections:
        if connections.settings[alias] is settings_dict:
            return alias
    return "?"
