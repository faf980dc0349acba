"""``manage.py dbshell``: psql gets a fresh token through ``PGPASSWORD`` in its environment, never on argv."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.backends.postgresql import client as postgresql

from .options import OPTION, managed_identity


class DatabaseClient(postgresql.DatabaseClient):
    def runshell(self, parameters: Iterable[str]) -> None:
        # Misconfiguration is reported by the connection wrapper, which names the alias.
        self.connection.managed_identity  # type: ignore[attr-defined]  # noqa: B018
        super().runshell(parameters)

    @classmethod
    def settings_to_cmd_args_env(
        cls, settings_dict: dict[str, Any], parameters: Iterable[str]
    ) -> tuple[list[str], dict[str, str] | None]:
        options = {k: v for k, v in (settings_dict.get("OPTIONS") or {}).items() if k != OPTION}
        args, env = super().settings_to_cmd_args_env({**settings_dict, "OPTIONS": options}, parameters)
        identity = managed_identity(settings_dict, "…")
        if identity is None:
            return args, env
        env = dict(env or {})
        env["PGPASSWORD"] = identity.token()
        env.update({f"PG{name.upper()}": value for name, value in identity.tls.items()})  # PGSSLMODE, ...
        return args, env
