"""Django's PostgreSQL backend, signing in with a Microsoft Entra ID token instead of a password.

Every new physical connection gets the current token (from the process-wide token core) as its password:
plain connections (``CONN_MAX_AGE = 0``), persistent ones, and Django's psycopg pool (``OPTIONS["pool"]``),
where the parameters handed to the pool are callable so psycopg_pool (>= 3.3) asks for a fresh token for
every connection it opens, including those recycled by ``max_lifetime``. The token is never written into
``settings_dict``. Postgres checks the token only at login, so live sessions outlive it.

Per alias, ``OPTIONS["managed_identity"] = {"client_id": ..., "scope": ..., "enabled": True}``;
``"enabled": False`` turns the alias back into a plain password backend (local development). The alias's
settings are validated once per connection wrapper; each new connection takes the token once.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base as postgresql
from django.db.backends.postgresql.psycopg_any import is_psycopg3

from ..signin import AliasConfig, TokenSignIn
from .client import DatabaseClient
from .config import OPTION, alias_config
from .diagnosis import AUTH_KINDS, diagnose, refusal_message

logger = logging.getLogger("django_azure_mi.postgres")


class DatabaseWrapper(TokenSignIn, postgresql.DatabaseWrapper):
    client_class = DatabaseClient
    sign_in_logger = logger
    auth_kinds = AUTH_KINDS
    diagnose = staticmethod(diagnose)
    refusal_message = staticmethod(refusal_message)

    _pool_params: tuple[object, dict[str, Any]] | None = None

    @cached_property
    def alias_config(self) -> AliasConfig | None:
        """This alias's validated managed-identity settings (None: a password alias); validated once."""
        return alias_config(self.settings_dict, self.alias)

    @property
    def _pooled(self) -> bool:
        """Whether this wrapper's connections come from Django's pool, decided from its own settings as
        Django's ``pool`` property does: a ``copy()`` with ``OPTIONS["pool"] = False`` (Django's
        ``no_pool_connection()``, test database clones) and ``_nodb_cursor()`` share the alias, or the
        pool's settings, but not the pool."""
        return bool(self.settings_dict["OPTIONS"].get("pool")) and is_psycopg3 and self.alias != NO_DB_ALIAS

    def get_connection_params(self) -> dict[str, Any]:
        pooled = self._pooled
        pools = self._connection_pools  # type: ignore[attr-defined]  # not in django-stubs yet
        pool = pools.get(self.alias) if pooled else None
        if pool is not None:
            # Django rebuilds the parameters on every checkout and the pool ignores them (it has its own,
            # callable ones): build them once per pool.
            if self._pool_params is None or self._pool_params[0] is not pool:
                self._pool_params = (pool, self._plain_params())
            return self._pool_params[1]
        params = self._plain_params()
        config = self.alias_config
        if config is None:
            return params
        params.update(config.tls)  # verify-full with the OS trust store off loopback, unless set
        params.update(config.bounds)  # connect_timeout, unless set
        return self.token_params(params, config, lazy=pooled)  # pooled: each connection takes its own

    def _plain_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        params.pop(OPTION, None)
        return params
